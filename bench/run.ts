/**
 * npm run bench [-- --write] [-- --profile] [-- --soak]
 *
 * The gateway beside the upstream called directly, nginx proxy_pass, a hand-written node:http +
 * undici proxy (the Node ceiling), Fastify + @fastify/http-proxy and a Fastify assembly with JWT
 * and a Redis rate-limit store (bench/peers/), all in one run on one machine: throughput with wrk
 * in interleaved rounds, then latency at a fixed rate. The gateway rows: a public route, a JWT +
 * RBAC route with in-memory stores and the audit trail off, and the pipeline as deployed (Redis,
 * the audit trail delivering to a stand-in, a PHI route, access log and metrics). `--soak` runs
 * the deployed pipeline for BENCH_SOAK_SECONDS at a fixed rate with many users and prints its RSS
 * curve. See BENCHMARKS.md.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { appendFile, chmod, mkdir, mkdtemp, readFile, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { coreUse, processTree, rssMb, snapshot, watchRss } from './cpu.js';
import { runFixedRate } from './fixed-rate.js';
import { ensurePeers, PEERS, startPeer, type PeerName } from './peers.js';
import { signToken, startGateway, tokenRotationScript, type Gateway } from './gateway.js';
import { proxyConf, startNginx, upstreamConf, UPSTREAM_BODY } from './nginx.js';
import { startRedis, startRedisCluster } from './redis.js';
import { allowedCpus, freePort, stop, stopAll, which } from './procs.js';
import { formatSummary, summarise as summariseProfile, type CpuProfile } from './profile.js';
import { formatFacts, latencyTable, machineFacts, markdownTable, relative, summarise, type Facts, type LatencyRow, type Row, type Sample, type Summary } from './report.js';
import { runWrk } from './wrk.js';

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
/** Per proxy CPU-second, against the Node ceiling in the same run. */
const TARGET_LEAN = 0.95;
const TARGET_DEPLOYED = 0.8;
/** What write-ahead audit may add to the p50 at the fixed rate, against the audit event after the answer. */
const TARGET_WRITE_AHEAD_P50_MS = 0.3;
/** The deployed pipeline against the Fastify assembly with a Redis rate-limit store. */
const TARGET_DEPLOYED_VS_FASTIFY = 1.5;
/** At the fixed rate: added to the direct call's p50, and the p99 against the Fastify assembly's. */
const TARGET_ADDED_P50_MS = 1;
const TARGET_P99_VS_FASTIFY = 0.5;
/** The run's temp dir, removed on Ctrl-C too. */
let tempDir: string | null = null;

interface Options {
  seconds: number;
  warmup: number;
  rounds: number;
  connections: number;
  threads: number;
  retries: number;
  tokens: number;
  /** The fixed-rate phase: requests per second (0: skipped), seconds per target. */
  rate: number;
  rateSeconds: number;
  write: boolean;
  profile: boolean;
  soak: boolean;
  soakSeconds: number;
  soakUsers: number;
  /** A git revision whose gateway is measured beside this one, row for row (BENCH_BASELINE). */
  baseline: string | null;
}

function options(): Options {
  const int = (name: string, fallback: number, min: number): number => {
    const raw = process.env[name];
    if (raw === undefined || raw === '') return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be a whole number >= ${min} (got "${raw}")`);
    return n;
  };
  const flags = process.argv.slice(2);
  const unknown = flags.filter((f) => f !== '--write' && f !== '--profile' && f !== '--soak');
  if (unknown.length > 0) throw new Error(`unknown argument ${unknown.join(' ')}; the flags are --write, --profile and --soak`);
  return {
    seconds: int('BENCH_DURATION', 10, 1),
    warmup: int('BENCH_WARMUP', 3, 0),
    rounds: int('BENCH_ROUNDS', 3, 1),
    connections: int('BENCH_CONNECTIONS', 50, 1),
    // One wrk thread: wrk shares its core with the upstream, more threads would only contend.
    threads: int('BENCH_THREADS', 1, 1),
    // On a shared host, a run that other processes skewed can be repeated instead of counted.
    retries: int('BENCH_RETRIES', 0, 0),
    // More than 1 adds a row whose requests rotate through that many tokens (see BENCHMARKS.md).
    tokens: int('BENCH_TOKENS', 1, 1),
    rate: int('BENCH_RATE', 1_000, 0),
    rateSeconds: int('BENCH_RATE_SECONDS', 20, 1),
    write: flags.includes('--write'),
    profile: flags.includes('--profile'),
    soak: flags.includes('--soak'),
    soakSeconds: int('BENCH_SOAK_SECONDS', 600, 10),
    soakUsers: int('BENCH_SOAK_USERS', 20_000, 1),
    baseline: process.env.BENCH_BASELINE?.trim() || null,
  };
}

function run(command: string, args: string[], env?: NodeJS.ProcessEnv): void {
  const r = spawnSync(command, args, { stdio: 'inherit', cwd: ROOT, env: env ?? process.env });
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${r.error?.message ?? `exit ${r.status}`})`);
}

/** nginx, wrk and redis-server from apt on a fresh Debian machine; elsewhere, say what is missing. */
function ensureTools(): { nginx: string; redisServer: string } {
  if (which('nginx') === null || which('wrk') === null || which('redis-server') === null) {
    if (process.getuid?.() !== 0 || which('apt-get') === null) {
      throw new Error('nginx, wrk and redis-server are needed: apt-get install -y nginx-light wrk redis-server (or your system\'s packages)');
    }
    console.log('installing nginx-light, wrk and redis-server with apt-get');
    run('apt-get', ['update']);
    run('apt-get', ['install', '-y', 'nginx-light', 'wrk', 'redis-server'], { ...process.env, DEBIAN_FRONTEND: 'noninteractive' });
  }
  const nginx = which('nginx');
  const redisServer = which('redis-server');
  if (nginx === null || redisServer === null || which('wrk') === null) throw new Error('nginx, wrk or redis-server is still missing after apt-get install');
  return { nginx, redisServer };
}

interface Pinning {
  load: number | null;
  proxy: number | null;
}

function pinning(): Pinning {
  const cpus = allowedCpus();
  return cpus.length >= 2 ? { load: cpus[0]!, proxy: cpus[1]! } : { load: null, proxy: null };
}

const cpuArg = (cpu: number | null) => (cpu === null ? null : String(cpu));

function describePinning(p: Pinning): string {
  if (p.load === null) return 'pinning: none (fewer than 2 usable cores; every process shares the CPU)';
  return [
    `pinning (taskset -c): upstream nginx -> CPU ${p.load}, wrk -> CPU ${p.load}, this script -> CPU ${p.load};`,
    `                      proxy under test (nginx proxy_pass or the gateway) -> CPU ${p.proxy}, alone`,
  ].join('\n');
}

type TargetKey = 'direct' | 'nginx' | PeerName | 'gateway' | 'gateway-auth' | 'gateway-deployed' | 'gateway-deployed-after' | 'gateway-deployed-cluster' | 'gateway-auth-rotating';

interface Target {
  /** `@baseline` marks the same row measured on the BENCH_BASELINE build. */
  key: TargetKey | `${TargetKey}@baseline`;
  label: string;
  url: string;
  headers: string[];
  script?: string;
  /** The access log of the proxy under test, checked after every run. */
  accessLog: string | null;
  /** The processes of the proxy under test, whose CPU use is measured. */
  pids: number[];
}

const headerObject = (t: Target) => Object.fromEntries(t.headers.map((h) => h.split(/:\s*/, 2) as [string, string]));

/** One request per target before any load: 200 and the upstream's exact body, or a clear stop. */
async function preflight(targets: readonly Target[]): Promise<void> {
  for (const t of targets) {
    const res = await fetch(t.url, { headers: headerObject(t) });
    const body = await res.text();
    if (res.status !== 200 || body !== UPSTREAM_BODY) throw new Error(`${t.label}: ${t.url} answered ${res.status} ${body.slice(0, 200)}`);
  }
  for (const authed of targets.filter((t) => (t.key.startsWith('gateway-') || t.key === 'fastify-assembly') && t.key !== 'gateway' && t.script === undefined)) {
    const res = await fetch(authed.url);
    await res.arrayBuffer();
    if (res.status !== 401) throw new Error(`${authed.label}: without a token it answered ${res.status}, not 401; auth is not enforced`);
  }
}

/** What the target answers right now, to show why a run failed. */
async function oneAnswer(t: Target): Promise<string> {
  try {
    const res = await fetch(t.url, { headers: headerObject(t) });
    return `one request now gets: ${res.status} ${(await res.text()).slice(0, 300)}`;
  } catch (err) {
    return `one request now fails: ${(err as Error).message}`;
  }
}

/**
 * Every measured request must have been logged, with status 200. Requests still in flight when
 * wrk stops are logged as 499 by both proxies; at most one per connection is expected.
 */
async function checkAccessLog(t: Target, requests: number, connections: number): Promise<void> {
  let lines = 0;
  let aborted = 0;
  const other = new Map<string, number>();
  for await (const line of createInterface({ input: createReadStream(t.accessLog!) })) {
    const status = /"status_code":(\d+)/.exec(line)?.[1];
    if (status === undefined) continue;
    lines++;
    if (status === '499') aborted++;
    else if (status !== '200') other.set(status, (other.get(status) ?? 0) + 1);
  }
  if (other.size > 0 || aborted > connections) {
    throw new Error(`${t.label}: the access log has non-200 statuses: ${JSON.stringify(Object.fromEntries(other))}, 499 x ${aborted}`);
  }
  if (lines < requests) throw new Error(`${t.label}: ${requests} requests but ${lines} access log lines; is access logging on?`);
}

/** Runs with more than this share of either core taken by other processes are flagged as skewed. */
const FOREIGN_LIMIT = 0.05;

/** What every stage of a run needs: the settings, the pinning and the upstream. */
interface Setup {
  o: Options;
  /** The root of the BENCH_BASELINE build, when there is one. */
  baselineRoot: string | null;
  pin: Pinning;
  facts: Facts;
  dir: string;
  nginx: string;
  redisServer: string;
  upstreamPort: number;
  upstreamPids: number[];
}

async function measure(t: Target, seconds: number, { o, pin, upstreamPids }: Setup): Promise<Sample> {
  if (t.accessLog !== null) await truncate(t.accessLog, 0);
  // Group 0 runs on the proxy's core; group 1 (upstream, wrk, this script) on the load core.
  const groups = [t.pids, [...upstreamPids, 'self' as const]];
  const before = snapshot(groups);
  const rss = watchRss(t.pids);
  const r = await runWrk(t.url, { connections: o.connections, seconds, threads: o.threads, cpu: cpuArg(pin.load), headers: t.headers, script: t.script });
  const after = snapshot(groups);
  const peakRss = rss.stop();
  if (r.non2xx > 0 || r.socketErrors !== null) {
    throw new Error(`${t.label}: ${r.non2xx} non-2xx/3xx responses, socket errors: ${r.socketErrors ?? 'none'}\n${r.output}${await oneAnswer(t)}`);
  }
  if (t.accessLog !== null) {
    // Both loggers flush their 4 KiB buffers at least every 250 ms.
    await new Promise((resolve) => setTimeout(resolve, 400));
    await checkAccessLog(t, r.requests, o.connections);
  }
  const proxy = pin.proxy === null ? null : coreUse(before, after, pin.proxy, 0);
  const load = pin.load === null ? null : coreUse(before, after, pin.load, 1);
  return {
    rps: r.rps,
    p50Ms: r.p50Ms,
    p99Ms: r.p99Ms,
    proxyCpu: proxy === null || t.pids.length === 0 ? null : proxy.watched,
    loadBusy: load?.busy ?? null,
    // Without a proxy the other core is idle, and other work naturally lands there: harmless.
    foreign: load === null ? null : t.pids.length === 0 ? load.foreign : Math.max(proxy?.foreign ?? 0, load.foreign),
    rssMb: peakRss,
  };
}

const isSkewed = (s: Sample): s is Sample & { foreign: number } => s.foreign !== null && s.foreign > FOREIGN_LIMIT;

function describeSample(label: string, s: Sample): string {
  const cpu = [
    s.proxyCpu === null ? null : `proxy CPU ${Math.round(s.proxyCpu * 100)}%`,
    s.loadBusy === null ? null : `wrk+upstream core ${Math.round(s.loadBusy * 100)}%`,
    s.rssMb === null ? null : `RSS ${Math.round(s.rssMb)} MB`,
    isSkewed(s) ? `SKEWED: other processes took ${Math.round(s.foreign * 100)}% of a core` : null,
  ].filter(Boolean);
  return `  ${label.padEnd(52)} ${Math.round(s.rps).toString().padStart(7)} req/s  p50 ${s.p50Ms.toFixed(3)} ms  p99 ${s.p99Ms.toFixed(3)} ms  ${cpu.join(', ')}`;
}

function settings(o: Options): string {
  const rotation = o.tokens > 1 ? `; the rotating-token row cycles through ${o.tokens} tokens` : '';
  return `load: wrk with ${o.threads} thread(s), ${o.connections} connections, ${o.seconds} s per run, ${o.rounds} rounds (order rotated each round), ${o.warmup} s warm-up per target first; medians reported${rotation}`;
}

/** Everything the comparison runs against: proxies started, and the targets that reach them. */
interface Field {
  targets: Target[];
}

async function startField(setup: Setup): Promise<Field> {
  const { o, pin, dir, nginx, redisServer, upstreamPort } = setup;
  const proxyCpu = cpuArg(pin.proxy);
  const proxyPort = await freePort();
  const proxy = await startNginx(nginx, dir, 'proxy', proxyConf(dir, proxyPort, upstreamPort, o.connections), proxyCpu, `http://127.0.0.1:${proxyPort}/plain`);
  const secret = randomBytes(32).toString('hex');
  const token = await signToken(secret);
  const bearer = [`Authorization: Bearer ${token}`];
  // Redis is a dependency like the upstream: it runs on the load core, outside the proxy's CPU.
  const redis = await startRedis(redisServer, cpuArg(pin.load));
  setup.upstreamPids.push(redis.child.pid!);
  const redisUrl = `redis://127.0.0.1:${redis.port}`;
  const upstream = `http://127.0.0.1:${upstreamPort}`;
  const peers = {} as Record<PeerName, { port: number; pid: number }>;
  for (const name of Object.keys(PEERS) as PeerName[]) {
    const peer = await startPeer(ROOT, name, { upstream, secret, redisUrl }, proxyCpu);
    peers[name] = { port: peer.port, pid: peer.child.pid! };
  }
  const lean = await startGateway(ROOT, dir, upstreamPort, secret, { cpu: proxyCpu, name: 'gateway' });
  const deployed = await startGateway(ROOT, dir, upstreamPort, secret, { cpu: proxyCpu, name: 'gateway-deployed', redisUrl, audit: true });
  // The same pipeline on a Redis Cluster of three primaries, on the load core as well.
  const cluster = await startRedisCluster(redisServer, cpuArg(pin.load), dir);
  for (const child of cluster.children) setup.upstreamPids.push(child.pid!);
  const onCluster = await startGateway(ROOT, dir, upstreamPort, secret, { cpu: proxyCpu, name: 'gateway-deployed-cluster', redisClusterNodes: cluster.nodes, audit: true });

  const gatewayTargets = (lean: Gateway, deployed: Gateway, suffix: string, at: '' | '@baseline'): Target[] => [
    { key: `gateway${at}`, label: `gateway, public route${suffix}`, url: `http://127.0.0.1:${lean.port}/plain`, headers: [], accessLog: lean.log, pids: [lean.child.pid!] },
    { key: `gateway-auth${at}`, label: `gateway, JWT + RBAC + limit, in memory, audit off${suffix}`, url: `http://127.0.0.1:${lean.port}/authed`, headers: bearer, accessLog: lean.log, pids: [lean.child.pid!] },
    {
      key: `gateway-deployed${at}`,
      label: `gateway as deployed: JWT + RBAC + Redis + PHI route + audit${suffix}`,
      url: `http://127.0.0.1:${deployed.port}/records`,
      headers: bearer,
      accessLog: deployed.log,
      pids: [deployed.child.pid!],
    },
  ];
  const peerTarget = (name: PeerName): Target => ({
    key: name,
    label: PEERS[name].label,
    url: `http://127.0.0.1:${peers[name].port}/`,
    headers: name === 'fastify-assembly' ? bearer : [],
    accessLog: null,
    pids: [peers[name].pid],
  });
  const targets: Target[] = [
    { key: 'direct', label: 'direct (wrk -> upstream)', url: `${upstream}/`, headers: [], accessLog: null, pids: [] },
    { key: 'nginx', label: 'nginx proxy_pass', url: `http://127.0.0.1:${proxyPort}/plain`, headers: [], accessLog: join(dir, 'proxy.access.log'), pids: processTree(proxy.pid!) },
    peerTarget('raw'),
    peerTarget('fastify-proxy'),
    peerTarget('fastify-assembly'),
    ...gatewayTargets(lean, deployed, '', ''),
    {
      // The same gateway and pipeline on its route without PHI: the audit event is appended after
      // the answer (synced within 10 ms), where the PHI route's access record is durable before it.
      key: 'gateway-deployed-after',
      label: 'gateway as deployed, route without PHI: audit after the answer',
      url: `http://127.0.0.1:${deployed.port}/authed`,
      headers: bearer,
      accessLog: deployed.log,
      pids: [deployed.child.pid!],
    },
    {
      key: 'gateway-deployed-cluster',
      label: 'gateway as deployed, on a Redis Cluster of three primaries',
      url: `http://127.0.0.1:${onCluster.port}/records`,
      headers: bearer,
      accessLog: onCluster.log,
      pids: [onCluster.child.pid!],
    },
  ];
  if (setup.baselineRoot !== null) {
    const baseDir = join(dir, 'baseline');
    const baseLean = await startGateway(setup.baselineRoot, baseDir, upstreamPort, secret, { cpu: proxyCpu, name: 'gateway' });
    const baseDeployed = await startGateway(setup.baselineRoot, baseDir, upstreamPort, secret, { cpu: proxyCpu, name: 'gateway-deployed', redisUrl, audit: true });
    targets.push(...gatewayTargets(baseLean, baseDeployed, ` (baseline ${o.baseline})`, '@baseline'));
  }
  if (o.tokens > 1) {
    targets.push({
      key: 'gateway-auth-rotating',
      label: `gateway, JWT route, ${o.tokens} tokens`,
      url: `http://127.0.0.1:${lean.port}/authed`,
      headers: [],
      script: await tokenRotationScript(dir, secret, o.tokens),
      accessLog: lean.log,
      pids: [lean.child.pid!],
    });
  }
  return { targets };
}

async function compare(setup: Setup): Promise<void> {
  const { o } = setup;
  const { targets } = await startField(setup);
  await preflight(targets.filter((t) => t.script === undefined));

  if (o.warmup > 0) {
    console.log(`\nwarm-up: ${o.warmup} s per target`);
    for (const t of targets) await measure(t, o.warmup, setup);
  }

  const rows: Row[] = targets.map((t) => ({ key: t.key, label: t.label, samples: [] }));
  for (let round = 0; round < o.rounds; round++) {
    const shift = round % targets.length;
    const order = [...targets.slice(shift), ...targets.slice(0, shift)];
    console.log(`\nround ${round + 1}/${o.rounds}`);
    for (const t of order) {
      let s = await measure(t, o.seconds, setup);
      for (let retry = 0; retry < o.retries && isSkewed(s); retry++) {
        console.log(`${describeSample(t.label, s)}  (repeated)`);
        s = await measure(t, o.seconds, setup);
      }
      rows.find((r) => r.key === t.key)!.samples.push(s);
      console.log(describeSample(t.label, s));
    }
  }

  const summaries = rows.map(summarise);
  const get = (key: Target['key']): Summary => summaries[rows.findIndex((r) => r.key === key)]!;
  const ceiling = get('raw');
  const table = markdownTable(summaries, ceiling, get('nginx'));
  const verdict = (s: Summary, reference: Summary, name: string, target: number) => {
    const r = relative(s, reference);
    return `${s.label}: ${r.toFixed(3)} x ${name} per proxy CPU-second; target >= ${target}: ${r >= target ? 'met' : 'NOT met'}`;
  };
  const all = rows.flatMap((r) => r.samples);
  const skewed = all.filter(isSkewed).length;
  const verdicts = [
    verdict(get('gateway'), ceiling, 'the Node ceiling', TARGET_LEAN),
    verdict(get('gateway-auth'), ceiling, 'the Node ceiling', TARGET_LEAN),
    verdict(get('gateway-deployed'), ceiling, 'the Node ceiling', TARGET_DEPLOYED),
    verdict(get('gateway-deployed'), get('fastify-assembly'), 'the Fastify assembly (Redis limit)', TARGET_DEPLOYED_VS_FASTIFY),
    against(get('gateway-deployed'), get('gateway-deployed-after'), 'the same pipeline with the audit event after the answer (write-ahead cost)'),
    against(get('gateway-deployed-cluster'), get('gateway-deployed'), 'the same on one Redis'),
    ...(setup.baselineRoot === null ? [] : (['gateway', 'gateway-auth', 'gateway-deployed'] as const).map((k) => againstBaseline(get(k), get(`${k}@baseline`), o.baseline!))),
    `runs skewed by other processes (> ${FOREIGN_LIMIT * 100}% of either core): ${skewed} of ${all.length}`,
  ];
  console.log(`\n${table}\n\n${verdicts.join('\n')}`);

  const latency = o.rate > 0 ? await fixedRate(setup, targets) : null;

  if (o.write) {
    const section = [
      `\n### Run of ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC\n`,
      ...formatFacts(setup.facts).split('\n').map((l) => `- ${l}`),
      `- ${settings(o)}`,
      `- ${describePinning(setup.pin).replace(/\n\s+/g, ' ')}`,
      '',
      table,
      '',
      ...verdicts.map((v) => `- ${v}`),
      ...(latency === null ? [] : ['', `At a fixed ${o.rate} req/s, ${o.rateSeconds} s per target, ${o.connections} connections at most (latency from when each request was due):`, '', latency.table, '', ...latency.verdicts.map((v) => `- ${v}`)]),
      '',
    ].join('\n');
    await appendFile(join(ROOT, 'BENCHMARKS.md'), section);
    console.log('\nappended to BENCHMARKS.md');
  }
}

/** The rows whose latency at a fixed rate is compared. */
const LATENCY_ROWS: ReadonlyArray<Target['key']> = ['direct', 'raw', 'fastify-assembly', 'gateway-auth', 'gateway-deployed-after', 'gateway-deployed', 'gateway-deployed-cluster', 'gateway-deployed@baseline'];

/**
 * Latency at a fixed rate, the way a real client population loads the gateway: well below
 * saturation, where the tail shows pauses (GC, a synchronous stretch, a sync of the spool) that
 * a saturated throughput run hides in its queueing.
 */
async function fixedRate(setup: Setup, targets: readonly Target[]): Promise<{ table: string; verdicts: string[] }> {
  const { o } = setup;
  const chosen = LATENCY_ROWS.map((k) => targets.find((t) => t.key === k)).filter((t): t is Target => t !== undefined);
  console.log(`\nfixed rate: ${o.rate} req/s for ${o.rateSeconds} s per target`);
  const rows: LatencyRow[] = [];
  for (const t of chosen) {
    const rss = watchRss(t.pids);
    const r = await runFixedRate(t.url, { rate: o.rate, seconds: o.rateSeconds, connections: o.connections, headers: [headerObject(t)] });
    const row: LatencyRow = { label: t.label, p50Ms: r.p50Ms, p99Ms: r.p99Ms, p999Ms: r.p999Ms, failed: r.failed, peakRssMb: rss.stop() };
    rows.push(row);
    console.log(`  ${t.label.padEnd(52)} p50 ${r.p50Ms.toFixed(3)} ms  p99 ${r.p99Ms.toFixed(3)} ms  p99.9 ${r.p999Ms.toFixed(3)} ms  failed ${r.failed}`);
  }
  const byKey = (k: Target['key']) => rows[chosen.findIndex((t) => t.key === k)];
  const direct = byKey('direct')!;
  const deployed = byKey('gateway-deployed')!;
  const fastify = byKey('fastify-assembly')!;
  const table = latencyTable(rows, direct);
  const added = deployed.p50Ms - direct.p50Ms;
  const after = byKey('gateway-deployed-after')!;
  const writeAhead = deployed.p50Ms - after.p50Ms;
  const verdicts = [
    `${deployed.label}: adds ${added.toFixed(3)} ms to the direct call's p50; target <= ${TARGET_ADDED_P50_MS} ms: ${added <= TARGET_ADDED_P50_MS ? 'met' : 'NOT met'}`,
    `write-ahead audit (PHI route) against the audit event after the answer: p50 ${writeAhead >= 0 ? '+' : ''}${writeAhead.toFixed(3)} ms, p99 ${(deployed.p99Ms - after.p99Ms).toFixed(3)} ms; target p50 <= ${TARGET_WRITE_AHEAD_P50_MS} ms: ${writeAhead <= TARGET_WRITE_AHEAD_P50_MS ? 'met' : 'NOT met'}`,
    `${deployed.label}: p99 ${(deployed.p99Ms / fastify.p99Ms).toFixed(2)} x the Fastify assembly's; target <= ${TARGET_P99_VS_FASTIFY}: ${deployed.p99Ms <= TARGET_P99_VS_FASTIFY * fastify.p99Ms ? 'met' : 'NOT met'}`,
  ];
  console.log(`\n${table}\n\n${verdicts.join('\n')}`);
  return { table, verdicts };
}

/**
 * The deployed pipeline for a long while at a fixed rate, every request from one of many users
 * (one token each): nothing kept per user may grow without bound. Prints the RSS curve.
 */
async function soak(setup: Setup): Promise<void> {
  const { o, pin, dir, redisServer, upstreamPort } = setup;
  const redis = await startRedis(redisServer, cpuArg(pin.load));
  setup.upstreamPids.push(redis.child.pid!);
  const secret = randomBytes(32).toString('hex');
  const gw = await startGateway(ROOT, dir, upstreamPort, secret, { cpu: cpuArg(pin.proxy), name: 'gateway-deployed', redisUrl: `redis://127.0.0.1:${redis.port}`, audit: true });
  console.log(`signing ${o.soakUsers} tokens, one per user`);
  const headers: Array<Record<string, string>> = [];
  for (let i = 0; i < o.soakUsers; i++) headers.push({ authorization: `Bearer ${await signToken(secret, `soak-${i}`, `soak-user-${i}`)}` });
  const pid = gw.child.pid!;
  const curve: Array<[number, number]> = [];
  const started = Date.now();
  const sample = () => curve.push([Math.round((Date.now() - started) / 1000), rssMb([pid]) ?? 0]);
  sample();
  const timer = setInterval(() => {
    sample();
    const [s, mb] = curve[curve.length - 1]!;
    console.log(`  ${String(s).padStart(4)} s  RSS ${mb.toFixed(1)} MB`);
  }, 10_000);
  const r = await runFixedRate(`http://127.0.0.1:${gw.port}/records`, { rate: o.rate || 1_000, seconds: o.soakSeconds, connections: o.connections, headers });
  clearInterval(timer);
  sample();
  const first = curve.find(([s]) => s >= 60) ?? curve[0]!;
  const last = curve[curve.length - 1]!;
  console.log(`\nsoak: ${r.sent} requests from ${o.soakUsers} users over ${o.soakSeconds} s, ${r.failed} failed; p50 ${r.p50Ms.toFixed(2)} ms, p99 ${r.p99Ms.toFixed(2)} ms, p99.9 ${r.p999Ms.toFixed(2)} ms`);
  console.log(`RSS after the first minute ${first[1].toFixed(1)} MB, at the end ${last[1].toFixed(1)} MB, highest ${Math.max(...curve.map(([, mb]) => mb)).toFixed(1)} MB`);
  console.log(`curve (s, MB): ${curve.map(([s, mb]) => `${s}:${mb.toFixed(0)}`).join(' ')}`);
}

/**
 * A row against its twin on the baseline build: requests per proxy CPU-second, with the noise of
 * the two rows (each one's spread over the rounds) to read the difference against.
 */
function againstBaseline(now: Summary, before: Summary, rev: string): string {
  return against(now, before, `baseline ${rev}`);
}

/** One row against another: requests per proxy CPU-second, and whether the difference is within the two rows' noise. */
function against(now: Summary, other: Summary, name: string): string {
  const perCpu = (s: Summary) => (s.proxyCpu === null || s.proxyCpu === 0 ? s.rps : s.rps / s.proxyCpu);
  const ratio = perCpu(now) / perCpu(other);
  const noise = Math.max(now.spread, other.spread) * 50;
  const within = Math.abs(ratio - 1) * 100 <= noise ? 'within' : 'outside';
  return `${now.label}: ${ratio.toFixed(3)} x ${name} per proxy CPU-second (${((ratio - 1) * 100).toFixed(1)}%; ${within} the noise of this pair of rows: ±${noise.toFixed(1)}%)`;
}

/**
 * The gateway at another revision, built beside this one: its tree from git (nothing of this
 * checkout's working tree), its own dependencies from its own lockfile.
 */
function buildBaseline(rev: string, dir: string): string {
  const root = join(dir, 'baseline-build');
  console.log(`building the baseline ${rev} in ${root}`);
  run('mkdir', ['-p', root]);
  const archive = spawnSync('sh', ['-c', `git archive ${JSON.stringify(rev)} | tar -x -C ${JSON.stringify(root)}`], { cwd: ROOT, stdio: 'inherit' });
  if (archive.status !== 0) throw new Error(`BENCH_BASELINE=${rev}: git archive failed; is it a revision of this repository?`);
  const npm = (args: string[]) => {
    const r = spawnSync('npm', args, { cwd: root, stdio: 'inherit' });
    if (r.status !== 0) throw new Error(`baseline: npm ${args.join(' ')} failed`);
  };
  npm(['ci', '--no-audit', '--no-fund']);
  npm(['run', 'build']);
  return root;
}

/**
 * One gateway per route under `node --cpu-prof`, loaded by wrk like a measured run; the profile
 * is written when the gateway exits on SIGTERM, kept in bench/results/ for DevTools, and summarised.
 */
async function profile(setup: Setup): Promise<void> {
  const { o, pin, dir, upstreamPort, redisServer } = setup;
  const results = join(ROOT, 'bench', 'results');
  await mkdir(results, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
  const secret = randomBytes(32).toString('hex');
  const token = await signToken(secret);
  const redis = await startRedis(redisServer, cpuArg(pin.load));
  setup.upstreamPids.push(redis.child.pid!);
  // With BENCH_TOKENS > 1 the authenticated profile rotates tokens, so it shows full verifications.
  const rotation = o.tokens > 1 ? await tokenRotationScript(dir, secret, o.tokens) : undefined;
  const bearer = rotation === undefined ? [`Authorization: Bearer ${token}`] : [];
  const runs: Array<{ key: string; path: string; headers: string[]; script: string | undefined; deployed: boolean }> = [
    { key: 'plain', path: '/plain', headers: [], script: undefined, deployed: false },
    { key: 'authed', path: '/authed', headers: bearer, script: rotation, deployed: false },
    { key: 'deployed', path: '/records', headers: bearer, script: rotation, deployed: true },
  ];
  const only = process.env.BENCH_PROFILE?.split(',').map((k) => k.trim());
  // The Node ceiling under the same profiler, so that what the gateway adds to it shows.
  if (only?.includes('raw')) {
    ensurePeers(ROOT);
    const name = `raw-${stamp}.cpuprofile`;
    const peer = await startPeer(ROOT, 'raw', { upstream: `http://127.0.0.1:${upstreamPort}`, secret, redisUrl: `redis://127.0.0.1:${redis.port}` }, cpuArg(pin.proxy), ['--cpu-prof', '--cpu-prof-dir', results, '--cpu-prof-name', name]);
    const target: Target = { key: 'raw', label: PEERS.raw.label, url: `http://127.0.0.1:${peer.port}/`, headers: [], accessLog: null, pids: [peer.child.pid!] };
    if (o.warmup > 0) await measure(target, o.warmup, setup);
    const s = await measure(target, o.seconds, setup);
    await stop(peer.child, 30_000);
    const file = join(results, name);
    console.log(`\n${describeSample(target.label, s)}\n${formatSummary(`${target.label}, profile ${file}`, summariseProfile(JSON.parse(await readFile(file, 'utf8')) as CpuProfile))}`);
  }
  for (const { key, path, headers, script, deployed } of runs) {
    if (only !== undefined && !only.includes(key)) continue;
    const name = `gateway-${key}-${stamp}.cpuprofile`;
    const gw = await startGateway(ROOT, dir, upstreamPort, secret, {
      cpu: cpuArg(pin.proxy),
      name: `profile-${key}`,
      nodeArgs: ['--cpu-prof', '--cpu-prof-dir', results, '--cpu-prof-name', name],
      ...(deployed ? { redisUrl: `redis://127.0.0.1:${redis.port}`, audit: true } : {}),
    });
    const label = `gateway ${path}${deployed ? ' as deployed' : ''}${script === undefined ? '' : `, ${o.tokens} tokens`}`;
    const target: Target = { key: 'gateway', label, url: `http://127.0.0.1:${gw.port}${path}`, headers, script, accessLog: gw.log, pids: [gw.child.pid!] };
    if (script === undefined) await preflight([target]);
    if (o.warmup > 0) await measure(target, o.warmup, setup);
    const s = await measure(target, o.seconds, setup);
    await stop(gw.child, 30_000);
    const file = join(results, name);
    const summary = summariseProfile(JSON.parse(await readFile(file, 'utf8')) as CpuProfile);
    console.log(`\n${describeSample(target.label, s)}\n${formatSummary(`${target.label}, profile ${file}`, summary)}`);
  }
}

/** Other work on the machine skews every row; say so before spending minutes on a run. */
async function warnIfBusy(pin: Pinning): Promise<void> {
  const before = snapshot();
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  const after = snapshot();
  for (const cpu of [pin.load, pin.proxy]) {
    const busy = cpu === null ? null : (coreUse(before, after, cpu, 0)?.busy ?? null);
    if (busy !== null && busy > 0.1) console.log(`WARNING: CPU ${cpu} was ${Math.round(busy * 100)}% busy before the run started; other work on the machine will skew the results`);
  }
}

async function cleanUp(): Promise<void> {
  await stopAll();
  if (tempDir !== null) await rm(tempDir, { recursive: true, force: true });
}

async function main(): Promise<void> {
  const o = options();
  const { nginx, redisServer } = ensureTools();
  const pin = pinning();
  const facts = machineFacts(ROOT, nginx, allowedCpus().length);
  // Keep the orchestrator off the proxy's core as well.
  if (pin.load !== null) spawnSync('taskset', ['-a', '-p', '-c', String(pin.load), String(process.pid)], { stdio: 'ignore' });

  run('npm', ['run', 'build']);
  if (!o.profile && !o.soak) ensurePeers(ROOT);
  console.log(`\n${formatFacts(facts)}\n${describePinning(pin)}\n${settings(o)}`);
  await warnIfBusy(pin);
  console.log('access logs: nginx proxy -> JSON lines to a file in the temp dir (buffer=4k flush=250ms); gateway LOG_LEVEL=INFO, stdout -> a file in the temp dir; upstream nginx: access_log off');

  const dir = await mkdtemp(join(tmpdir(), 'gw-bench-'));
  tempDir = dir;
  // nginx workers drop to an unprivileged user when started as root; they must reach the dir.
  await chmod(dir, 0o755);
  try {
    const upstreamPort = await freePort();
    const upstream = await startNginx(nginx, dir, 'upstream', upstreamConf(dir, upstreamPort), cpuArg(pin.load), `http://127.0.0.1:${upstreamPort}/`);
    const baselineRoot = o.baseline === null || o.profile || o.soak ? null : buildBaseline(o.baseline, dir);
    if (baselineRoot !== null) await mkdir(join(dir, 'baseline'), { recursive: true });
    const setup: Setup = { o, pin, facts, dir, baselineRoot, nginx, redisServer, upstreamPort, upstreamPids: processTree(upstream.pid!) };
    if (o.profile) await profile(setup);
    else if (o.soak) await soak(setup);
    else await compare(setup);
  } finally {
    await cleanUp();
  }
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: stopping every process the benchmark started`);
    void cleanUp().finally(() => process.exit(130));
  });
}

main().catch(async (err: unknown) => {
  console.error(`\nbench failed: ${err instanceof Error ? err.message : String(err)}`);
  await cleanUp();
  process.exit(1);
});
