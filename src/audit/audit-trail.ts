import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Pool } from 'undici';
import { isoTimestamp, type Logger } from '../observability/logger.js';
import { Spool } from './spool.js';

/** What an audit event reads of an exchange (pipeline/exchange.ts). */
export interface AuditRecord {
  readonly id: string;
  readonly identity: { readonly userId: string; readonly role: string } | null;
  readonly route: { readonly name: string; readonly template: string; readonly phi: boolean } | null;
  readonly clientIp: string;
  readonly breakGlass: string | null;
  /** A PHI request let in while the spool had room: its event may use the headroom. */
  readonly auditAdmitted: boolean;
  /** The write-ahead access record of this exchange, when its route has one. */
  readonly accessRecord: AccessRecord | null;
  /** For the completion: the instance the upstream call tried last, tries after the first, bytes of the answer's body sent. */
  readonly upstreamOrigin: string | null;
  readonly retries: number;
  readonly bytesOut: number;
}

/**
 * The access record of one exchange on a write-ahead route, appended when the request is
 * admitted; the answer's head waits until it is durable (pipeline/proxy-response.ts).
 */
export interface AccessRecord {
  readonly eventId: string;
  /** The record's number in the spool. */
  readonly seq: number;
  readonly trail: AuditTrail;
}

/** Bounds of the histogram of how long answers waited for their access record to be durable. */
const WAIT_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

/** How a WebSocket ended, for its closing audit event (websocket.ts). */
export interface SocketClose {
  readonly durationMs: number;
  /** From the client to the upstream, and back. */
  readonly framesIn: number;
  readonly bytesIn: number;
  readonly framesOut: number;
  readonly bytesOut: number;
  readonly code: number;
  readonly closedBy: 'client' | 'upstream' | 'gateway';
  /** A fixed word (websocket.ts), never the peer's close reason text. */
  readonly reason: string;
}

const EVENTS_PATH = '/api/v1/audit/events';
/** Events that could not be kept are logged at most this often (with the count since the last line). */
const DROP_LOG_MS = 10_000;
const BATCH = 500;
const IDLE_WAIT_MS = 1_000;
/**
 * After a batch smaller than the batch size, delivery waits this long for more events: each
 * batch costs a read of the spool, a POST and a cursor write, which per event made up a tenth of
 * the deployed pipeline's CPU when batches were as small as one group commit (BENCHMARKS.md).
 */
const GATHER_MS = 100;
/** Batches delivered at a reduced size (after a 413) before the size is doubled again. */
const GROW_AFTER = 100;
const FIRST_BACKOFF_MS = 200;
/** Short, so that PHI routes refused for a full spool serve again soon after the audit service is back. */
const MAX_BACKOFF_MS = 5_000;

export interface AuditOptions {
  serviceUrl: string;
  spoolDir: string;
  spoolMaxBytes: number;
  requestTimeoutMs: number;
  /** CAs for an https:// audit service (UPSTREAM_CA_FILE). */
  ca?: Buffer;
}

/**
 * The audit trail of every request to a route that needs authentication: who (user id, role),
 * what (method, route template, status), when, from where (client IP), whether by break-glass,
 * and the request id, with a unique event id. No PHI: no bodies, no query, no raw path (only
 * the route template), no break-glass reason.
 *
 * Every event is written to the durable spool first and delivered from there, in order, in
 * batches: an audit-service outage or a gateway restart delays delivery, never loses an event.
 * Delivery is at-least-once; the audit service de-duplicates by `event_id`.
 */
export class AuditTrail {
  // Counters, read by /metrics.
  delivered = 0;
  dropped = 0;
  /** Events the audit service refused as invalid (4xx): set aside in the spool's `rejected` folder. */
  rejected = 0;
  failures = 0;
  /** True while the last delivery attempt failed. */
  failing = false;
  /** Refused attempts on PHI routes whose event could not be kept even in the spool's reserve for them. */
  phiRefusalsUnrecorded = 0;
  private lastDropLog = 0;
  private droppedLogged = 0;
  /** Access records found without their completion at start (a crash in between), completed as incomplete. */
  incompleteAtStart = 0;
  /** How long answers of write-ahead routes waited for their access record to be durable. */
  readonly waitBuckets = new Float64Array(WAIT_BUCKETS.length);
  waitCount = 0;
  waitSum = 0;
  readonly waitBounds: readonly number[] = WAIT_BUCKETS;
  private stopped = false;
  /** Set at shutdown: what is left goes out at once, without gathering. */
  private draining = false;
  /** Halved when the service says a batch is too large (413). */
  private batchSize = BATCH;
  /** A 413 is answered by a smaller batch at once, not after a back-off. */
  private retryNow = false;
  private untilGrow = GROW_AFTER;
  private loop: Promise<void> | null = null;
  private readonly pool: Pool;
  private readonly origin: string;
  private sleepTimer: NodeJS.Timeout | null = null;
  private wake: (() => void) | null = null;

  private constructor(
    private readonly spool: Spool,
    private readonly options: AuditOptions,
    private readonly logger: Logger,
  ) {
    this.origin = new URL(options.serviceUrl).origin;
    this.pool = new Pool(this.origin, { connections: 2, connect: options.ca === undefined ? { timeout: options.requestTimeoutMs } : { timeout: options.requestTimeoutMs, ca: options.ca } });
  }

  static async open(options: AuditOptions, logger: Logger): Promise<AuditTrail> {
    const spool = await Spool.open(options.spoolDir, options.spoolMaxBytes);
    const trail = new AuditTrail(spool, options, logger);
    if (spool.backlog > 0) {
      logger.info({ backlog_bytes: spool.backlog }, 'audit events from an earlier run are waiting for delivery');
      await trail.completeInterrupted();
    }
    trail.loop = trail.deliver();
    return trail;
  }

  /** False when the spool cannot take another event: PHI routes then refuse to serve (503). */
  get accepting(): boolean {
    return this.spool.accepting;
  }

  get backlogBytes(): number {
    return this.spool.backlog;
  }

  /** Why events cannot be kept, for /health; null when they can. */
  get problem(): string | null {
    if (this.spool.failure !== null) return `the audit spool cannot be written (${(this.spool.failure as NodeJS.ErrnoException).code ?? this.spool.failure.message})`;
    if (!this.spool.accepting) return 'the audit spool is full: PHI routes answer 503 until the audit service takes events again';
    return null;
  }

  /**
   * The access record of a request on a write-ahead route (every `phi: true` route, and those
   * with `audit: write-ahead`), appended as it is admitted, before the upstream is called: who,
   * role, route, method, request id, break-glass, time. Its commit starts at once and runs while
   * the upstream call is in flight. Null when the spool cannot take it (the request is refused).
   */
  recordAccess(ex: AuditRecord, method: string): AccessRecord | null {
    const eventId = randomUUID();
    const seq = this.spool.appendNow(`{"event_id":"${eventId}","timestamp":"${isoTimestamp()}","type":"api_access","request_id":"${ex.id}"${this.whoAndWhat(ex, method)},"service":"api-gateway"}`);
    return seq === 0 ? null : { eventId, seq, trail: this };
  }

  isDurable(record: AccessRecord): boolean {
    return this.spool.isDurable(record.seq);
  }

  whenDurable(record: AccessRecord, done: (ok: boolean) => void): void {
    this.spool.whenDurable(record.seq, done);
  }

  /** How long one answer of a write-ahead route waited for its access record (0 when it was already durable). */
  waited(seconds: number): void {
    this.waitCount++;
    this.waitSum += seconds;
    for (let i = 0; i < WAIT_BUCKETS.length; i++) {
      if (seconds <= WAIT_BUCKETS[i]!) {
        this.waitBuckets[i]!++;
        break;
      }
    }
  }

  /**
   * Records one finished exchange on an authenticated route: on a write-ahead route, the
   * completion of its access record (`access_event_id`). Built as text, like the access line:
   * the request id, role, route and method are validated tokens; the rest is escaped.
   */
  record(ex: AuditRecord, method: string, status: number, durationMs: number): void {
    const access = ex.accessRecord;
    const line =
      `{"event_id":"${randomUUID()}","timestamp":"${isoTimestamp()}","type":"api_request","request_id":"${ex.id}"${this.whoAndWhat(ex, method)},"status":${status}` +
      `,"duration_ms":${Math.round(durationMs * 1000) / 1000},"bytes_out":${ex.bytesOut},"upstream":${ex.upstreamOrigin === null ? 'null' : JSON.stringify(ex.upstreamOrigin)},"retries":${ex.retries}` +
      `${access === null ? '' : `,"access_event_id":"${access.eventId}"`},"service":"api-gateway"}`;
    // A PHI request was let through only while the spool had room: its event may use the headroom.
    const admitted = ex.auditAdmitted || access !== null;
    const phiRefusal = !admitted && ex.route!.phi && status >= 400;
    if (!this.spool.append(line, admitted ? 'admitted' : phiRefusal ? 'refusal' : 'normal')) {
      if (phiRefusal) this.phiRefusalsUnrecorded++;
      this.droppedOne();
    }
  }

  /** The fields every event of an exchange shares after its ids: who, what, from where. */
  private whoAndWhat(ex: AuditRecord, method: string): string {
    const route = ex.route!;
    const who = ex.identity;
    return (
      `,"user_id":${who === null ? 'null' : JSON.stringify(who.userId)},"role":${who === null ? 'null' : `"${who.role}"`}` +
      `,"route":${JSON.stringify(route.template)},"route_name":"${route.name}","method":${JSON.stringify(method)}` +
      `,"client_ip":${JSON.stringify(ex.clientIp)},"break_glass":${ex.breakGlass !== null},"phi":${route.phi}`
    );
  }

  /**
   * One line per burst of events that could not be kept: at the first, then at most every
   * DROP_LOG_MS with how many since the last line (and the counters for the whole story).
   */
  private droppedOne(): void {
    this.dropped++;
    const now = performance.now();
    if (this.lastDropLog !== 0 && now - this.lastDropLog < DROP_LOG_MS) return;
    this.lastDropLog = now;
    this.logger.error(
      { dropped_since_last_line: this.dropped - this.droppedLogged, dropped: this.dropped, phi_refusals_unrecorded: this.phiRefusalsUnrecorded, problem: this.problem },
      'audit events not recorded',
    );
    this.droppedLogged = this.dropped;
  }

  /**
   * At start: an access record the spool holds without its completion belongs to an exchange the
   * gateway stopped in the middle of (killed, crashed). Each gets a completion that says so
   * (`"incomplete": true`, status null), so the audit service is told rather than left to guess.
   * A completion written by an earlier start counts: a restart never completes one twice.
   */
  private async completeInterrupted(): Promise<void> {
    const open = new Map<string, string>();
    await this.spool.forEachUndelivered((line) => {
      if (line.includes('"type":"api_access"')) {
        const id = field(line, 'event_id');
        if (id !== null) open.set(id, line);
      } else if (line.includes('"access_event_id":"')) {
        const id = field(line, 'access_event_id');
        if (id !== null) open.delete(id);
      }
    });
    for (const [accessId, line] of open) {
      const access = JSON.parse(line) as Record<string, unknown>;
      const { event_id: _id, timestamp: _at, type: _type, service: _service, ...rest } = access;
      const completion = { event_id: randomUUID(), timestamp: isoTimestamp(), type: 'api_request', ...rest, status: null, incomplete: true, access_event_id: accessId, service: 'api-gateway' };
      if (!this.spool.append(JSON.stringify(completion), 'admitted')) this.droppedOne();
      else this.incompleteAtStart++;
    }
    if (open.size > 0) {
      await this.spool.flush();
      this.logger.warn({ exchanges: open.size }, 'audit: access records of exchanges interrupted by the last stop were completed as incomplete');
    }
  }

  /**
   * A WebSocket's two events: when it opens (after the upstream accepted it) and when it closes,
   * with how long it was open, frames and bytes each way, the close code and who closed it. Never
   * the content of a message.
   */
  recordSocket(ex: AuditRecord, phase: 'open' | 'close', closed: SocketClose | null): void {
    const detail =
      closed === null
        ? ''
        : `,"duration_ms":${Math.round(closed.durationMs)},"frames_in":${closed.framesIn},"bytes_in":${closed.bytesIn},"frames_out":${closed.framesOut},"bytes_out":${closed.bytesOut}` +
          `,"close_code":${closed.code},"closed_by":"${closed.closedBy}","close_reason":"${closed.reason}"`;
    const access = phase === 'close' ? ex.accessRecord : null;
    const line =
      `{"event_id":"${randomUUID()}","timestamp":"${isoTimestamp()}","type":"websocket_${phase}","request_id":"${ex.id}"${this.whoAndWhat(ex, 'GET')},"status":101${detail}` +
      `${access === null ? '' : `,"access_event_id":"${access.eventId}"`},"service":"api-gateway"}`;
    if (!this.spool.append(line, ex.auditAdmitted ? 'admitted' : 'normal')) this.droppedOne();
  }

  /** Stops delivering after writing out what is accepted; what is undelivered stays for the next run. */
  async close(drainMs = 0): Promise<void> {
    await this.spool.flush();
    this.draining = true;
    this.wake?.();
    if (drainMs > 0 && this.spool.backlog > 0 && !this.failing) {
      // A short chance to hand over the backlog before the process goes (a pod may not come back).
      const deadline = Date.now() + drainMs;
      while (this.spool.backlog > 0 && !this.failing && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    }
    this.stopped = true;
    this.wake?.();
    this.spool.wakeReaders();
    await this.loop;
    await this.spool.close();
    await this.pool.close();
  }

  private async deliver(): Promise<void> {
    let backoff = FIRST_BACKOFF_MS;
    while (!this.stopped) {
      let batch;
      try {
        batch = await this.spool.read(this.batchSize, IDLE_WAIT_MS);
      } catch (err) {
        this.logger.error({ err }, 'cannot read the audit spool');
        await this.sleep(MAX_BACKOFF_MS);
        continue;
      }
      if (batch === null || this.stopped) continue;
      // The spool hands out only whole lines, each one event as the gateway wrote it: the batch
      // is their concatenation, with nothing parsed or re-serialised.
      const events = batch.lines;
      try {
        if (events.length > 0) {
          const refused = await this.send(events);
          // A batch the service will never take must not block every later event: it is kept
          // aside on disk for an operator, and delivery goes on.
          if (refused !== null) await this.setAside(batch.lines, refused);
        }
        await this.spool.ack(batch);
        this.delivered += events.length;
        // After a 413 the size grows back, slowly: doubled after every GROW_AFTER batches taken.
        if (this.batchSize < BATCH && --this.untilGrow <= 0) {
          this.batchSize = Math.min(BATCH, this.batchSize * 2);
          this.untilGrow = GROW_AFTER;
        }
        if (this.failing) this.logger.info({ backlog_bytes: this.spool.backlog }, 'audit service takes events again');
        this.failing = false;
        backoff = FIRST_BACKOFF_MS;
        if (events.length < this.batchSize && !this.stopped && !this.draining) await this.sleep(GATHER_MS);
      } catch (err) {
        this.failures++;
        if (this.retryNow) {
          this.retryNow = false;
          continue;
        }
        if (!this.failing) this.logger.warn({ err: (err as Error).message, backlog_bytes: this.spool.backlog }, 'audit service unavailable; events wait in the spool');
        this.failing = true;
        await this.sleep(backoff);
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      }
    }
  }

  private async setAside(lines: string[], status: number): Promise<void> {
    const dir = join(this.options.spoolDir, 'rejected');
    await mkdir(dir, { recursive: true });
    const file = join(dir, `rejected-${Date.now()}.jsonl`);
    await writeFile(file, `${lines.join('\n')}\n`, { flag: 'a' });
    this.rejected += lines.length;
    this.logger.error({ status, events: lines.length, file }, 'the audit service refused a batch as invalid; kept aside for an operator');
  }

  /** Null when the service took the batch; the status when it refused it as invalid (4xx other than 408/429). */
  private async send(events: string[]): Promise<number | null> {
    const res = await this.pool.request({
      path: EVENTS_PATH,
      method: 'POST',
      headers: { 'content-type': 'application/json', 'user-agent': 'api-gateway-audit' },
      body: `{"events":[${events.join(',')}]}`,
      headersTimeout: this.options.requestTimeoutMs,
      bodyTimeout: this.options.requestTimeoutMs,
    });
    await res.body.dump();
    if (res.statusCode >= 200 && res.statusCode < 300) return null;
    // Only "this content is invalid" sets a batch aside; a wrong path, missing credentials or an
    // overloaded service are outages, retried with the events kept in order.
    if (res.statusCode === 400 || res.statusCode === 422) return res.statusCode;
    if (res.statusCode === 413) {
      // Too large: the next try sends half of what was refused, at once. One event refused as
      // too large can never go through: it is set aside like an invalid one.
      if (events.length === 1) return res.statusCode;
      this.batchSize = Math.max(1, Math.floor(events.length / 2));
      this.untilGrow = GROW_AFTER;
      this.retryNow = true;
    }
    throw new Error(`the audit service answered ${res.statusCode}`);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.sleepTimer = setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      this.wake = () => {
        if (this.sleepTimer !== null) clearTimeout(this.sleepTimer);
        this.wake = null;
        resolve();
      };
    });
  }
}

/** The value of a string field in one event line as the gateway wrote it (ids are UUIDs: no escapes). */
function field(line: string, name: string): string | null {
  const key = `"${name}":"`;
  const at = line.indexOf(key);
  if (at === -1) return null;
  const end = line.indexOf('"', at + key.length);
  return end === -1 ? null : line.slice(at + key.length, end);
}
