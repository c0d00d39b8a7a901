#!/usr/bin/env node
// Runs the node test runner over every *.test.ts file in the named folders of test/.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const suites = process.argv.slice(2);
const files = [];
function collect(dir) {
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) collect(path);
    else if (name.endsWith('.test.ts')) files.push(path);
  }
}
for (const suite of suites) if (existsSync(join('test', suite))) collect(join('test', suite));
if (files.length === 0) {
  console.error(`no test files under ${suites.map((s) => `test/${s}`).join(', ')}`);
  process.exit(1);
}
// Files named *.alone.test.ts measure latency against a baseline of the same run (a storm beside a
// healthy route): they run after the others, one at a time, so that another test file's processes
// do not load the machine unevenly under them. Everything else runs two files at a time.
const shared = files.filter((f) => !f.endsWith('.alone.test.ts'));
const alone = files.filter((f) => f.endsWith('.alone.test.ts'));
let failed = false;
for (const [batch, concurrency] of [
  [shared, 2],
  [alone, 1],
]) {
  if (batch.length === 0) continue;
  const result = spawnSync(
    process.execPath,
    // A file whose set-up failed may leave a server open: --test-force-exit ends it once its tests
    // are done, and no single test may run past two minutes, so CI can never hang on one.
    ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, '--test-force-exit', '--test-timeout=120000', ...batch],
    { stdio: 'inherit', env: { ...process.env, NODE_ENV: 'test' } },
  );
  if (result.status !== 0) failed = true;
}
process.exit(failed ? 1 : 0);
