/** The shared store did not answer within REDIS_COMMAND_TIMEOUT_MS. */
export class StoreTimeout extends Error {}

interface Waiter {
  settled: boolean;
  batch: Batch | null;
  readonly reject: (err: Error) => void;
}

interface Batch {
  readonly ms: number;
  readonly waiters: Waiter[];
  /** Waiters not yet settled: at zero the batch's timer is cleared. */
  open: number;
  timer: NodeJS.Timeout | null;
}

/** Calls made in this turn of the event loop, by deadline length, waiting to be armed. */
const unarmed = new Map<number, Waiter[]>();
let armScheduled = false;

/**
 * `work`, or a StoreTimeout once Redis has had `ms` to answer it: however long a client keeps a
 * command queued, the request waits no longer than this, and a reply that did arrive in time is
 * never counted as lost because the event loop was late to read it.
 *
 * Time is counted from when the command was written, not from the call. The Redis clients write
 * the commands of one turn together, in the turn's check phase (setImmediate); a call whose write
 * a stalled loop delayed (a long collection, a burst of work, a frozen process) would otherwise
 * have spent its budget before Redis ever saw it, and a healthy Redis would pass for an outage:
 * PHI routes would fail closed for nothing. So the deadline is armed by a setImmediate queued
 * after the clients' own (their writes are done by then), and its verdict waits for the I/O phase
 * of the turn in which it falls due (setImmediate again), so a reply already waiting in the
 * socket is read first.
 *
 * The calls armed in one turn share one timer, cleared once all of them are answered: on the
 * request path this costs less than a timer per call.
 */
export function within<T>(work: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const waiter: Waiter = { settled: false, batch: null, reject };
    let list = unarmed.get(ms);
    if (list === undefined) unarmed.set(ms, (list = []));
    list.push(waiter);
    if (!armScheduled) {
      armScheduled = true;
      setImmediate(arm);
    }
    work.then(
      (value) => {
        if (settle(waiter)) resolve(value);
      },
      (err: unknown) => {
        if (settle(waiter)) reject(err);
      },
    );
  });
}

/** True the first time: an answer after the verdict (or a verdict after the answer) changes nothing. */
function settle(waiter: Waiter): boolean {
  if (waiter.settled) return false;
  waiter.settled = true;
  const batch = waiter.batch;
  if (batch !== null && --batch.open === 0 && batch.timer !== null) {
    clearTimeout(batch.timer);
    batch.timer = null;
  }
  return true;
}

function arm(): void {
  armScheduled = false;
  for (const [ms, list] of unarmed) {
    const batch: Batch = { ms, waiters: list, open: 0, timer: null };
    for (const w of list) {
      if (w.settled) continue;
      w.batch = batch;
      batch.open++;
    }
    if (batch.open > 0) batch.timer = setTimeout(dueSoon, ms, batch);
  }
  unarmed.clear();
}

function dueSoon(batch: Batch): void {
  batch.timer = null;
  // After this turn's I/O phase: the replies already waiting in the sockets are read first.
  setImmediate(judge, batch);
}

function judge(batch: Batch): void {
  let err: StoreTimeout | null = null;
  for (const w of batch.waiters) {
    if (w.settled) continue;
    // Built only when the time is up: capturing a stack on every call cost 7% of the deployed
    // pipeline's CPU (BENCHMARKS.md).
    err ??= new StoreTimeout(`no answer within ${batch.ms} ms`);
    settle(w);
    w.reject(err);
  }
}
