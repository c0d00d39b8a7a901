import { connect as connectTcp, isIP, type Socket } from 'node:net';
import { connect as connectTls, type ConnectionOptions } from 'node:tls';
import type { RedisState } from '../observability/health.js';

/** A RESP2 reply: the shapes the gateway's scripts return. */
export type RespValue = string | number | null | RespError | RespValue[];

export class RespError extends Error {}

/** Where to connect, as the Redis URL says it (`redis://` or `rediss://`, user, password, db). */
export interface RespTarget {
  host: string;
  port: number;
  tls: ConnectionOptions | null;
  username: string | null;
  password: string | null;
  db: number;
}

export function targetOf(url: string, ca?: Buffer): RespTarget {
  const u = new URL(url);
  const secure = u.protocol === 'rediss:';
  const db = Number(u.pathname.replace(/^\//, '') || '0');
  const host = u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1';
  return {
    host,
    port: Number(u.port || 6379),
    // SNI carries host names only; an address is checked against the certificate's IP entries.
    tls: secure ? { ...(isIP(host) === 0 ? { servername: host } : {}), ...(ca === undefined ? {} : { ca }) } : null,
    username: u.username === '' ? null : decodeURIComponent(u.username),
    password: u.password === '' ? null : decodeURIComponent(u.password),
    db: Number.isInteger(db) ? db : 0,
  };
}

/** A Lua script sent by hash, and in full once when Redis does not know it (NOSCRIPT). */
export interface LuaScript {
  readonly sha: string;
  readonly body: string;
}

type Callback = (err: Error | null, reply: RespValue) => void;

interface Pending {
  cb: Callback;
  /** The script to send in full if Redis answers NOSCRIPT to its hash. */
  retry: { script: LuaScript; rest: string; argc: number; asking: boolean } | null;
  /** When its write left (Infinity until then): a stall between the call and the write is not Redis's time. */
  sentAt: number;
}

export interface RespPipeOptions {
  connectTimeoutMs: number;
  /** Commands waiting for a reply past this many fail at once: nothing piles up behind a stuck server. */
  maxPending?: number;
  /** A reply older than this means the server is stuck: the connection is dropped and made again. */
  stuckAfterMs?: number;
  /** Told when Redis refuses the handshake (a wrong password, say) or a stuck connection is dropped. */
  onProblem?: (problem: string) => void;
}

const CRLF = '\r\n';
const bulk = (s: string) => `$${Buffer.byteLength(s)}${CRLF}${s}${CRLF}`;
const ASKING = `*1${CRLF}${bulk('ASKING')}`;
const ignore: Callback = () => undefined;

/** Reads one reply from `b` at `i`: [value, next index], or null when the bytes end first. */
function parse(b: Buffer, i: number): [RespValue, number] | null {
  if (i >= b.length) return null;
  const end = b.indexOf(13, i);
  if (end === -1 || end + 1 >= b.length) return null;
  const type = b[i];
  const next = end + 2;
  switch (type) {
    case 58: // ':' integer
      return [Number(b.toString('latin1', i + 1, end)), next];
    case 43: // '+' simple string
      return [b.toString('latin1', i + 1, end), next];
    case 45: // '-' error
      return [new RespError(b.toString('utf8', i + 1, end)), next];
    case 36: {
      // '$' bulk string
      const len = Number(b.toString('latin1', i + 1, end));
      if (len < 0) return [null, next];
      if (b.length < next + len + 2) return null;
      return [b.toString('utf8', next, next + len), next + len + 2];
    }
    case 42: {
      // '*' array
      const n = Number(b.toString('latin1', i + 1, end));
      if (n < 0) return [null, next];
      const out: RespValue[] = new Array(n);
      let at = next;
      for (let k = 0; k < n; k++) {
        const r = parse(b, at);
        if (r === null) return null;
        out[k] = r[0];
        at = r[1];
      }
      return [out, at];
    }
    default:
      throw new RespError(`unexpected reply byte ${type}`);
  }
}

/**
 * One pipelined Redis connection for the request path's script calls. ioredis carries everything
 * else (pub/sub, revocations, health); on the request path its per-command machinery (a command
 * object, a promise, an auto-pipeline object per batch) cost more than the rest of the access
 * check, so the one script every request runs goes here: the commands of one event-loop turn
 * leave in one write, replies are matched in order, and there is no timer per command (the caller
 * keeps its own deadline). Like the ioredis client it stands beside, it never queues while
 * disconnected: a call then fails at once and the caller falls back.
 */
export class RespPipe {
  private socket: Socket | null = null;
  private ready = false;
  private closed = false;
  private queue: Pending[] = [];
  private head = 0;
  /** The first entry of `queue` whose command is still in `out`, not yet written. */
  private unsent = 0;
  private out = '';
  private flushScheduled = false;
  private rest: Buffer | null = null;
  private reconnectMs = 0;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private readonly watchdog: NodeJS.Timeout;
  private readonly maxPending: number;
  private readonly stuckAfterMs: number;
  private readonly flush = () => this.write();
  private readyWaiters: Array<() => void> = [];

  /** Where the live connection goes: the target, or what the resolver said last. */
  private current: RespTarget | null = null;

  /**
   * `target` is fixed (REDIS_URL), or found anew before every connection (the primary a Sentinel
   * names): then the server must also say it is a primary (ROLE) before any script is sent, and
   * a READONLY answer (a primary demoted under us) drops the connection to find the new one.
   */
  constructor(
    private readonly target: RespTarget | (() => Promise<RespTarget>),
    private readonly options: RespPipeOptions,
  ) {
    this.maxPending = options.maxPending ?? 10_000;
    this.stuckAfterMs = options.stuckAfterMs ?? 5_000;
    this.watchdog = setInterval(() => this.checkStuck(), Math.min(1_000, this.stuckAfterMs));
    this.watchdog.unref();
    this.open();
  }

  get connected(): boolean {
    return this.ready;
  }

  /** Resolves once the connection is ready (at once if it is). */
  whenReady(): Promise<void> {
    return this.ready ? Promise.resolve() : new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  /**
   * EVALSHA, falling back to EVAL with the body when Redis does not have the script. `asking`:
   * preceded by ASKING (a cluster node importing the keys' slot serves it once).
   */
  evalsha(script: LuaScript, keys: readonly string[], args: readonly string[], cb: Callback, asking = false): void {
    let rest = `${bulk(String(keys.length))}`;
    for (const k of keys) rest += bulk(k);
    for (const a of args) rest += bulk(a);
    const argc = 1 + keys.length + args.length;
    if (asking && !this.sendAsking(cb)) return;
    this.send(`*${argc + 2}${CRLF}${bulk('EVALSHA')}${bulk(script.sha)}${rest}`, cb, { script, rest, argc, asking });
  }

  /** Any other command (CLUSTER SLOTS, say), in turn with the scripts. */
  command(args: readonly string[]): Promise<RespValue> {
    return new Promise((resolve, reject) =>
      this.send(`*${args.length}${CRLF}${args.map(bulk).join('')}`, (err, reply) => (err === null ? resolve(reply) : reject(err)), null),
    );
  }

  /** For /health: where the connection goes, or what it is doing instead. */
  state(): RedisState {
    const where = this.current === null ? null : `${this.current.host}:${this.current.port}`;
    if (typeof this.target !== 'function') {
      return this.ready
        ? { mode: 'server', state: 'connected', primaries: 1, detail: `server ${where}` }
        : { mode: 'server', state: 'reconnecting', primaries: 0, detail: `${where ?? 'the server'} does not answer; connecting again` };
    }
    return this.ready
      ? { mode: 'sentinel', state: 'connected', primaries: 1, detail: `primary ${where}, named by the sentinels` }
      : {
          mode: 'sentinel',
          state: 'finding the primary',
          primaries: 0,
          detail: `no primary answers${where === null ? '' : ` (the last one: ${where})`}; asking the sentinels for the current one (a failover, perhaps)`,
        };
  }

  /** Where the connection goes now (null before the first one). */
  get address(): { host: string; port: number } | null {
    return this.current === null ? null : { host: this.current.host, port: this.current.port };
  }

  /** The same as a promise. */
  run(script: LuaScript, keys: readonly string[], args: readonly string[]): Promise<RespValue> {
    return new Promise((resolve, reject) => this.evalsha(script, keys, args, (err, reply) => (err === null ? resolve(reply) : reject(err))));
  }

  close(): void {
    this.closed = true;
    clearInterval(this.watchdog);
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.socket?.destroy();
    this.failAll(new Error('the connection to redis is closed'));
  }

  /** ASKING ahead of a command, its reply ignored; false (and `cb` told) when it cannot be sent. */
  private sendAsking(cb: Callback): boolean {
    let refused = false;
    this.send(ASKING, ignore, null, (err) => {
      refused = true;
      cb(err, null);
    });
    return !refused;
  }

  private send(command: string, cb: Callback, retry: Pending['retry'], onRefused: (err: Error) => void = (err) => cb(err, null)): void {
    if (!this.ready) return onRefused(new Error('redis is not connected'));
    if (this.queue.length - this.head >= this.maxPending) return onRefused(new Error(`${this.maxPending} redis commands are waiting for a reply`));
    this.queue.push({ cb, retry, sentAt: Infinity });
    this.out += command;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      // Every command issued in this turn of the event loop goes out in one write.
      setImmediate(this.flush);
    }
  }

  private write(): void {
    this.flushScheduled = false;
    if (this.out === '' || this.socket === null) return;
    this.socket.write(this.out);
    this.out = '';
    const now = performance.now();
    for (let k = this.unsent; k < this.queue.length; k++) this.queue[k]!.sentAt = now;
    this.unsent = this.queue.length;
  }

  private open(): void {
    if (typeof this.target !== 'function') return this.connect(this.target);
    this.target().then(
      (t) => {
        if (!this.closed) this.connect(t);
      },
      (err: Error) => {
        this.options.onProblem?.(`cannot find the redis primary: ${err.message}`);
        this.retryLater();
      },
    );
  }

  private connect(t: RespTarget): void {
    this.current = t;
    const socket = t.tls === null ? connectTcp({ host: t.host, port: t.port }) : connectTls({ host: t.host, port: t.port, ...t.tls });
    this.socket = socket;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    socket.setTimeout(this.options.connectTimeoutMs, () => socket.destroy(new Error('redis connect timeout')));
    socket.once(t.tls === null ? 'connect' : 'secureConnect', () => this.handshake(socket));
    socket.on('data', (d: Buffer) => this.receive(d));
    socket.on('error', () => undefined);
    socket.once('close', () => this.lost(socket));
  }

  /** AUTH and SELECT when the URL asks for them, and a PING: ready once all three answered. */
  private handshake(socket: Socket): void {
    const t = this.current!;
    const steps: string[] = [];
    if (t.password !== null) {
      steps.push(t.username === null ? `*2${CRLF}${bulk('AUTH')}${bulk(t.password)}` : `*3${CRLF}${bulk('AUTH')}${bulk(t.username)}${bulk(t.password)}`);
    }
    if (t.db !== 0) steps.push(`*2${CRLF}${bulk('SELECT')}${bulk(String(t.db))}`);
    // A primary found through Sentinel must still be one when we reach it.
    const checkRole = typeof this.target === 'function';
    steps.push(checkRole ? `*1${CRLF}${bulk('ROLE')}` : `*1${CRLF}${bulk('PING')}`);
    let left = steps.length;
    const step: Callback = (err, reply) => {
      if (socket !== this.socket) return;
      if (err !== null) {
        if (err instanceof RespError) this.options.onProblem?.(`redis refused the connection: ${err.message}`);
        socket.destroy();
        return;
      }
      if (checkRole && left === 1 && !(Array.isArray(reply) && reply[0] === 'master')) {
        this.options.onProblem?.(`${t.host}:${t.port} is not a primary (any more); asking the sentinels again`);
        socket.destroy();
        return;
      }
      if (--left === 0) {
        socket.setTimeout(0);
        this.ready = true;
        this.reconnectMs = 0;
        for (const wake of this.readyWaiters.splice(0)) wake();
      }
    };
    for (let k = 0; k < steps.length; k++) this.queue.push({ cb: step, retry: null, sentAt: performance.now() });
    this.unsent = this.queue.length;
    socket.write(steps.join(''));
  }

  private receive(d: Buffer): void {
    const b = this.rest === null ? d : Buffer.concat([this.rest, d]);
    let i = 0;
    try {
      for (;;) {
        const r = parse(b, i);
        if (r === null) break;
        i = r[1];
        this.answer(r[0]);
      }
    } catch {
      // A stream we cannot read: start again on a fresh connection.
      this.socket?.destroy();
      return;
    }
    this.rest = i >= b.length ? null : b.subarray(i);
  }

  private answer(reply: RespValue): void {
    const p = this.queue[this.head];
    if (p === undefined) return;
    this.queue[this.head++] = undefined as never;
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.unsent -= this.head;
      this.head = 0;
    }
    if (reply instanceof RespError) {
      if (p.retry !== null && reply.message.startsWith('NOSCRIPT')) {
        const { script, rest, argc, asking } = p.retry;
        // Sent in full once: EVAL also makes Redis keep the script for the next EVALSHA.
        if (asking && !this.sendAsking(p.cb)) return;
        this.send(`*${argc + 2}${CRLF}${bulk('EVAL')}${bulk(script.body)}${rest}`, p.cb, null);
        return;
      }
      p.cb(reply, null);
      // A primary demoted to a replica: its connection is of no use any more.
      if (reply.message.startsWith('READONLY')) this.socket?.destroy();
      return;
    }
    p.cb(null, reply);
  }

  private checkStuck(): void {
    if (!this.stuck()) return;
    // Once this turn's sockets are read: a check run late by a busy event loop may find the reply
    // already waiting in the socket.
    setImmediate(() => {
      if (!this.stuck()) return;
      this.options.onProblem?.(`no reply from redis for ${this.stuckAfterMs} ms; connecting again`);
      this.socket?.destroy();
    });
  }

  private stuck(): boolean {
    const oldest = this.queue[this.head];
    return oldest !== undefined && performance.now() - oldest.sentAt > this.stuckAfterMs;
  }

  private lost(socket: Socket): void {
    if (socket !== this.socket) return;
    this.socket = null;
    this.ready = false;
    this.rest = null;
    this.out = '';
    this.failAll(new Error('the connection to redis was lost'));
    this.retryLater();
  }

  private retryLater(): void {
    if (this.closed) return;
    this.reconnectMs = Math.min(2_000, this.reconnectMs + 200);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.closed) this.open();
    }, this.reconnectMs);
    this.reconnectTimer.unref();
  }

  private failAll(err: Error): void {
    const waiting = this.queue.slice(this.head);
    this.queue = [];
    this.head = 0;
    this.unsent = 0;
    for (const p of waiting) p.cb(err, null);
  }
}

/**
 * One command on a short-lived connection (a question to a sentinel): its reply, or an error
 * after `timeoutMs`.
 */
export function askOnce(host: string, port: number, args: readonly string[], timeoutMs: number): Promise<RespValue> {
  return new Promise((resolve, reject) => {
    const socket = connectTcp({ host, port });
    let data: Buffer | null = null;
    const done = (err: Error | null, value?: RespValue) => {
      socket.destroy();
      if (err !== null) reject(err);
      else resolve(value ?? null);
    };
    socket.setTimeout(timeoutMs, () => done(new Error(`no answer from ${host}:${port} within ${timeoutMs} ms`)));
    socket.once('error', (err) => done(err));
    socket.once('connect', () => socket.write(`*${args.length}${CRLF}${args.map(bulk).join('')}`));
    socket.on('data', (d: Buffer) => {
      data = data === null ? d : Buffer.concat([data, d]);
      try {
        const r = parse(data, 0);
        if (r !== null) done(r[0] instanceof RespError ? r[0] : null, r[0]);
      } catch (err) {
        done(err as Error);
      }
    });
  });
}
