import type { IncomingHttpHeaders } from 'node:http';
import type { EventLoopUtilization } from 'node:perf_hooks';
import { Decorator, type UpstreamCall, type UpstreamHandler, type UpstreamLayer } from '../call.js';
import { ClientClosed, ResponseTimeout, TryTimeout } from '../failures.js';

type Controller = Parameters<UpstreamHandler['onResponseError']>[0];

/**
 * Deadlines that passed, expired in paced slices. Requests sent together time out together (a
 * storm of clients on a slow service: hundreds in the same millisecond), and each expiry sets off
 * several times its own cost: the aborted connection closing (and undici opening another in its
 * place), the 504 with its log line and audit event, the client's next request. Expired in one go,
 * or even a slice per turn, that work would fill every turn of the loop for a quarter of a second,
 * and a request of another route, which needs several turns, would wait behind it in each. So the
 * first slice (SLICE_MS of work, at least one expiry) runs at once, and while more are waiting the
 * next follows once the loop has been idle for at least 40% of the time since the last one (looked
 * at every PAUSE_MS, and never later than MAX_WAIT_MS): a wave of expiries takes what the loop
 * has to spare, and reaches its clients somewhat later (a 256-request wave within about a second)
 * rather than delaying every other route's requests.
 */
const expiring: Deadline[] = [];
let expiringFrom = 0;
const SLICE_MS = 0.5;
const PAUSE_MS = 2;
const BUSY = 0.6;
const MAX_WAIT_MS = 10;
/** The loop's counters when the last slice ended, while more expiries wait. */
let sliceEnded: EventLoopUtilization | null = null;
let sliceEndedAt = 0;

function onTimeout(timer: Deadline): void {
  expiring.push(timer);
  if (expiring.length === 1) setImmediate(expireSlice);
}

function expireSlice(): void {
  if (sliceEnded !== null && performance.now() - sliceEndedAt < MAX_WAIT_MS && performance.eventLoopUtilization(sliceEnded).utilization > BUSY) {
    setTimeout(expireSlice, PAUSE_MS);
    return;
  }
  const until = performance.now() + SLICE_MS;
  do expiring[expiringFrom++]!.expire();
  while (expiringFrom < expiring.length && performance.now() < until);
  if (expiringFrom < expiring.length) {
    sliceEnded = performance.eventLoopUtilization();
    sliceEndedAt = performance.now();
    setTimeout(expireSlice, PAUSE_MS);
    return;
  }
  expiring.length = 0;
  expiringFrom = 0;
  sliceEnded = null;
}

/**
 * The time one try has for its response head: what is left of the route's deadline, or the
 * service's per-try timeout when the call may be retried and that is shorter. A try still queued
 * for a connection when its time is up fails at once; if a connection takes it later, it is
 * aborted there and nothing more of it is passed on.
 */
class Deadline extends Decorator {
  private readonly timer: NodeJS.Timeout;
  private controller: NonNullable<Controller> | null = null;
  /** Failed while queued: what the try still reports is swallowed. */
  private expired = false;
  /** The head came, or the try ended, before its turn in the expiring slices: nothing to expire. */
  private settled = false;
  private readonly perTry: boolean;

  constructor(
    handler: UpstreamHandler,
    private readonly call: UpstreamCall,
  ) {
    super(handler);
    // undici's own headersTimeout runs on a coarse timer (about 500 ms ticks) and only once the
    // request is written: a 200 ms route timeout could fire after a second, and a request queued
    // behind a busy pool would have none. The deadline gets a timer of its own.
    const now = performance.now();
    let ms = Math.max(1, call.deadline - now);
    const perTryMs = call.service.retry?.perTryTimeoutMs;
    this.perTry = call.tried !== null && perTryMs !== undefined && perTryMs < ms;
    if (this.perTry) ms = perTryMs!;
    this.timer = setTimeout(onTimeout, ms, this);
  }

  expire(): void {
    if (this.settled) return;
    const call = this.call;
    call.service.missedDeadline();
    const err = this.perTry ? new TryTimeout(call.service.retry!.perTryTimeoutMs!) : new ResponseTimeout(call.settings.timeoutMs);
    if (this.controller !== null) {
      this.controller.abort(err);
      return;
    }
    this.expired = true;
    this.handler.onResponseError(null, err);
  }

  override onRequestStart(controller: NonNullable<Controller>, context: unknown): void {
    this.controller = controller;
    if (this.expired) controller.abort(new ClientClosed('the try timed out while queued'));
    else this.handler.onRequestStart(controller, context);
  }

  override onResponseStart(controller: NonNullable<Controller>, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    if (this.expired) return;
    if (statusCode >= 200) {
      clearTimeout(this.timer);
      this.settled = true;
      this.call.service.answeredInTime();
    }
    this.handler.onResponseStart(controller, statusCode, headers, statusMessage);
  }

  override onResponseData(controller: NonNullable<Controller>, chunk: Buffer): void {
    if (!this.expired) this.handler.onResponseData(controller, chunk);
  }

  override onResponseEnd(controller: NonNullable<Controller>, trailers: IncomingHttpHeaders): void {
    clearTimeout(this.timer);
    this.settled = true;
    if (!this.expired) this.handler.onResponseEnd(controller, trailers);
  }

  override onResponseError(controller: Controller, error: Error): void {
    clearTimeout(this.timer);
    this.settled = true;
    if (!this.expired) this.handler.onResponseError(controller, error);
  }
}

/** The response deadline of each try (504 when the route's passes, another try when a per-try timeout does). */
export const deadline: UpstreamLayer = (next) => (call, handler) => next(call, new Deadline(handler, call));
