import { constants } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';

/** A segment is closed and a new one begun past this size: delivered segments are deleted whole. */
const SEGMENT_BYTES = 8 * 1024 * 1024;
/** Appends are written and synced together at most this often (group commit). */
const COMMIT_MS = 10;
/** A commit starts at once when this much is waiting. */
const COMMIT_BYTES = 256 * 1024;
/** A write the disk refused is tried again after this long. */
const WRITE_RETRY_MS = 1_000;
/** Bytes read from a segment at a time: many events, far more than one. */
const READ_BYTES = 1024 * 1024;
const SEGMENT = /^segment-(\d{12})\.jsonl$/;

/**
 * Segments are opened for synchronised data writes where the system has them (Linux, macOS): one
 * system call per commit instead of a write and an fdatasync, which halves the time a
 * write-ahead record takes to become durable (0.29 ms against 0.35 ms at the median here, 0.7
 * against 3.7 ms at p99).
 */
const DSYNC = constants.O_DSYNC ?? 0;
const APPEND_FLAGS = constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | DSYNC;

/**
 * Tests only: delays the moment a commit counts as durable, per spool folder (a slow disk, without
 * one). Never set by the gateway itself.
 */
export const slowSyncs = new Map<string, (data: Buffer) => Promise<void>>();

/** Spool folders open in this process: two gateways must never share one. */
const OPEN_HERE = new Set<string>();

export class SpoolInUse extends Error {}

/** How far past its bound the spool takes a record (Spool.append). */
export type Room = 'normal' | 'refusal' | 'admitted';

const segmentName = (n: number) => `segment-${String(n).padStart(12, '0')}.jsonl`;

export interface SpoolBatch {
  /** The records, in the order they were appended. */
  lines: string[];
  /** Passed back to `ack` once the batch is delivered. */
  readonly end: { segment: number; offset: number };
  /** The records' bytes on disk, newlines included. */
  readonly bytes: number;
}

/**
 * A durable first-in, first-out queue of JSON lines on local disk: numbered segment files
 * appended with group-committed fdatasync, and a cursor naming the first record not yet
 * delivered. A record accepted by `append` is on disk within COMMIT_MS (and at once on
 * `flush`); one acknowledged is never read again, one not acknowledged is read again after a
 * restart (at-least-once). Bounded by `maxBytes` of undelivered records: past it `append`
 * refuses, and the caller decides what that means.
 */
export class Spool {
  private pending: string[] = [];
  private pendingBytes = 0;
  private timer: NodeJS.Timeout | null = null;
  private committing: Promise<void> = Promise.resolve();
  private active: FileHandle | null = null;
  private activeNumber = 0;
  private activeBytes = 0;
  /** Bytes on disk not yet delivered, plus bytes accepted and not yet written. */
  private backlogBytes = 0;
  private cursor = { segment: 0, offset: 0 };
  private waiters: Array<(records: boolean) => void> = [];
  private closed = false;
  private writeError: Error | null = null;
  /** The number of the last record appended, and of the last one durable on disk. */
  private appended = 0;
  private durable = 0;
  /** A commit is already queued behind the one under way (write-ahead records wait on it). */
  private queued = false;
  /** Callers waiting for a record to be durable, with its number; told false if its commit failed. */
  private durableWaiters: Array<{ seq: number; done: (ok: boolean) => void }> = [];
  private readonly slowSync: ((data: Buffer) => Promise<void>) | undefined;
  /**
   * One read buffer for the life of the spool (reads are sequential, and what is read is decoded
   * before the next one): a fresh megabyte per batch lived in memory until a full collection and
   * made the resident size climb by tens of MB under load (BENCHMARKS.md).
   */
  private readBuffer: Buffer | null = null;

  private constructor(
    private readonly dir: string,
    private readonly maxBytes: number,
  ) {
    this.slowSync = slowSyncs.get(resolve(dir));
  }

  static async open(dir: string, maxBytes: number): Promise<Spool> {
    const spool = new Spool(dir, maxBytes);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await spool.lock();
    try {
      await spool.recover();
    } catch (err) {
      await spool.unlock();
      throw err;
    }
    return spool;
  }

  /**
   * One writer per folder: a second gateway on the same spool would interleave and double-deliver.
   * The LOCK file is created exclusively; one left by a process that is gone is taken over.
   */
  private async lock(): Promise<void> {
    const key = resolve(this.dir);
    if (OPEN_HERE.has(key)) throw new SpoolInUse(`${this.dir} is in use by another gateway in this process`);
    const file = join(this.dir, 'LOCK');
    for (let attempt = 0; ; attempt++) {
      try {
        await writeFile(file, String(process.pid), { flag: 'wx' });
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
      }
      const holder = Number((await readFile(file, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && alive(holder)) {
        throw new SpoolInUse(`${this.dir} is in use by process ${holder}`);
      }
      await rm(file, { force: true });
    }
    OPEN_HERE.add(key);
  }

  private async unlock(): Promise<void> {
    OPEN_HERE.delete(resolve(this.dir));
    await rm(join(this.dir, 'LOCK'), { force: true });
  }

  /** Bytes of records waiting for delivery. */
  get backlog(): number {
    return this.backlogBytes;
  }

  /** False once the undelivered records reach the bound (or the disk failed): `append` would refuse. */
  get accepting(): boolean {
    return this.writeError === null && this.backlogBytes < this.maxBytes;
  }

  get failure(): Error | null {
    return this.writeError;
  }

  /**
   * Queues one record (one line of JSON, no newline). False when the spool is full. `room` says
   * how far past the bound the record may go: a record of work already admitted while the spool
   * had room (`admitted`) may use all of the headroom above it, so that a request that was let in
   * is never left unrecorded because others filled the spool meanwhile; the refusal of a PHI
   * request (`refusal`) a quarter of it, so that attempts on PHI refused because the spool is full
   * still leave a record.
   */
  append(line: string, room: Room = 'normal'): boolean {
    if (!this.take(line, room)) return false;
    if (this.pendingBytes >= COMMIT_BYTES) this.commitNow();
    else this.commitSoon(COMMIT_MS);
    return true;
  }

  /**
   * Queues a record that someone waits on (a write-ahead access record) and starts its commit at
   * once: behind the commit under way, if any, together with everything appended meanwhile (group
   * commit). Returns the record's number for `isDurable` and `whenDurable`, or 0 when refused.
   */
  appendNow(line: string): number {
    if (!this.take(line, 'normal')) return 0;
    this.commitNow();
    return this.appended;
  }

  /** The record numbered `seq` (from appendNow) is on disk. */
  isDurable(seq: number): boolean {
    return seq <= this.durable;
  }

  /**
   * Calls `done(true)` once record `seq` is durable (at once if it is), or `done(false)` if the
   * commit that carried it failed (never synchronously).
   */
  whenDurable(seq: number, done: (ok: boolean) => void): void {
    if (seq <= this.durable) done(true);
    else if (this.closed) queueMicrotask(() => done(false));
    else this.durableWaiters.push({ seq, done });
  }

  private take(line: string, room: Room): boolean {
    if (this.closed || this.writeError !== null) return false;
    const above = room === 'normal' ? 0 : room === 'admitted' ? headroom(this.maxBytes) : Math.floor(headroom(this.maxBytes) / 4);
    if (this.backlogBytes >= this.maxBytes + above) return false;
    const bytes = Buffer.byteLength(line) + 1;
    this.pending.push(line);
    this.pendingBytes += bytes;
    this.backlogBytes += bytes;
    this.appended++;
    return true;
  }

  /** Writes and syncs everything accepted so far. */
  async flush(): Promise<void> {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.committing = this.committing.then(() => this.commit());
    await this.committing;
  }

  /**
   * Up to `max` records after the cursor, waiting up to `waitMs` for one to arrive. Records are
   * read from disk, so what a restart recovered and what was just appended come the same way.
   */
  async read(max: number, waitMs: number): Promise<SpoolBatch | null> {
    for (;;) {
      const batch = await this.readFromDisk(max);
      if (batch !== null || this.closed) return batch;
      if (!(await this.waitForRecords(waitMs))) return null;
    }
  }

  /** Marks a batch delivered: the cursor moves past it, and finished segments are deleted. */
  async ack(batch: SpoolBatch): Promise<void> {
    this.backlogBytes = Math.max(0, this.backlogBytes - batch.bytes);
    this.cursor = { ...batch.end };
    // Written without fsync: a cursor lost in a crash only means records delivered twice.
    const tmp = join(this.dir, 'cursor.json.tmp');
    await writeFile(tmp, JSON.stringify(this.cursor));
    await rename(tmp, join(this.dir, 'cursor.json'));
  }

  /** Ends any `read` that is waiting for records (it returns null). */
  wakeReaders(): void {
    for (const wake of this.waiters.splice(0)) wake(false);
  }

  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    for (const w of this.durableWaiters.splice(0)) w.done(false);
    for (const wake of this.waiters.splice(0)) wake(false);
    await this.active?.close();
    this.active = null;
    await this.unlock();
  }

  private commitSoon(ms: number): void {
    if (this.timer !== null || this.queued) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.commitNow();
    }, ms);
  }

  /** Queues one commit behind the one under way; appends until it starts go with it. */
  private commitNow(): void {
    if (this.queued) return;
    this.queued = true;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.committing = this.committing.then(() => {
      this.queued = false;
      return this.commit();
    });
  }

  private async commit(): Promise<void> {
    if (this.pending.length === 0) return;
    const lines = this.pending;
    const bytes = this.pendingBytes;
    const upTo = this.appended;
    this.pending = [];
    this.pendingBytes = 0;
    const data = Buffer.from(`${lines.join('\n')}\n`);
    try {
      // After a failed write, a fresh segment: never append after what the failure may have torn.
      if (this.active === null || this.activeBytes >= SEGMENT_BYTES || this.writeError !== null) await this.nextSegment();
      await this.active!.write(data);
      if (DSYNC === 0) await this.active!.datasync();
      this.activeBytes += data.length;
      if (this.slowSync !== undefined) await this.slowSync(data);
      this.writeError = null;
      this.durable = upTo;
      this.tellDurable(true);
    } catch (err) {
      // A disk that cannot take writes (full, read-only): nothing more is accepted meanwhile (PHI
      // routes fail closed), the records already accepted wait in memory, in order, and the write
      // is tried again. Whoever waits on one of them is told now: it is not durable.
      this.writeError = err as Error;
      this.pending = lines.concat(this.pending);
      this.pendingBytes += bytes;
      this.tellDurable(false, upTo);
      this.commitSoon(WRITE_RETRY_MS);
    }
    for (const wake of this.waiters.splice(0)) wake(true);
  }

  /** Answers the waiters whose record is durable now (ok), or whose commit failed (records up to `failedUpTo`). */
  private tellDurable(ok: boolean, failedUpTo = 0): void {
    if (this.durableWaiters.length === 0) return;
    const limit = ok ? this.durable : failedUpTo;
    const waiting = this.durableWaiters;
    this.durableWaiters = [];
    for (const w of waiting) {
      if (w.seq <= limit) w.done(ok);
      else this.durableWaiters.push(w);
    }
  }

  private async nextSegment(): Promise<void> {
    await this.active?.close().catch(() => undefined);
    this.active = null;
    this.activeNumber++;
    this.active = await open(join(this.dir, segmentName(this.activeNumber)), APPEND_FLAGS, 0o600);
    this.activeBytes = 0;
  }

  private waitForRecords(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== wake);
        resolve(false);
      }, ms);
      const wake = (records: boolean) => {
        clearTimeout(timer);
        resolve(records);
      };
      this.waiters.push(wake);
    });
  }

  private async segments(): Promise<number[]> {
    const names = await readdir(this.dir);
    return names
      .map((n) => SEGMENT.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
  }

  private async readFromDisk(max: number): Promise<SpoolBatch | null> {
    for (;;) {
      const numbers = await this.segments();
      const current = numbers.find((n) => n >= this.cursor.segment);
      if (current === undefined) return null;
      if (current !== this.cursor.segment) this.cursor = { segment: current, offset: 0 };
      // Which segment is being appended to, taken before reading: a rotation during the read can
      // only finish a segment, never make a finished one grow.
      const appending = this.active === null ? -1 : this.activeNumber;
      const file = join(this.dir, segmentName(current));
      const handle = await open(file, 'r');
      let buf: Buffer;
      try {
        const size = (await handle.stat()).size;
        const want = Math.min(size - this.cursor.offset, READ_BYTES);
        this.readBuffer ??= Buffer.allocUnsafe(READ_BYTES);
        const read = want > 0 ? (await handle.read(this.readBuffer, 0, want, this.cursor.offset)).bytesRead : 0;
        buf = this.readBuffer.subarray(0, read);
      } finally {
        await handle.close();
      }
      // Only the first `max` whole lines are decoded: the rest of what was read is left for the
      // next batch, without turning a megabyte into text each time.
      let end = -1;
      for (let n = 0, at = buf.indexOf(10); at !== -1 && n < max; n++, at = buf.indexOf(10, at + 1)) end = at;
      // Only the segment being appended to can still grow; any other is read to its end.
      const finished = current !== appending;
      if (end === -1) {
        if (!finished) return null;
        // A finished segment read to its end (a torn last line after a crash is dropped): next.
        await rm(file, { force: true });
        this.backlogBytes = Math.max(0, this.backlogBytes - buf.length);
        this.cursor = { segment: current + 1, offset: 0 };
        continue;
      }
      const lines = buf.toString('utf8', 0, end).split('\n');
      return { lines, bytes: end + 1, end: { segment: current, offset: this.cursor.offset + end + 1 } };
    }
  }

  /**
   * Every whole record not yet delivered, oldest first (at start, before any append): one segment
   * in memory at a time.
   */
  async forEachUndelivered(visit: (line: string) => void): Promise<void> {
    for (const n of await this.segments()) {
      if (n < this.cursor.segment) continue;
      const buf = await readFile(join(this.dir, segmentName(n)));
      const from = n === this.cursor.segment ? this.cursor.offset : 0;
      const end = buf.lastIndexOf(10);
      if (end < from) continue;
      for (const line of buf.toString('utf8', from, end).split('\n')) if (line !== '') visit(line);
    }
  }

  /** Finds what an earlier run left: the cursor, the segments and their undelivered bytes. */
  private async recover(): Promise<void> {
    try {
      const saved = JSON.parse(await readFile(join(this.dir, 'cursor.json'), 'utf8')) as { segment: number; offset: number };
      if (Number.isInteger(saved.segment) && Number.isInteger(saved.offset)) this.cursor = saved;
    } catch {
      // No cursor yet: start at the oldest segment.
    }
    const numbers = await this.segments();
    for (const n of numbers) {
      if (n < this.cursor.segment) {
        await rm(join(this.dir, segmentName(n)), { force: true });
        continue;
      }
      const size = (await stat(join(this.dir, segmentName(n)))).size;
      this.backlogBytes += n === this.cursor.segment ? Math.max(0, size - this.cursor.offset) : size;
    }
    // Appends always go to a fresh segment: never after a line a crash may have torn.
    this.activeNumber = numbers.length > 0 ? numbers[numbers.length - 1]! : this.cursor.segment;
    if (numbers.length === 0 && this.cursor.segment === 0) this.cursor = { segment: 1, offset: 0 };
  }
}

/** Room above the bound for records of admitted work: a tenth of it, at least 1 MiB. */
function headroom(maxBytes: number): number {
  return Math.max(Math.floor(maxBytes / 10), 1024 * 1024);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
