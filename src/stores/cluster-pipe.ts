import type { RedisState } from '../observability/health.js';
import { hashSlot, SLOTS } from './hash-slot.js';
import type { ScriptRunner } from './redis-access-store.js';
import { serverTarget, type HostPort, type RedisTls } from './redis-connection.js';
import { RespError, RespPipe, type LuaScript, type RespPipeOptions, type RespValue } from './resp-pipe.js';

export interface ClusterPipeOptions extends RespPipeOptions {
  password: string | null;
  tls: RedisTls | null;
  /**
   * REDIS_COMMAND_TIMEOUT_MS: while a slot moves between primaries, a script whose keys are split
   * between them is answered TRYAGAIN; it is sent again until this much time has passed.
   */
  timeoutMs: number;
}

/** A stale map may take a few redirections (MOVED, ASK) to settle; more means something is wrong. */
const MAX_HOPS = 16;
/** Between two tries of a script refused TRYAGAIN (its slot is being moved): doubling from the first to the last. */
const TRYAGAIN_FIRST_PAUSE_MS = 2;
const TRYAGAIN_MAX_PAUSE_MS = 20;
/** The slot map is asked for again at most this often (after MOVED, or a primary lost). */
const REFRESH_EVERY_MS = 250;
/** How long one node may take to answer CLUSTER SLOTS. */
const REFRESH_TIMEOUT_MS = 1_000;

type Resolve = (reply: RespValue) => void;
type Reject = (err: Error) => void;

/**
 * The request path's scripts on a Redis Cluster: one pipelined connection (resp-pipe.ts) per
 * primary, each script sent to the primary of its keys' hash slot (every key of one request
 * shares it: access-store.ts). The slot map comes from CLUSTER SLOTS and is asked for again when
 * a primary answers MOVED (the slot moved for good: the map is corrected at once) or a connection
 * is lost (a failover: the promoted replica appears in the map once the cluster agrees on it).
 * ASK (a slot being moved, these keys already gone) sends the script once to the importing node
 * with ASKING; TRYAGAIN (the keys split between the two nodes for a moment) tries again within the
 * command timeout. Like RespPipe, nothing is queued while a primary is unreachable: the call fails
 * and the caller falls back.
 */
export class ClusterPipe implements ScriptRunner {
  private readonly slots: Array<RespPipe | undefined> = new Array<RespPipe | undefined>(SLOTS);
  private readonly nodes = new Map<string, RespPipe>();
  private readonly seeds: ReadonlySet<string>;
  private mapped = false;
  private refreshing = false;
  private lastRefresh = -Infinity;
  private refreshTimer: NodeJS.Timeout | null = null;
  private closed = false;
  private refreshes = 0;

  constructor(
    seeds: readonly HostPort[],
    private readonly options: ClusterPipeOptions,
  ) {
    this.seeds = new Set(seeds.map((s) => addressKey(s.host, s.port)));
    for (const s of seeds) {
      void this.node(s.host, s.port)
        .whenReady()
        .then(() => this.refreshSoon());
    }
  }

  /** For /health: how many primaries, and which ones cannot be reached (a failover under way). */
  state(): RedisState {
    if (!this.mapped) return { mode: 'cluster', state: 'reading the slot map', primaries: 0, detail: 'asking the cluster nodes for the slot map' };
    const primaries = [...new Set(this.slots)].filter((p): p is RespPipe => p !== undefined);
    const down = primaries.filter((p) => !p.connected).map((p) => (p.address === null ? '?' : addressKey(p.address.host, p.address.port)));
    const unserved = this.slots.filter((p) => p === undefined).length;
    let detail = `cluster of ${primaries.length} primaries`;
    if (down.length > 0) detail += `; ${down.join(', ')} unreachable: waiting for the cluster to promote a replica (per-process limits for the users on it meanwhile)`;
    if (unserved > 0) detail += `; ${unserved} hash slots served by no primary`;
    if (down.length === 0 && unserved === 0) return { mode: 'cluster', state: 'connected', primaries: primaries.length, detail: `${detail}, all connected` };
    return { mode: 'cluster', state: down.length > 0 ? 'primary unreachable' : 'slots unserved', primaries: primaries.length - down.length, detail };
  }

  run(script: LuaScript, keys: readonly string[], args: readonly string[]): Promise<RespValue> {
    return new Promise((resolve, reject) => this.dispatch(script, keys, args, hashSlot(keys[0]!), null, performance.now(), 0, 0, resolve, reject));
  }

  close(): void {
    this.closed = true;
    if (this.refreshTimer !== null) clearTimeout(this.refreshTimer);
    for (const pipe of this.nodes.values()) pipe.close();
    this.nodes.clear();
  }

  private dispatch(
    script: LuaScript,
    keys: readonly string[],
    args: readonly string[],
    slot: number,
    askTo: RespPipe | null,
    startedAt: number,
    hops: number,
    tryAgains: number,
    resolve: Resolve,
    reject: Reject,
  ): void {
    const pipe = askTo ?? this.slots[slot];
    if (pipe === undefined) {
      this.refreshSoon();
      return reject(new Error(this.mapped ? `no redis primary serves hash slot ${slot}` : 'the redis cluster slot map is not known yet'));
    }
    const left = this.options.timeoutMs - (performance.now() - startedAt);
    if (!pipe.connected && hops > 0 && left > 0) {
      // A redirection to a node this process has no connection to yet (a primary just added):
      // the connection is made, within what is left of the deadline, rather than failing at once.
      void waitReady(pipe, left).then((ready) =>
        ready ? this.dispatch(script, keys, args, slot, askTo, startedAt, hops, tryAgains, resolve, reject) : reject(new Error('the redis node a redirection names cannot be reached')),
      );
      return;
    }
    pipe.evalsha(
      script,
      keys,
      args,
      (err, reply) => {
        if (err === null) return resolve(reply);
        if (!(err instanceof RespError)) {
          // The primary is unreachable: perhaps failed over. The caller falls back meanwhile.
          this.refreshSoon();
          return reject(err);
        }
        const again = (to: RespPipe | null) => this.dispatch(script, keys, args, slot, to, startedAt, hops + 1, tryAgains, resolve, reject);
        const message = err.message;
        if (performance.now() - startedAt >= this.options.timeoutMs) return reject(err);
        if (message.startsWith('TRYAGAIN')) {
          // Until the move is done, whatever it takes within the deadline (not a redirection: no hop counted).
          const pause = Math.min(TRYAGAIN_MAX_PAUSE_MS, TRYAGAIN_FIRST_PAUSE_MS * 2 ** tryAgains);
          setTimeout(() => this.dispatch(script, keys, args, slot, null, startedAt, hops, tryAgains + 1, resolve, reject), pause);
          return;
        }
        if (hops >= MAX_HOPS) return reject(err);
        if (message.startsWith('MOVED ')) {
          const target = this.redirectTarget(message, pipe);
          if (target === null) return reject(err);
          this.slots[slot] = target;
          this.refreshSoon();
          return again(null);
        }
        if (message.startsWith('ASK ')) {
          const target = this.redirectTarget(message, pipe);
          return target === null ? reject(err) : again(target);
        }
        if (message.startsWith('CLUSTERDOWN')) this.refreshSoon();
        reject(err);
      },
      askTo !== null,
    );
  }

  /** The node a MOVED or ASK names (`MOVED <slot> <host>:<port>`; an empty host is the node that answered). */
  private redirectTarget(message: string, from: RespPipe): RespPipe | null {
    const address = message.slice(message.lastIndexOf(' ') + 1);
    const at = address.lastIndexOf(':');
    const port = Number(address.slice(at + 1));
    const host = address.slice(0, at) || from.address?.host;
    if (host === undefined || !Number.isInteger(port)) return null;
    return this.node(host, port);
  }

  private node(host: string, port: number): RespPipe {
    const key = addressKey(host, port);
    let pipe = this.nodes.get(key);
    if (pipe === undefined) {
      pipe = new RespPipe(serverTarget(host, port, this.options.password, this.options.tls), this.options);
      this.nodes.set(key, pipe);
    }
    return pipe;
  }

  /** Asks for the slot map now, or as soon as REFRESH_EVERY_MS has passed since the last time. */
  private refreshSoon(): void {
    if (this.closed || this.refreshing || this.refreshTimer !== null) return;
    const wait = this.lastRefresh + REFRESH_EVERY_MS - performance.now();
    if (wait <= 0) {
      void this.refresh();
      return;
    }
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      void this.refresh();
    }, wait);
    this.refreshTimer.unref();
  }

  private async refresh(): Promise<void> {
    this.refreshing = true;
    this.lastRefresh = performance.now();
    try {
      // The primaries the map names first, the seeds and other nodes after; a different one first each time.
      const serving = new Set(this.slots);
      const all = [...this.nodes.values()].filter((p) => p.connected);
      const ordered = [...all.filter((p) => serving.has(p)), ...all.filter((p) => !serving.has(p))];
      const shift = ordered.length === 0 ? 0 : this.refreshes++ % ordered.length;
      for (const pipe of [...ordered.slice(shift), ...ordered.slice(0, shift)]) {
        try {
          if (this.apply(await withTimeout(pipe.command(['CLUSTER', 'SLOTS']), REFRESH_TIMEOUT_MS), pipe)) return;
        } catch {
          // the next node may know
        }
      }
    } finally {
      this.refreshing = false;
    }
    // No node could answer: ask again (a node that connects later asks too).
    if (!this.closed) this.refreshSoon();
  }

  /**
   * CLUSTER SLOTS: [[start, end, [host, port, id, ...], replicas...], ...]. A reply that covers no
   * slot (a node reset, or not yet part of the cluster) is not taken: false, and the next node is asked.
   */
  private apply(reply: RespValue, from: RespPipe): boolean {
    if (!Array.isArray(reply)) throw new Error('CLUSTER SLOTS: not a list');
    const ranges = reply.filter((r): r is RespValue[] => Array.isArray(r) && Array.isArray(r[2]));
    if (ranges.length === 0) return false;
    const next = new Array<RespPipe | undefined>(SLOTS);
    for (const range of ranges) {
      const [start, end] = range as [number, number];
      const [host, port] = range[2] as [string, number];
      const pipe = this.node(host || from.address!.host, port);
      for (let s = start; s <= end; s++) next[s] = pipe;
    }
    for (let s = 0; s < SLOTS; s++) this.slots[s] = next[s];
    this.mapped = true;
    // A node that serves no slot and cannot be reached (failed, or removed) is let go, unless it is
    // a seed; one that answers stays (a primary just added, before its first slot arrives).
    const serving = new Set(next);
    for (const [key, pipe] of this.nodes) {
      if (serving.has(pipe) || this.seeds.has(key) || pipe.connected) continue;
      pipe.close();
      this.nodes.delete(key);
    }
    return true;
  }
}

function addressKey(host: string, port: number): string {
  return `${host}:${port}`;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
      timer.unref();
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Whether the pipe is ready within `ms`. */
function waitReady(pipe: RespPipe, ms: number): Promise<boolean> {
  return withTimeout(pipe.whenReady(), ms).then(
    () => true,
    () => false,
  );
}
