import { Client } from 'undici';
import type { Instance } from './instance.js';
import type { UpstreamService } from './service.js';

const IDLE_POLL_MS = 1_000;

/**
 * Active health checks of one service: every instance's health path, polled at the service's
 * interval over a connection of its own (a busy traffic pool must not make a healthy instance
 * look slow). 2xx and 3xx pass. The verdicts go to the service, which applies the thresholds.
 */
export class HealthChecker {
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly clients = new Map<Instance, Client>();

  constructor(
    private readonly service: UpstreamService,
    private readonly ca?: Buffer,
  ) {}

  start(): void {
    void this.round();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    for (const client of this.clients.values()) void client.destroy();
    this.clients.clear();
  }

  private async round(): Promise<void> {
    this.timer = null;
    if (this.stopped) return;
    const policy = this.service.healthCheck;
    const instances = this.service.instances;
    if (policy !== null) await Promise.all(instances.map((inst) => this.check(inst, policy.timeoutMs)));
    // Connections to instances that left the service.
    for (const [inst, client] of this.clients) {
      if (!this.service.instances.includes(inst)) {
        void client.destroy();
        this.clients.delete(inst);
      }
    }
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.round(), policy?.intervalMs ?? IDLE_POLL_MS);
    this.timer.unref();
  }

  private async check(inst: Instance, timeoutMs: number): Promise<void> {
    let client = this.clients.get(inst);
    if (client === undefined) {
      client = new Client(inst.origin, { connect: { timeout: timeoutMs, ...(this.ca === undefined ? undefined : { ca: this.ca }) }, pipelining: 1, keepAliveTimeout: 60_000 });
      this.clients.set(inst, client);
    }
    const startedAt = performance.now();
    let passed = false;
    let detail: string;
    try {
      const res = await client.request({
        path: this.service.healthPath,
        method: 'GET',
        headers: { 'user-agent': 'api-gateway-health-check' },
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
        signal: AbortSignal.timeout(timeoutMs),
      });
      await res.body.dump();
      passed = res.statusCode >= 200 && res.statusCode < 400;
      detail = `answered ${res.statusCode}`;
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      detail = e.name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : (e.code ?? e.message);
    }
    if (!this.stopped) this.service.checked(inst, passed, performance.now(), detail, startedAt);
  }
}
