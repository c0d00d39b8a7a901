/**
 * npm run bench [-- --write] [-- --profile]
 *
 * Direct upstream vs nginx proxy_pass vs the gateway (public route, JWT-authenticated route with
 * in-memory stores, and the same with Redis for revocations and rate limits), measured with wrk
 * in interleaved rounds on one machine. See BENCHMARKS.md.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { appendFile, chmod, mkdir, mkdtemp, readFile, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { coreUse, processTree, snapshot } from './cpu.js';
import { signToken, startGateway, tokenRotationScript } from './gateway.js';
import { proxyConf, startNginx, upstreamConf, UPSTREAM_BODY } from './nginx.js';
import { startRedis } from './redis.js';
import { allowedCpus, freePort, stop, stopAll, which } from './procs.js';
import { formatSummary, summarise as summariseProfile, type CpuProfile } from './profile.js';
import { formatFacts, machineFacts, markdownTable, summarise, type Facts, type Row, type Sample, type Summary } from './report.js';
import { runWrk } from './wrk.js';

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const TARGET_PLAIN = 0.2;
const TARGET_AUTH = 0.15;
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
  write: boolean;
  profile: boolean;
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
  const unknown = flags.filter((f) => f !== '--write' && f !== '--profile');
  if (unknown.length > 0) throw new Error(`unknown argument ${unknown.join(' ')}; the flags are --write and --profile`);
  return {
    seconds: int('BENCH_DURATION', 10, 1),
    warmup: int('BENCH_WARMUP', 3, 0),
    rounds: int('BENCH_ROUNDS', 3, 1),
    connections: int('BENCH_CONNECTIONS', 64, 1),
    // One wrk thread: wrk shares its core with the upstream, more threads would only contend.
    threads: int('BENCH_THREADS', 1, 1),
    // On a shared host, a run that other processes skewed can be repeated instead of counted.
    retries: int('BENCH_RETRIES', 0, 0),
    // More than 1 adds a row whose requests rotate through that many tokens (see BENCHMARKS.md).
    tokens: int('BENCH_TOKENS', 1, 1),
    write: flags.includes('--write'),
    profile: flags.includes('--profile'),
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

type TargetKey = 'direct' | 'nginx' | 'gateway' | 'gateway-auth' | 'gateway-auth-redis' | 'gateway-auth-rotating';

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
  for (const authed of targets.filter((t) => t.key.startsWith('gateway-auth') && t.script === undefined)) {
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
  const r = await runWrk(t.url, { connections: o.connections, seconds, threads: o.threads, cpu: cpuArg(pin.load), headers: t.headers, script: t.script });
  const after = snapshot(groups);
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
  };
}

const isSkewed = (s: Sample): s is Sample & { foreign: number } => s.foreign !== null && s.foreign > FOREIGN_LIMIT;

function describeSample(label: string, s: Sample): string {
  const cpu = [
    s.proxyCpu === null ? null : `proxy CPU ${Math.round(s.proxyCpu * 100)}%`,
    s.loadBusy === null ? null : `wrk+upstream core ${Math.round(s.loadBusy * 100)}%`,
    isSkewed(s) ? `SKEWED: other processes took ${Math.round(s.foreign * 100)}% of a core` : null,
  ].filter(Boolean);
  return `  ${label.padEnd(34)} ${Math.round(s.rps).toString().padStart(7)} req/s  p50 ${s.p50Ms.toFixed(3)} ms  p99 ${s.p99Ms.toFixed(3)} ms  ${cpu.join(', ')}`;
}

function settings(o: Options): string {
  const rotation = o.tokens > 1 ? `; the rotating-token row cycles through ${o.tokens} tokens` : '';
  return `load: wrk with ${o.threads} thread(s), ${o.connections} connections, ${o.seconds} s per run, ${o.rounds} rounds (order rotated each round), ${o.warmup} s warm-up per target first; medians reported${rotation}`;
}

async function compare(setup: Setup): Promise<void> {
  const { o, pin, facts, dir, nginx, redisServer, upstreamPort } = setup;
  const proxyPort = await freePort();
  const proxy = await startNginx(nginx, dir, 'proxy', proxyConf(dir, proxyPort, upstreamPort, o.connections), cpuArg(pin.proxy), `http://127.0.0.1:${proxyPort}/plain`);
  const secret = randomBytes(32).toString('hex');
  const gw = await startGateway(ROOT, dir, upstreamPort, secret, cpuArg(pin.proxy));
  // Redis is a dependency like the upstream: it runs on the load core, outside the proxy's CPU.
  const redis = await startRedis(redisServer, cpuArg(pin.load));
  setup.upstreamPids.push(redis.child.pid!);
  const gwRedis = await startGateway(ROOT, dir, upstreamPort, secret, cpuArg(pin.proxy), [], `redis://127.0.0.1:${redis.port}`);
  const token = await signToken(secret);
  const base = setup.baselineRoot === null ? null : {
    gw: await startGateway(setup.baselineRoot, join(dir, 'baseline'), upstreamPort, secret, cpuArg(pin.proxy)),
    gwRedis: await startGateway(setup.baselineRoot, join(dir, 'baseline'), upstreamPort, secret, cpuArg(pin.proxy), [], `redis://127.0.0.1:${redis.port}`),
  };

  const targets: Target[] = [
    { key: 'direct', label: 'direct (wrk -> upstream)', url: `http://127.0.0.1:${upstreamPort}/`, headers: [], accessLog: null, pids: [] },
    { key: 'nginx', label: 'nginx proxy_pass', url: `http://127.0.0.1:${proxyPort}/plain`, headers: [], accessLog: join(dir, 'proxy.access.log'), pids: processTree(proxy.pid!) },
    { key: 'gateway', label: 'gateway (public route)', url: `http://127.0.0.1:${gw.port}/plain`, headers: [], accessLog: gw.log, pids: [gw.child.pid!] },
    {
      key: 'gateway-auth',
      label: 'gateway + JWT auth',
      url: `http://127.0.0.1:${gw.port}/authed`,
      headers: [`Authorization: Bearer ${token}`],
      accessLog: gw.log,
      pids: [gw.child.pid!],
    },
    {
      key: 'gateway-auth-redis',
      label: 'gateway + JWT + Redis (revocation, limit)',
      url: `http://127.0.0.1:${gwRedis.port}/authed`,
      headers: [`Authorization: Bearer ${token}`],
      accessLog: gwRedis.log,
      pids: [gwRedis.child.pid!],
    },
  ];
  if (base !== null) {
    const suffix = ` (baseline ${o.baseline})`;
    targets.push(
      { key: 'gateway@baseline', label: `gateway (public route)${suffix}`, url: `http://127.0.0.1:${base.gw.port}/plain`, headers: [], accessLog: base.gw.log, pids: [base.gw.child.pid!] },
      { key: 'gateway-auth@baseline', label: `gateway + JWT auth${suffix}`, url: `http://127.0.0.1:${base.gw.port}/authed`, headers: [`Authorization: Bearer ${token}`], accessLog: base.gw.log, pids: [base.gw.child.pid!] },
      {
        key: 'gateway-auth-redis@baseline',
        label: `gateway + JWT + Redis (revocation, limit)${suffix}`,
        url: `http://127.0.0.1:${base.gwRedis.port}/authed`,
        headers: [`Authorization: Bearer ${token}`],
        accessLog: base.gwRedis.log,
        pids: [base.gwRedis.child.pid!],
      },
    );
  }
  if (o.tokens > 1) {
    targets.push({
      key: 'gateway-auth-rotating',
      label: `gateway + JWT auth, ${o.tokens} tokens`,
      url: `http://127.0.0.1:${gw.port}/authed`,
      headers: [],
      script: await tokenRotationScript(dir, secret, o.tokens),
      accessLog: gw.log,
      pids: [gw.child.pid!],
    });
  }
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
  const table = markdownTable(summaries, get('direct'), get('nginx'));
  const nginxRow = get('nginx');
  // Requests per CPU-second of the proxy: fair even when wrk's core, not the proxy, was the limit.
  const verdict = (s: Summary, target: number) => {
    const raw = s.rps / nginxRow.rps;
    const perCpu = s.proxyCpu !== null && nginxRow.proxyCpu !== null ? raw * (nginxRow.proxyCpu / s.proxyCpu) : null;
    const r = perCpu ?? raw;
    const basis = perCpu === null ? 'req/s, both on one core' : `per proxy CPU-second (${raw.toFixed(3)} by req/s)`;
    return `${s.label}: ${r.toFixed(3)} x nginx ${basis}; target >= ${target}: ${r >= target ? 'met' : 'NOT met'}`;
  };
  const all = rows.flatMap((r) => r.samples);
  const skewed = all.filter(isSkewed).length;
  const verdicts = [
    verdict(get('gateway'), TARGET_PLAIN),
    verdict(get('gateway-auth'), TARGET_AUTH),
    verdict(get('gateway-auth-redis'), TARGET_AUTH),
    ...(base === null ? [] : (['gateway', 'gateway-auth', 'gateway-auth-redis'] as const).map((k) => againstBaseline(get(k), get(`${k}@baseline`), o.baseline!))),
    `runs skewed by other processes (> ${FOREIGN_LIMIT * 100}% of either core): ${skewed} of ${all.length}`,
  ];

  console.log(`\n${table}\n\n${verdicts.join('\n')}`);
  if (o.write) {
    const section = [
      `\n### Run of ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC\n`,
      ...formatFacts(facts).split('\n').map((l) => `- ${l}`),
      `- ${settings(o)}`,
      `- ${describePinning(pin).replace(/\n\s+/g, ' ')}`,
      '',
      table,
      '',
      ...verdicts.map((v) => `- ${v}`),
      '',
    ].join('\n');
    await appendFile(join(ROOT, 'BENCHMARKS.md'), section);
    console.log('\nappended to BENCHMARKS.md');
  }
}

/**
 * A row against its twin on the baseline build: requests per proxy CPU-second, with the noise of
 * the two rows (each one's spread over the rounds) to read the difference against.
 */
function againstBaseline(now: Summary, before: Summary, rev: string): string {
  const perCpu = (s: Summary) => (s.proxyCpu === null || s.proxyCpu === 0 ? s.rps : s.rps / s.proxyCpu);
  const ratio = perCpu(now) / perCpu(before);
  const noise = Math.max(now.spread, before.spread) * 50;
  return `${now.label}: ${ratio.toFixed(3)} x baseline ${rev} per proxy CPU-second (${((ratio - 1) * 100).toFixed(1)}%; the noise of this pair of rows: ±${noise.toFixed(1)}%)`;
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
  const { o, pin, dir, upstreamPort } = setup;
  const results = join(ROOT, 'bench', 'results');
  await mkdir(results, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
  const secret = randomBytes(32).toString('hex');
  const token = await signToken(secret);
  // With BENCH_TOKENS > 1 the authenticated profile rotates tokens, so it shows full verifications.
  const rotation = o.tokens > 1 ? await tokenRotationScript(dir, secret, o.tokens) : undefined;
  const runs: Array<{ key: string; path: string; headers: string[]; script: string | undefined }> = [
    { key: 'plain', path: '/plain', headers: [], script: undefined },
    { key: 'authed', path: '/authed', headers: rotation === undefined ? [`Authorization: Bearer ${token}`] : [], script: rotation },
  ];
  for (const { key, path, headers, script } of runs) {
    const name = `gateway-${key}-${stamp}.cpuprofile`;
    const gw = await startGateway(ROOT, dir, upstreamPort, secret, cpuArg(pin.proxy), ['--cpu-prof', '--cpu-prof-dir', results, '--cpu-prof-name', name]);
    const label = `gateway ${path}${script === undefined ? '' : `, ${o.tokens} tokens`}`;
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
    const baselineRoot = o.baseline === null || o.profile ? null : buildBaseline(o.baseline, dir);
    if (baselineRoot !== null) await mkdir(join(dir, 'baseline'), { recursive: true });
    const setup: Setup = { o, pin, facts, dir, baselineRoot, nginx, redisServer, upstreamPort, upstreamPids: processTree(upstream.pid!) };
    if (o.profile) await profile(setup);
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
