import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { routesFor } from '../helpers/gateway.js';
import { readMemory, resetPeakMemory, spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const MB = 1024 * 1024;
const SIZE = 50 * MB;
const CHUNK = 64 * 1024;
/**
 * How far the gateway's peak RSS during a 50 MB transfer may exceed its peak during 5 MB ones.
 * Streaming needs the same memory whatever the size, but when the collector runs is its own
 * affair: a streaming gateway lands within about 12 MB either side of the warm-up peak, while
 * one that holds the body whole lands 40 MB or more above it.
 */
const MAX_GROWTH = 20 * MB;

// One random block, stamped with the chunk index: a dropped, repeated or reordered chunk changes the hash.
const BLOCK = randomBytes(CHUNK);

function* payload(total: number): Generator<Buffer> {
  for (let i = 0, sent = 0; sent < total; i++) {
    const chunk = Buffer.from(BLOCK.subarray(0, Math.min(CHUNK, total - sent)));
    if (chunk.length >= 4) chunk.writeUInt32BE(i, 0);
    sent += chunk.length;
    yield chunk;
  }
}

function sha256Of(total: number): string {
  const hash = createHash('sha256');
  for (const chunk of payload(total)) hash.update(chunk);
  return hash.digest('hex');
}

/** The upstream: /upload hashes what arrives, /download?bytes=N streams N bytes of `payload`. */
async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url!, 'http://upstream');
  if (url.pathname === '/upload') {
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const chunk of req) {
      bytes += (chunk as Buffer).length;
      hash.update(chunk as Buffer);
    }
    const body = JSON.stringify({ bytes, sha256: hash.digest('hex'), chunked: req.headers['transfer-encoding'] === 'chunked', length: req.headers['content-length'] ?? null });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  const total = Number(url.searchParams.get('bytes'));
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
  await pipeline(Readable.from(payload(total)), res);
}

interface UploadResult {
  bytes: number;
  sha256: string;
  chunked: boolean;
  length: string | null;
}

async function upload(gw: GatewayProcess, total: number, withLength: boolean): Promise<UploadResult> {
  const res = await request(`${gw.url}/files/upload`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', ...(withLength ? { 'content-length': String(total) } : {}) },
    body: Readable.from(payload(total)),
  });
  const text = await res.body.text();
  assert.equal(res.statusCode, 200, text);
  return JSON.parse(text) as UploadResult;
}

async function download(gw: GatewayProcess, total: number): Promise<{ bytes: number; sha256: string; length: string | undefined }> {
  const res = await request(`${gw.url}/files/download?bytes=${total}`);
  assert.equal(res.statusCode, 200);
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of res.body) {
    bytes += (chunk as Buffer).length;
    hash.update(chunk as Buffer);
  }
  return { bytes, sha256: hash.digest('hex'), length: res.headers['content-length'] as string | undefined };
}

/** The gateway's peak RSS while `work` runs. */
async function peakDuring(gw: GatewayProcess, work: () => Promise<void>): Promise<number> {
  resetPeakMemory(gw.pid);
  await work();
  return readMemory(gw.pid).peakBytes;
}

/**
 * A fresh process grows its heap and allocator pools over the first tens of megabytes of
 * traffic whatever the body size, and the collector later drops RSS at moments of its own
 * choosing. Small transfers run until the per-round peak stops rising for three rounds; that
 * peak is the level a streaming gateway keeps to, however large the body. Null if it never
 * settles (memory grows with every request).
 */
async function settledPeak(gw: GatewayProcess, round: () => Promise<void>, maxRounds = 40): Promise<number | null> {
  let high = 0;
  let still = 0;
  for (let i = 0; i < maxRounds; i++) {
    const peak = await peakDuring(gw, round);
    if (peak <= high + MB / 4) still += 1;
    else {
      high = peak;
      still = 0;
    }
    if (still === 3) return high;
  }
  return null;
}

const fmt = (n: number) => `${(n / MB).toFixed(1)} MB`;

describe('50 MB bodies stream through a gateway process', { skip: process.platform !== 'linux' && 'reads /proc' }, () => {
  let upstream: TestUpstream;
  const expected = sha256Of(SIZE);
  const gateways: GatewayProcess[] = [];

  before(async () => {
    upstream = await startUpstream((req, res) => handle(req, res));
  });
  after(async () => {
    await Promise.all(gateways.map((gw) => gw.stop()));
    await upstream?.close();
  });

  /**
   * Each measurement gets a process of its own: memory a buffering transfer once took stays
   * mapped and would hide the next one's growth.
   */
  async function warmGateway(round: (gw: GatewayProcess) => Promise<unknown>): Promise<{ gw: GatewayProcess; level: number }> {
    const gw = await spawnGateway(routesFor(upstream.url, [{ name: 'files', prefix: '/files', rewrite: '/', auth: 'public', maxBodyBytes: 64 * MB }]));
    gateways.push(gw);
    const level = await settledPeak(gw, () => round(gw).then(() => undefined));
    assert.ok(level !== null, 'gateway RSS kept rising over 40 rounds of 5 MB transfers');
    return { gw, level };
  }

  const grew = (level: number, peak: number) => `gateway RSS peaked at ${fmt(peak)}, ${fmt(peak - level)} above the ${fmt(level)} that 5 MB transfers need`;

  it('passes a 50 MB chunked upload intact without holding it in memory', { timeout: 30_000 }, async () => {
    const { gw, level } = await warmGateway((g) => upload(g, 5 * MB, false));
    let result: UploadResult | undefined;
    const peak = await peakDuring(gw, async () => void (result = await upload(gw, SIZE, false)));
    assert.equal(result!.chunked, true, 'the upstream should receive the body chunked, as it was sent');
    assert.equal(result!.bytes, SIZE);
    assert.equal(result!.sha256, expected);
    assert.ok(peak - level < MAX_GROWTH, grew(level, peak));
  });

  it('passes a 50 MB upload with content-length intact without holding it in memory', { timeout: 30_000 }, async () => {
    const { gw, level } = await warmGateway((g) => upload(g, 5 * MB, true));
    let result: UploadResult | undefined;
    const peak = await peakDuring(gw, async () => void (result = await upload(gw, SIZE, true)));
    assert.equal(result!.length, String(SIZE), 'the upstream should receive the declared content-length');
    assert.equal(result!.bytes, SIZE);
    assert.equal(result!.sha256, expected);
    assert.ok(peak - level < MAX_GROWTH, grew(level, peak));
  });

  it('passes a 50 MB download intact without holding it in memory', { timeout: 30_000 }, async () => {
    const { gw, level } = await warmGateway((g) => download(g, 5 * MB));
    let result: Awaited<ReturnType<typeof download>> | undefined;
    const peak = await peakDuring(gw, async () => void (result = await download(gw, SIZE)));
    assert.equal(result!.length, String(SIZE));
    assert.equal(result!.bytes, SIZE);
    assert.equal(result!.sha256, expected);
    assert.ok(peak - level < MAX_GROWTH, grew(level, peak));
  });
});
