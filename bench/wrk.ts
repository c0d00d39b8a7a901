import { start } from './procs.js';

export interface WrkOptions {
  connections: number;
  seconds: number;
  threads: number;
  cpu: string | null;
  headers: readonly string[];
  /** A wrk Lua script (`-s`), e.g. one that rotates bearer tokens. */
  script?: string;
}

export interface WrkResult {
  requests: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  non2xx: number;
  socketErrors: string | null;
  output: string;
}

const UNIT_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1_000, m: 60_000 };

function latencyMs(output: string, percentile: string): number {
  const m = new RegExp(`^\\s*${percentile}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(output);
  if (m === null) throw new Error(`wrk printed no ${percentile}% latency:\n${output}`);
  return Number(m[1]) * UNIT_MS[m[2]!]!;
}

export function parseWrk(output: string): Omit<WrkResult, 'output'> {
  const rps = /^Requests\/sec:\s+([\d.]+)/m.exec(output);
  const total = /^\s*(\d+) requests in /m.exec(output);
  if (rps === null || total === null) throw new Error(`cannot read wrk's output:\n${output}`);
  const non2xx = /Non-2xx or 3xx responses:\s+(\d+)/.exec(output);
  const sock = /Socket errors: (connect \d+, read \d+, write \d+, timeout \d+)/.exec(output);
  return {
    requests: Number(total[1]),
    rps: Number(rps[1]),
    p50Ms: latencyMs(output, '50'),
    p99Ms: latencyMs(output, '99'),
    non2xx: non2xx === null ? 0 : Number(non2xx[1]),
    socketErrors: sock === null ? null : sock[1]!,
  };
}

export async function runWrk(url: string, options: WrkOptions): Promise<WrkResult> {
  const args = ['-t', String(options.threads), '-c', String(options.connections), '-d', `${options.seconds}s`, '--latency'];
  for (const h of options.headers) args.push('-H', h);
  if (options.script !== undefined) args.push('-s', options.script);
  args.push(url);

  const child = start('wrk', args, { cpu: options.cpu, stdout: 'pipe', stderr: 'pipe' });
  let output = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (output += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (output += s));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    // 'close', not 'exit': the output is complete only once stdout has ended.
    child.once('close', (c) => resolve(c));
  });
  if (code !== 0) throw new Error(`wrk exited with ${code}:\n${output}`);
  return { ...parseWrk(output), output };
}
