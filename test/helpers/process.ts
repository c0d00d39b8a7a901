import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { request } from 'undici';
import { writeRoutesFile } from './gateway.js';
import { freePort } from './ports.js';
import { TEST_SECRET } from './tokens.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface GatewayProcess {
  url: string;
  port: number;
  pid: number;
  child: ChildProcess;
  /** Resolves with the exit code (null when a signal killed it). */
  exited: Promise<number | null>;
  stdout(): string;
  stderr(): string;
  /** Kills the process if it still runs and removes its routes file. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Variables for the child. Only what is listed reaches it (not this process's environment),
 * so a test controls exactly what the gateway sees; `undefined` removes a default.
 */
export type ProcessEnv = Record<string, string | undefined>;

/**
 * Starts `node --import tsx src/main.ts` without waiting for it to serve: for start-up failures.
 * `routes` is an object written as YAML or YAML text; omit it to pass ROUTES_FILE yourself.
 */
export async function startGatewayProcess(routes: unknown, env: ProcessEnv = {}): Promise<GatewayProcess> {
  const written = routes === undefined ? null : await writeRoutesFile(routes);
  // Every process keeps its audit spool in a folder of its own, removed with it.
  const spoolDir = written?.dir ?? (await mkdtemp(join(tmpdir(), 'gw-spool-')));
  const port = await freePort();
  const merged: ProcessEnv = {
    PATH: process.env.PATH,
    NODE_ENV: 'test',
    HOST: '127.0.0.1',
    PORT: String(port),
    JWT_SECRET: TEST_SECRET,
    // discard-port: the auth probe fails fast instead of resolving a cluster name
    AUTH_SERVICE_URL: 'http://127.0.0.1:9',
    LOG_LEVEL: 'WARN',
    AUDIT_SPOOL_DIR: join(spoolDir, 'audit-spool'),
    ...(written ? { ROUTES_FILE: written.file } : {}),
    ...env,
  };
  const childEnv: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(merged)) if (v !== undefined) childEnv[k] = v;

  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { cwd: REPO_ROOT, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    // 'close' rather than 'exit': stdout and stderr are complete by then.
    child.once('close', (code) => resolve(code));
  });
  // A test that fails before awaiting `exited` must not turn into an unhandled rejection.
  exited.catch(() => undefined);

  let stopped = false;
  return {
    url: `http://${merged.HOST}:${merged.PORT}`,
    port: Number(merged.PORT),
    pid: child.pid!,
    child,
    exited,
    stdout: () => out,
    stderr: () => err,
    async stop() {
      if (!stopped) {
        stopped = true;
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        await exited.catch(() => undefined);
        await rm(spoolDir, { recursive: true, force: true });
      }
    },
  };
}

/**
 * Starts the gateway as its own process and resolves once GET /health/live answers 200.
 * Rejects (and kills the process) if it exits first or does not come up within `readyTimeoutMs`.
 */
export async function spawnGateway(routes: unknown, env: ProcessEnv = {}, readyTimeoutMs = 45_000): Promise<GatewayProcess> {
  const gw = await startGatewayProcess(routes, env);
  try {
    await waitUntilLive(gw, readyTimeoutMs);
    return gw;
  } catch (error) {
    await gw.stop();
    throw error;
  }
}

async function waitUntilLive(gw: GatewayProcess, timeoutMs: number): Promise<void> {
  let exitCode: number | null | undefined;
  void gw.exited.then((code) => (exitCode = code));
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exitCode !== undefined) throw new Error(`gateway exited with ${exitCode} before serving:\n${gw.stderr()}${gw.stdout()}`);
    try {
      // reset: a fresh connection each time, so no test inherits a socket from start-up
      const res = await request(`${gw.url}/health/live`, { reset: true, headersTimeout: 1_000, bodyTimeout: 1_000 });
      await res.body.dump();
      if (res.statusCode === 200) return;
    } catch {
      // not listening yet
    }
    await delay(50);
  }
  throw new Error(`gateway did not answer /health/live within ${timeoutMs} ms:\n${gw.stderr()}${gw.stdout()}`);
}

export interface MemorySample {
  /** Resident set size now. */
  rssBytes: number;
  /** Highest resident set size since start or since the last `resetPeakMemory`. */
  peakBytes: number;
}

function statusField(text: string, name: string): number {
  const m = new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(text);
  if (m === null) throw new Error(`no ${name} in /proc status`);
  return Number(m[1]) * 1024;
}

/** Linux only: reads VmRSS and VmHWM of a process. */
export function readMemory(pid: number): MemorySample {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  return { rssBytes: statusField(text, 'VmRSS'), peakBytes: statusField(text, 'VmHWM') };
}

/** Resets VmHWM to the current RSS (proc(5), clear_refs "5"), so a peak measures one phase only. */
export function resetPeakMemory(pid: number): void {
  writeFileSync(`/proc/${pid}/clear_refs`, '5');
}
