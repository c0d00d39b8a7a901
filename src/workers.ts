import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { Logger } from './observability/logger.js';

const METRICS_REQUEST = 'api-gateway:metrics-request';
const METRICS_RESPONSE = 'api-gateway:metrics-response';
const METRICS_TIMEOUT_MS = 5_000;
const RESTART_DELAY_MS = 1_000;
const MAX_RESTART_DELAY_MS = 30_000;
/** A worker that dies sooner than this after its start counts as a failed start: the next waits longer. */
const STABLE_AFTER_MS = 10_000;

interface MetricsMessage {
  type: string;
  id: number;
  body?: string;
  error?: string;
}

/**
 * The primary process of WORKERS > 1: forks the workers (each a whole gateway on the shared
 * port; the kernel hands connections round robin), restarts one that dies, passes SIGHUP on,
 * and on SIGTERM lets every worker drain before it exits. Limits and revocations hold across
 * workers because they live in Redis (config/load.ts requires REDIS_URL), as across replicas.
 * It also merges the workers' metrics, so that /metrics on any worker shows the whole gateway.
 */
export function runPrimary(count: number, shutdownTimeoutMs: number, logger: Logger): void {
  const aggregator = new AggregatorRegistry();
  let stopping = false;
  /** A worker that had to cut requests (or was killed) while stopping makes the whole exit 1. */
  let cleanStop = true;
  const startedAt = new Map<number, number>();
  const delays = new Map<number, number>();

  const slots = new Map<Worker, number>();
  /** A worker's slot names its audit spool: the worker that replaces it takes the same one over. */
  const fork = (slot: number): Worker => {
    const worker = cluster.fork({ GATEWAY_WORKER_SLOT: String(slot) });
    slots.set(worker, slot);
    // A send to a worker that has just died must not take the primary down with it.
    worker.on('error', (err) => logger.warn({ err, slot }, 'worker channel error'));
    startedAt.set(slot, Date.now());
    serveMergedMetrics(worker, aggregator);
    return worker;
  };

  cluster.on('exit', (worker, code, signal) => {
    if (stopping) {
      if (code !== 0 || signal !== null) cleanStop = false;
      if (Object.keys(cluster.workers ?? {}).length === 0) {
        logger.info({ clean: cleanStop }, 'all workers stopped');
        logger.flush();
        process.exit(cleanStop ? 0 : 1);
      }
      return;
    }
    const slot = slots.get(worker) ?? 0;
    slots.delete(worker);
    // A worker that cannot start (a routes file edited into an error, say) is retried ever more slowly.
    const quick = Date.now() - (startedAt.get(slot) ?? 0) < STABLE_AFTER_MS;
    const delay = quick ? Math.min((delays.get(slot) ?? RESTART_DELAY_MS / 2) * 2, MAX_RESTART_DELAY_MS) : RESTART_DELAY_MS;
    delays.set(slot, delay);
    logger.error({ worker_pid: worker.process.pid, code, signal, slot, restart_in_ms: delay }, 'worker exited; starting another');
    // Not unref'd: with every worker gone, this timer is what keeps the primary alive to restart them.
    setTimeout(() => !stopping && fork(slot), delay);
  });

  for (let i = 0; i < count; i++) fork(i);
  logger.info({ workers: count }, 'started worker processes');
  passSignals(shutdownTimeoutMs, logger, () => {
    if (stopping) return false;
    stopping = true;
    return true;
  });
}

function signalWorkers(signal: NodeJS.Signals): void {
  for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill(signal);
}

/** SIGHUP goes on to every worker; SIGTERM/SIGINT drain them, and kill what is left after the timeout. */
function passSignals(shutdownTimeoutMs: number, logger: Logger, beginStop: () => boolean): void {
  process.on('SIGHUP', () => signalWorkers('SIGHUP'));
  const stop = (signal: NodeJS.Signals) => {
    if (!beginStop()) return;
    logger.info({ signal }, 'stopping the workers');
    signalWorkers('SIGTERM');
    const deadline = setTimeout(() => {
      logger.error('workers did not stop before SHUTDOWN_TIMEOUT_MS');
      signalWorkers('SIGKILL');
      logger.flush();
      process.exit(1);
    }, shutdownTimeoutMs + 2_000);
    deadline.unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

/** A worker asks for the merged metrics of all workers; the primary collects and answers. */
function serveMergedMetrics(worker: Worker, aggregator: InstanceType<typeof AggregatorRegistry>): void {
  worker.on('message', (message: MetricsMessage) => {
    if (message?.type !== METRICS_REQUEST) return;
    aggregator
      .clusterMetrics()
      .then((body) => reply(worker, { type: METRICS_RESPONSE, id: message.id, body }))
      .catch((err: unknown) => reply(worker, { type: METRICS_RESPONSE, id: message.id, error: (err as Error).message }));
  });
}

function reply(worker: Worker, message: MetricsMessage): void {
  if (worker.isConnected()) worker.send(message, undefined, () => undefined);
}

/**
 * In a worker: answers the primary's requests for this worker's metrics, and returns the
 * function that asks the primary for every worker's, merged.
 */
export function workerMetrics(registry: Registry): () => Promise<string> {
  AggregatorRegistry.setRegistries([registry]);
  // Constructing it installs prom-client's listener for the primary's collection requests.
  new AggregatorRegistry();
  let next = 0;
  const pending = new Map<number, { resolve: (body: string) => void; reject: (err: Error) => void; timer: NodeJS.Timeout }>();
  process.on('message', (message: MetricsMessage) => {
    if (message?.type !== METRICS_RESPONSE) return;
    const waiting = pending.get(message.id);
    if (waiting === undefined) return;
    pending.delete(message.id);
    clearTimeout(waiting.timer);
    if (message.error !== undefined) waiting.reject(new Error(message.error));
    else waiting.resolve(message.body ?? '');
  });
  return () =>
    new Promise<string>((resolve, reject) => {
      const id = ++next;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error('the primary process did not answer with the merged metrics'));
      }, METRICS_TIMEOUT_MS);
      pending.set(id, { resolve, reject, timer });
      process.send!({ type: METRICS_REQUEST, id });
    });
}
