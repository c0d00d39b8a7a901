import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import { freePort } from './ports.js';

export interface TestRedis {
  url: string;
  port: number;
  /** Stops the server (an outage); `start()` brings it back on the same port. */
  stop(): Promise<void>;
  /** Freezes the server (SIGSTOP): connections stay open, nothing is answered; `thaw()` resumes it. */
  freeze(): void;
  thaw(): void;
  start(): Promise<void>;
}

/**
 * A self-signed certificate for localhost and 127.0.0.1, written into `dir`: the certificate is
 * its own CA bundle (REDIS_CA_FILE).
 */
export async function loopbackCertificate(dir: string): Promise<{ certFile: string; keyFile: string }> {
  const certFile = join(dir, 'redis.crt');
  const keyFile = join(dir, 'redis.key');
  await promisify(execFile)('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', certFile,
    '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ]);
  return { certFile, keyFile };
}

/** A real redis-server on a free loopback port, with nothing kept on disk. */
export async function startRedis(extraArgs: readonly string[] = []): Promise<TestRedis> {
  const port = await freePort();
  // `{port}` in an argument stands for the port picked here (for `--tls-port {port}`).
  const args = extraArgs.map((a) => a.replace('{port}', String(port)));
  let child: ChildProcess | null = null;
  const start = async () => {
    const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    child = proc;
    let out = '';
    await new Promise<void>((resolve, reject) => {
      proc.once('error', reject);
      proc.once('exit', (code) => reject(new Error(`redis-server exited with ${code}: ${out}`)));
      proc.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('Ready to accept connections')) resolve();
      });
    });
    proc.stdout!.resume();
  };
  await start();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    start,
    freeze() {
      child?.kill('SIGSTOP');
    },
    thaw() {
      child?.kill('SIGCONT');
    },
    async stop() {
      const proc = child;
      if (!proc || proc.exitCode !== null) return;
      proc.removeAllListeners('exit');
      const exited = once(proc, 'exit');
      proc.kill('SIGKILL');
      await exited;
      child = null;
    },
  };
}

/** A client of the test's own, to look at what the gateway wrote; reconnect noise around an outage is expected. */
export function inspectRedis(redis: TestRedis): Redis {
  const client = new Redis(redis.url, { maxRetriesPerRequest: 1, connectTimeout: 1_000 });
  client.on('error', () => undefined);
  return client;
}
