import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, afterEach, describe, it } from 'node:test';
import { Spool, SpoolInUse, type SpoolBatch } from '../../src/audit/spool.js';

const MiB = 1024 * 1024;
const segmentFile = (n: number) => `segment-${String(n).padStart(12, '0')}.jsonl`;

const folders: string[] = [];
/** Spools a test opened and did not close itself: closed after it, so no LOCK outlives a failed test. */
const open: Spool[] = [];

async function folder(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'gw-spool-unit-'));
  folders.push(dir);
  return dir;
}

async function openSpool(dir: string, maxBytes = 64 * MiB): Promise<Spool> {
  const spool = await Spool.open(dir, maxBytes);
  open.push(spool);
  return spool;
}

async function closeSpool(spool: Spool): Promise<void> {
  open.splice(open.indexOf(spool), 1);
  await spool.close();
}

/** A record: JSON with a sequence number and some padding. */
const record = (seq: number, pad = 0) => JSON.stringify({ seq, pad: 'x'.repeat(pad) });
const seqOf = (line: string) => (JSON.parse(line) as { seq: number }).seq;

/** Reads (and acks, unless told not to) batches until `count` records came or nothing more does. */
async function drain(spool: Spool, count: number, options: { ack?: boolean; max?: number } = {}): Promise<{ lines: string[]; batches: SpoolBatch[] }> {
  const lines: string[] = [];
  const batches: SpoolBatch[] = [];
  while (lines.length < count) {
    const batch = await spool.read(options.max ?? 500, 200);
    if (batch === null) break;
    batches.push(batch);
    lines.push(...batch.lines);
    if (options.ack !== false) await spool.ack(batch);
  }
  return { lines, batches };
}

async function segments(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => /^segment-\d{12}\.jsonl$/.test(n)).sort();
}

/** A pid no process has: that of a child that has already exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  const pid = child.pid!;
  await new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return pid;
}

describe('the audit spool', () => {
  afterEach(async () => {
    for (const spool of open.splice(0)) await spool.close().catch(() => undefined);
  });
  after(async () => {
    for (const dir of folders) await rm(dir, { recursive: true, force: true });
  });

  it('keeps first-in, first-out order across many appends and segment rollovers', async () => {
    const dir = await folder();
    const spool = await openSpool(dir);
    // ~11.5 MiB of records in commits of ~1 MiB: more than one 8 MiB segment. (A segment is
    // closed at the first commit after it passed 8 MiB, so one huge commit could stay in one.)
    const total = 12_000;
    let written = 0;
    for (let seq = 0; seq < total; seq++) {
      assert.equal(spool.append(record(seq, 980)), true);
      written += Buffer.byteLength(record(seq, 980)) + 1;
      if (seq % 1000 === 999) await spool.flush();
    }
    assert.ok(written > 8 * MiB, `wrote ${written} bytes`);
    assert.equal(spool.backlog, written);
    await spool.flush();
    assert.ok((await segments(dir)).length >= 2, `expected a rollover, segments: ${(await segments(dir)).join(', ')}`);

    const { lines, batches } = await drain(spool, total);
    assert.equal(lines.length, total);
    assert.deepEqual(
      lines.map(seqOf),
      Array.from({ length: total }, (_, i) => i),
    );
    assert.ok(batches.every((b) => b.lines.length <= 500), 'a batch never holds more than asked for');
    assert.equal(spool.backlog, 0);
    // Nothing more comes, and delivered segments are deleted (the one being appended to stays).
    assert.equal(await spool.read(500, 50), null);
    assert.equal((await segments(dir)).length, 1, `segments left: ${(await segments(dir)).join(', ')}`);
    await closeSpool(spool);
  });

  it('interleaved appends and reads come out in order', async () => {
    const dir = await folder();
    const spool = await openSpool(dir);
    const got: number[] = [];
    const reader = (async () => {
      while (got.length < 3000) {
        const batch = await spool.read(137, 2_000);
        if (batch === null) break;
        got.push(...batch.lines.map(seqOf));
        await spool.ack(batch);
      }
    })();
    for (let seq = 0; seq < 3000; seq++) {
      spool.append(record(seq, 50));
      if (seq % 100 === 0) await delay(2);
    }
    await reader;
    assert.deepEqual(
      got,
      Array.from({ length: 3000 }, (_, i) => i),
    );
    await closeSpool(spool);
  });

  it('a reopened spool resumes after the last ack and delivers the unacknowledged again (at-least-once)', async () => {
    const dir = await folder();
    let spool = await openSpool(dir);
    for (let seq = 0; seq < 100; seq++) spool.append(record(seq));
    await spool.flush();

    const first = await spool.read(30, 200);
    assert.deepEqual(first?.lines.map(seqOf), Array.from({ length: 30 }, (_, i) => i));
    await spool.ack(first!);
    // Read, never acknowledged: must come again after a restart.
    const unacked = await spool.read(20, 200);
    assert.deepEqual(unacked?.lines.map(seqOf), Array.from({ length: 20 }, (_, i) => 30 + i));
    await closeSpool(spool);

    spool = await openSpool(dir);
    const backlogAfterReopen = spool.backlog;
    const expectedBacklog = Array.from({ length: 70 }, (_, i) => Buffer.byteLength(record(30 + i)) + 1).reduce((a, b) => a + b, 0);
    assert.equal(backlogAfterReopen, expectedBacklog, 'the backlog after a restart is what was not acknowledged');
    // New records after the restart come after the old ones.
    for (let seq = 100; seq < 120; seq++) spool.append(record(seq));
    const { lines } = await drain(spool, 90);
    assert.deepEqual(
      lines.map(seqOf),
      Array.from({ length: 90 }, (_, i) => 30 + i),
    );
    assert.equal(spool.backlog, 0);
    await closeSpool(spool);

    // Everything acknowledged: a third run has nothing to deliver.
    spool = await openSpool(dir);
    assert.equal(spool.backlog, 0);
    assert.equal(await spool.read(500, 50), null);
    await closeSpool(spool);
  });

  it('a cursor never written (crash before the first ack) re-delivers everything', async () => {
    const dir = await folder();
    let spool = await openSpool(dir);
    for (let seq = 0; seq < 10; seq++) spool.append(record(seq));
    const seen = await drain(spool, 10, { ack: false });
    assert.equal(seen.lines.length, 10);
    await closeSpool(spool);
    spool = await openSpool(dir);
    const again = await drain(spool, 10);
    assert.deepEqual(again.lines.map(seqOf), Array.from({ length: 10 }, (_, i) => i));
    await closeSpool(spool);
  });

  it('skips a torn last line left by a crash, and later records still come', async () => {
    const dir = await folder();
    let spool = await openSpool(dir);
    for (let seq = 0; seq < 10; seq++) spool.append(record(seq));
    await closeSpool(spool);
    const files = await segments(dir);
    // A crash mid-write: half a record, no newline, at the end of the last segment.
    await appendFile(join(dir, files.at(-1)!), '{"seq":999,"pad":"tor');

    spool = await openSpool(dir);
    for (let seq = 10; seq < 20; seq++) spool.append(record(seq));
    const { lines } = await drain(spool, 20);
    assert.deepEqual(
      lines.map(seqOf),
      Array.from({ length: 20 }, (_, i) => i),
    );
    for (const line of lines) assert.doesNotThrow(() => JSON.parse(line), `an unreadable line was handed out: ${line}`);
    assert.equal(spool.backlog, 0, 'the torn bytes are not counted as backlog once skipped');
    await closeSpool(spool);

    // And nothing of it comes back after another restart.
    spool = await openSpool(dir);
    assert.equal(spool.backlog, 0);
    assert.equal(await spool.read(500, 50), null);
    await closeSpool(spool);
  });

  it('past the bound, refusals of PHI attempts have a reserve (a quarter of the headroom) and admitted work all of it', async () => {
    const dir = await folder();
    // A small bound: the headroom above it is its floor, 1 MiB; refusals may use 256 KiB of it.
    const spool = await openSpool(dir, 10_000);
    let seq = 0;
    while (spool.append(record(seq, 1000))) seq++;
    assert.equal(spool.append(record(seq, 1000), 'normal'), false);
    let refusals = 0;
    while (spool.append(record(seq++, 1000), 'refusal')) refusals++;
    assert.ok(refusals >= 200 && refusals <= 260, `${refusals} refusals kept`);
    let admitted = 0;
    while (spool.append(record(seq++, 1000), 'admitted')) admitted++;
    assert.ok(admitted >= 700, `${admitted} admitted records kept past the reserve for refusals`);
  });

  it('is bounded: append refuses once the backlog reaches maxBytes, and an ack makes room again', async () => {
    const dir = await folder();
    const maxBytes = 10_000;
    const spool = await openSpool(dir, maxBytes);
    let accepted = 0;
    for (let seq = 0; seq < 1000; seq++) {
      if (!spool.append(record(seq, 80))) break;
      accepted++;
    }
    assert.ok(accepted > 0 && accepted < 1000, `accepted ${accepted}`);
    assert.ok(spool.backlog >= maxBytes, `backlog ${spool.backlog} when append refused`);
    // At most one record past the bound.
    assert.ok(spool.backlog < maxBytes + Buffer.byteLength(record(0, 80)) + 1, `backlog ${spool.backlog}`);
    assert.equal(spool.accepting, false);
    assert.equal(spool.append(record(5000, 80)), false, 'still refused');
    assert.equal(spool.failure, null, 'a full spool is not a disk failure');

    const batch = await spool.read(20, 200);
    assert.ok(batch !== null);
    await spool.ack(batch);
    assert.equal(spool.accepting, true);
    assert.equal(spool.append(record(accepted, 80)), true);

    // What was refused is not in the spool: the accepted records, then the one taken after the ack.
    const { lines } = await drain(spool, accepted + 1 - 20);
    assert.deepEqual(
      [...batch.lines, ...lines].map(seqOf),
      Array.from({ length: accepted + 1 }, (_, i) => i),
    );
    await closeSpool(spool);
  });

  it('refuses a second open of the same folder in one process', async () => {
    const dir = await folder();
    const spool = await openSpool(dir);
    await assert.rejects(Spool.open(dir, MiB), (err: unknown) => err instanceof SpoolInUse);
    // The same folder by another spelling of its path.
    await assert.rejects(Spool.open(join(dir, '.', ''), MiB), (err: unknown) => err instanceof SpoolInUse);
    // The refused open took nothing from the holder.
    assert.equal(spool.append(record(1)), true);
    await spool.flush();
    assert.equal((await readFile(join(dir, 'LOCK'), 'utf8')).trim(), String(process.pid));
    await closeSpool(spool);
    // Once closed, the folder can be opened again.
    const again = await openSpool(dir);
    await closeSpool(again);
  });

  it('refuses a folder whose LOCK names a live process', async () => {
    const dir = await folder();
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'], { stdio: 'ignore' });
    try {
      await writeFile(join(dir, 'LOCK'), String(child.pid));
      await assert.rejects(Spool.open(dir, MiB), (err: unknown) => err instanceof SpoolInUse && err.message.includes(String(child.pid)));
      assert.equal((await readFile(join(dir, 'LOCK'), 'utf8')).trim(), String(child.pid), 'the live holder keeps its LOCK');
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('takes over a LOCK left by a dead process', async () => {
    const dir = await folder();
    let spool = await openSpool(dir);
    for (let seq = 0; seq < 5; seq++) spool.append(record(seq));
    await closeSpool(spool);
    const pid = await deadPid();
    await writeFile(join(dir, 'LOCK'), String(pid));

    spool = await openSpool(dir);
    assert.equal((await readFile(join(dir, 'LOCK'), 'utf8')).trim(), String(process.pid));
    const { lines } = await drain(spool, 5);
    assert.deepEqual(lines.map(seqOf), [0, 1, 2, 3, 4], 'what the dead process left is delivered');
    await closeSpool(spool);
    await assert.rejects(readFile(join(dir, 'LOCK')), { code: 'ENOENT' }, 'close removes the LOCK');
  });

  it('has the records on disk after flush(), and within the group-commit interval without it', async () => {
    const dir = await folder();
    const spool = await openSpool(dir);
    const lines = Array.from({ length: 50 }, (_, i) => record(i, 10));
    for (const line of lines) spool.append(line);
    await spool.flush();
    const files = await segments(dir);
    assert.deepEqual(files, [segmentFile(1)]);
    assert.equal(await readFile(join(dir, files[0]!), 'utf8'), lines.map((l) => `${l}\n`).join(''));

    // Without flush: the group commit writes it within ~10 ms (allow for a slow machine).
    spool.append(record(50, 10));
    const deadline = Date.now() + 2_000;
    let text = '';
    while (Date.now() < deadline) {
      text = await readFile(join(dir, files[0]!), 'utf8');
      if (text.endsWith(`${record(50, 10)}\n`)) break;
      await delay(5);
    }
    assert.ok(text.endsWith(`${record(50, 10)}\n`), 'the record reached the file without flush()');
    await closeSpool(spool);
  });
});
