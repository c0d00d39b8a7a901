import type { Logger } from '../observability/logger.js';
import { ConsistentHash } from './balancers/consistent-hash.js';
import { LeastRequest } from './balancers/least-request.js';
import { RoundRobin } from './balancers/round-robin.js';
import { WeightedRoundRobin } from './balancers/weighted-round-robin.js';
import { Instance, type FailureKind } from './instance.js';
import { RetryBudget } from './retry-budget.js';
import type { ServiceConfig } from './service-schema.js';

/** The least the adaptive concurrency limit goes down to. */
const MIN_ADAPTIVE = 8;

export interface InstanceSpec {
  origin: string;
  weight: number;
}

export type HealthCheckPolicy = Exclude<ServiceConfig['healthCheck'], false>;
export type OutlierPolicy = Exclude<ServiceConfig['outlierDetection'], false>;
export type RetryPolicy = Exclude<ServiceConfig['retry'], false>;

/** The instances a config lists, as origins and weights. */
export function listedInstances(config: ServiceConfig): InstanceSpec[] {
  return (config.instances ?? []).map((i) => (typeof i === 'string' ? { origin: new URL(i).origin, weight: 1 } : { origin: new URL(i.url).origin, weight: i.weight }));
}

/**
 * A service behind the gateway: its instances, how requests are spread over them, which of them
 * are in rotation, the circuit breaker and the retry budget. The object outlives config reloads
 * (a reload re-configures it in place), so health state, balancer position and counters carry on.
 */
export class UpstreamService {
  /** Replaced as a whole when membership changes, never edited in place: a pick sees one list. */
  instances: readonly Instance[] = [];
  /** Upstream requests in flight or queued, across the instances: the circuit breaker's count. */
  active = 0;
  /**
   * Requests the door (pipeline/shed.ts) let in that are not calling yet (their token being
   * verified, their limit counted): the door counts them with `active`, or a burst arriving in
   * the same moment would all pass it before the first of them reached the breaker.
   */
  entering = 0;
  maxActive = 0;
  /**
   * The requests in flight the door lets in now (pipeline/shed.ts): maxActive, lowered by a tenth
   * for each request that misses its deadline (down to minActive) and raised by one for each
   * answer in time, as TCP's window. A service that stops answering soon holds a handful of
   * requests, not hundreds, and the storm of its clients is refused cheaply at the door.
   */
  allowed = 0;
  minActive = 0;
  balancer: ServiceConfig['balancer'] = 'round-robin';
  /** `user`, a lower-case header name, or null. */
  hashOn: string | null = null;
  healthPath = '/health';
  healthCheck: HealthCheckPolicy | null = null;
  outlier: OutlierPolicy | null = null;
  retry: RetryPolicy | null = null;
  retryStatuses: ReadonlySet<number> = new Set();
  readonly budget = new RetryBudget(20, 3);
  // Counters, read by /metrics.
  retries = 0;
  retriesRefused = 0;
  overflows = 0;
  /** Refused at the door (pipeline/shed.ts): the service full, or the loop late while it held many. */
  shedFull = 0;
  shedLagging = 0;
  unavailable = 0;
  private weighted = false;
  // One of each policy (balancers/), each with its own state; `balancer` says which one picks.
  private readonly roundRobin = new RoundRobin();
  private readonly weightedRoundRobin = new WeightedRoundRobin();
  private readonly leastRequest = new LeastRequest();
  private readonly consistentHash = new ConsistentHash();

  constructor(
    readonly name: string,
    private readonly logger: Logger,
    /** CAs for https:// instances (UPSTREAM_CA_FILE). */
    private readonly ca?: Buffer,
  ) {}

  /** A request missed its deadline (the route's, or a try's): the door lets in a tenth fewer. */
  missedDeadline(): void {
    this.allowed = Math.max(this.minActive, this.allowed * 0.9);
  }

  /** An answer's head came in time: the door lets in one more, up to maxConcurrentRequests. */
  answeredInTime(): void {
    if (this.allowed < this.maxActive) this.allowed = Math.min(this.maxActive, this.allowed + 1);
  }

  configure(config: ServiceConfig): void {
    this.maxActive = config.maxConcurrentRequests;
    this.minActive = config.adaptiveConcurrency ? Math.min(this.maxActive, MIN_ADAPTIVE) : this.maxActive;
    this.allowed = this.maxActive;
    this.balancer = config.balancer;
    this.hashOn = config.hashOn === undefined ? null : config.hashOn === 'user' ? 'user' : config.hashOn.header.toLowerCase();
    this.healthPath = config.healthPath;
    this.healthCheck = config.healthCheck === false ? null : config.healthCheck;
    // Without checks no verdict could ever bring an instance back.
    if (this.healthCheck === null) for (const inst of this.instances) inst.healthy = true;
    this.outlier = config.outlierDetection === false ? null : config.outlierDetection;
    this.retry = config.retry === false || config.retry.retries === 0 ? null : config.retry;
    this.retryStatuses = new Set(this.retry?.onStatuses ?? []);
    if (this.retry !== null) this.budget.configure(this.retry.budgetPercent, this.retry.minRetriesPerSecond);
    if (config.instances !== undefined) this.setInstances(listedInstances(config));
  }

  /**
   * Takes a new membership: instances already known keep their object (pools, health,
   * counters); new ones start in rotation; removed ones finish their requests and close.
   */
  setInstances(specs: readonly InstanceSpec[]): { added: string[]; removed: string[] } {
    const known = new Map(this.instances.map((i) => [i.origin, i]));
    const next: Instance[] = [];
    const added: string[] = [];
    for (const spec of specs) {
      if (next.some((i) => i.origin === spec.origin)) continue;
      let inst = known.get(spec.origin);
      if (inst === undefined) {
        inst = new Instance(spec.origin, spec.weight, this.ca);
        added.push(spec.origin);
      } else {
        known.delete(spec.origin);
        inst.weight = spec.weight;
      }
      next.push(inst);
    }
    this.instances = Object.freeze(next);
    this.weighted = next.some((i) => i.weight !== 1);
    for (const gone of known.values()) void gone.close();
    return { added, removed: [...known.keys()] };
  }

  /**
   * An instance for the next try, or null when none is in rotation (or untried, on a retry).
   * `key` is the affinity key of consistent hashing; `tried` the instances already tried.
   */
  pick(key: string | undefined, now: number, tried: readonly Instance[] | null): Instance | null {
    const list = this.instances;
    if (list.length === 1) {
      const only = list[0]!;
      return only.unavailable(now) || (tried !== null && tried.includes(only)) ? null : only;
    }
    if (list.length === 0) return null;
    if (this.balancer === 'least-request') return this.leastRequest.pick(list, key, now, tried);
    if (this.balancer === 'consistent-hash' && key !== undefined && key !== '') return this.consistentHash.pick(list, key, now, tried);
    return (this.weighted ? this.weightedRoundRobin : this.roundRobin).pick(list, key, now, tried);
  }

  /** A try at `inst` ended well (any answer that is not a failure). */
  succeeded(inst: Instance): void {
    inst.consecutiveFailures = 0;
  }

  /** A try at `inst` failed: count it, and eject the instance after enough in a row. */
  failed(inst: Instance, kind: FailureKind, now: number): void {
    inst.failures[kind]++;
    const policy = this.outlier;
    if (policy === null || ++inst.consecutiveFailures < policy.consecutiveFailures || inst.ejectedUntil > now) return;
    const list = this.instances;
    let out = 0;
    for (const other of list) if (other !== inst && other.unavailable(now)) out++;
    // The panic threshold: a detector gone wrong must not take the whole service out.
    if ((out + 1) * 100 > policy.maxEjectedPercent * list.length) return;
    // A long quiet spell since the last ejection starts the back-off over.
    if (inst.ejectedUntil !== 0 && now - inst.ejectedUntil > policy.maxEjectionMs) inst.ejections = 0;
    inst.ejections++;
    const ms = Math.min(policy.baseEjectionMs * inst.ejections, policy.maxEjectionMs);
    inst.ejectedUntil = now + ms;
    inst.consecutiveFailures = 0;
    inst.ejectedAt = now;
    this.logger.warn({ upstream_service: this.name, instance: inst.origin, failures: policy.consecutiveFailures, last_failure: kind, ejected_ms: ms }, 'upstream instance ejected');
  }

  /**
   * The result of one active health check of `inst`, which started at `startedAt`. A check that
   * began after an ejection and passes ends it (as Envoy's successful_active_health_check_uneject_host):
   * an instance restarted within one interval is back at the next check, not after the whole
   * ejection. One that keeps failing real traffic is ejected again, for longer each time.
   */
  checked(inst: Instance, passed: boolean, now: number, detail: string, startedAt = now): void {
    const policy = this.healthCheck;
    if (policy === null) return;
    if (passed && inst.ejectedUntil > now && startedAt >= inst.ejectedAt) {
      inst.ejectedUntil = 0;
      inst.consecutiveFailures = 0;
      this.logger.info({ upstream_service: this.name, instance: inst.origin }, 'upstream instance passes its health check again; ejection ended');
    }
    if (passed === inst.healthy) {
      inst.checkStreak = 0;
      return;
    }
    if (++inst.checkStreak < (passed ? policy.healthyThreshold : policy.unhealthyThreshold)) return;
    inst.checkStreak = 0;
    inst.healthy = passed;
    if (passed) inst.consecutiveFailures = 0;
    this.logger[passed ? 'info' : 'warn']({ upstream_service: this.name, instance: inst.origin, detail }, passed ? 'upstream instance healthy' : 'upstream instance unhealthy');
  }

  /** Instances in rotation now, and in all. */
  counts(now: number): { healthy: number; total: number } {
    let healthy = 0;
    for (const inst of this.instances) if (!inst.unavailable(now)) healthy++;
    return { healthy, total: this.instances.length };
  }

  /** Seconds until an instance may be back in rotation: the soonest ejection end, or one health interval. */
  retryAfterSeconds(now: number): number {
    let soonest = Infinity;
    for (const inst of this.instances) if (inst.healthy && inst.ejectedUntil > now) soonest = Math.min(soonest, inst.ejectedUntil - now);
    const ms = Math.min(soonest, this.healthCheck?.intervalMs ?? 1_000);
    return Math.max(1, Math.ceil(ms / 1000));
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.instances.map((i) => i.close()));
  }

  async destroy(): Promise<void> {
    await Promise.allSettled(this.instances.map((i) => i.destroy()));
  }
}
