import { runCli } from './main.js';

// Output goes to pipes and files synchronously on Linux, so exiting right after it loses nothing;
// exiting at once also ends whatever a command opened (a DNS refresh, a Redis reconnect) for good.
runCli(
  process.argv.slice(2),
  (text) => process.stdout.write(text),
  (text) => process.stderr.write(text),
).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`api-gateway: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(2);
  },
);
