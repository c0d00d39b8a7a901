import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export { freePort } from '../test/helpers/ports.js';

/**
 * Every process the benchmark starts is tracked here, so that a failure or Ctrl-C never leaves
 * an nginx or a gateway listening behind it. Children get their own process group, which lets
 * one signal reach nginx's master and workers together.
 */
const children = new Set<ChildProcess>();

export interface StartOptions {
  /** A CPU list for taskset, or null to leave the process unpinned. */
  cpu: string | null;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  stdout?: 'pipe' | 'ignore' | number;
  stderr?: 'pipe' | 'ignore' | number;
}

export function start(command: string, args: readonly string[], options: StartOptions): ChildProcess {
  // taskset execs the command, so the pid we hold is the pinned process itself.
  const [file, argv] = options.cpu === null ? [command, [...args]] : ['taskset', ['-c', options.cpu, command, ...args]];
  const stdio: StdioOptions = ['ignore', options.stdout ?? 'ignore', options.stderr ?? 'ignore'];
  const child = spawn(file, argv, { detached: true, stdio, env: options.env ?? process.env, cwd: options.cwd });
  children.add(child);
  child.once('exit', () => children.delete(child));
  child.once('error', () => children.delete(child));
  return child;
}

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

/** SIGTERM (nginx's fast shutdown, the gateway's graceful one), then SIGKILL if it lingers. */
export async function stop(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (exited(child) || child.pid === undefined) return;
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  signalGroup(child, 'SIGTERM');
  const timer = setTimeout(() => signalGroup(child, 'SIGKILL'), graceMs);
  await gone;
  clearTimeout(timer);
}

export async function stopAll(): Promise<void> {
  await Promise.all([...children].map((c) => stop(c)));
}

// Last resort when the process exits without the async cleanup having run.
process.once('exit', () => {
  for (const child of children) signalGroup(child, 'SIGKILL');
});


/** Polls until the URL answers 200, failing early if the process behind it has died. */
export async function waitFor200(url: string, child: ChildProcess, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited(child)) throw new Error(`${what} exited (code ${child.exitCode ?? child.signalCode}) before answering ${url}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not answer 200 on ${url} within ${timeoutMs} ms`);
}

/** The CPUs this process may run on, from the kernel's own list (`0-3,6`). */
export function allowedCpus(): number[] {
  try {
    const line = /^Cpus_allowed_list:\s*(\S+)/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (line === null) return [];
    return line[1]!.split(',').flatMap((part) => {
      const [lo, hi] = part.split('-').map(Number) as [number, number | undefined];
      return Array.from({ length: (hi ?? lo) - lo + 1 }, (_, i) => lo + i);
    });
  } catch {
    return [];
  }
}

/** The command's path on PATH, or in the sbin dirs a non-root PATH often lacks; null if absent. */
export function which(command: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(':').concat('/usr/sbin', '/usr/local/sbin', '/sbin')) {
    if (dir === '') continue;
    const file = join(dir, command);
    if (existsSync(file)) return file;
  }
  return null;
}
