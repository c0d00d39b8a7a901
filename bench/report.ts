import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { release } from 'node:os';

export interface Facts {
  gateway: string;
  cpu: string;
  cores: number;
  kernel: string;
  node: string;
  nginx: string;
  wrk: string;
}

function firstLine(command: string, args: string[]): string {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  // nginx -v and wrk -v print to stderr, and wrk exits non-zero after its usage text.
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.split('\n')[0]!.trim() || 'unknown';
}

/** The commit measured, and whether the working tree's gateway code differs from it. */
function gatewayRevision(root: string): string {
  const head = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' });
  if (head.status !== 0) return 'unknown (not a git checkout)';
  const dirty = spawnSync('git', ['status', '--porcelain', '--', 'src', 'package.json', 'package-lock.json'], { cwd: root, encoding: 'utf8' });
  return `commit ${head.stdout.trim()}${dirty.stdout.trim() === '' ? '' : ' plus uncommitted changes under src/'}`;
}

export function machineFacts(root: string, nginx: string, cores: number): Facts {
  let cpu = 'unknown';
  try {
    cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? cpu;
  } catch {
    // not Linux
  }
  return {
    gateway: gatewayRevision(root),
    cpu,
    cores,
    kernel: release(),
    node: process.version,
    nginx: firstLine(nginx, ['-v']).replace(/^nginx version:\s*/, ''),
    wrk: firstLine('wrk', ['-v']).replace(/\s*Copyright.*$/, ''),
  };
}

export function formatFacts(f: Facts): string {
  return [`Gateway: ${f.gateway}`, `CPU: ${f.cpu}, ${f.cores} cores usable`, `Kernel: ${f.kernel}`, `Node: ${f.node}`, `nginx: ${f.nginx}`, `wrk: ${f.wrk}`].join('\n');
}

/** One wrk run of one target in one round. */
export interface Sample {
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** Share of its core the proxy under test used (null: no proxy, or unpinned). */
  proxyCpu: number | null;
  /** Busy share of the core wrk and the upstream share. */
  loadBusy: number | null;
  /** Share of the proxy's core used by processes outside the benchmark. */
  foreign: number | null;
  /** Highest resident memory of the proxy's processes seen during the run (MB; null: no proxy). */
  rssMb: number | null;
}

export interface Row {
  key: string;
  label: string;
  samples: Sample[];
}

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function medianOf(row: Row, pick: (s: Sample) => number | null): number | null {
  const values = row.samples.map(pick).filter((v): v is number => v !== null);
  return values.length === 0 ? null : median(values);
}

export interface Summary {
  label: string;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** (max - min) / median of req/s over the rounds. */
  spread: number;
  proxyCpu: number | null;
  loadBusy: number | null;
  /** The highest RSS of any round. */
  peakRssMb: number | null;
}

export function summarise(row: Row): Summary {
  const rps = medianOf(row, (s) => s.rps)!;
  const all = row.samples.map((s) => s.rps);
  return {
    label: row.label,
    rps,
    p50Ms: medianOf(row, (s) => s.p50Ms)!,
    p99Ms: medianOf(row, (s) => s.p99Ms)!,
    spread: (Math.max(...all) - Math.min(...all)) / rps,
    proxyCpu: medianOf(row, (s) => s.proxyCpu),
    loadBusy: medianOf(row, (s) => s.loadBusy),
    peakRssMb: row.samples.some((s) => s.rssMb !== null) ? Math.max(...row.samples.map((s) => s.rssMb ?? 0)) : null,
  };
}

/** Requests per CPU-second of the proxy: fair even when wrk's core, not the proxy, was the limit. */
export function perCpu(s: Summary): number | null {
  return s.proxyCpu === null || s.proxyCpu === 0 ? null : s.rps / s.proxyCpu;
}

/** `s` per proxy CPU-second relative to `reference` per proxy CPU-second (by req/s when unpinned). */
export function relative(s: Summary, reference: Summary): number {
  const a = perCpu(s);
  const b = perCpu(reference);
  return a !== null && b !== null ? a / b : s.rps / reference.rps;
}

const ms = (v: number) => (Math.abs(v) < 1 ? `${(v * 1000).toFixed(0)} µs` : `${v.toFixed(2)} ms`);
const pct = (v: number | null) => (v === null ? '–' : `${Math.round(v * 100)}%`);
const ratio = (v: number) => v.toFixed(2);

const mb = (v: number | null) => (v === null ? '–' : `${Math.round(v)} MB`);

/**
 * The throughput table. Ratios divide req/s by the CPU each proxy really used, which matters when
 * a proxy did not saturate its core because wrk's core was the limit.
 */
export function markdownTable(rows: readonly Summary[], ceiling: Summary, nginx: Summary): string {
  const lines = [
    '| Target | req/s (median) | spread | p50 | p99 | proxy CPU | wrk+upstream core busy | × Node ceiling per proxy CPU | × nginx per proxy CPU | peak RSS |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const s of rows) {
    const proxied = s.proxyCpu !== null;
    lines.push(
      `| ${s.label} | ${Math.round(s.rps).toLocaleString('en-US')} | ±${(s.spread * 50).toFixed(1)}% | ${ms(s.p50Ms)} | ${ms(s.p99Ms)} | ${pct(s.proxyCpu)} | ${pct(s.loadBusy)} | ${proxied ? ratio(relative(s, ceiling)) : '–'} | ${proxied ? ratio(relative(s, nginx)) : '–'} | ${mb(s.peakRssMb)} |`,
    );
  }
  return lines.join('\n');
}

export interface LatencyRow {
  label: string;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  failed: number;
  peakRssMb: number | null;
}

/** The fixed-rate table: each percentile, and what the proxy adds to the direct call's. */
export function latencyTable(rows: readonly LatencyRow[], direct: LatencyRow): string {
  const added = (v: number, d: number) => (v - d < 0 ? `${ms(v - d)}` : `+${ms(v - d)}`);
  const lines = ['| Target | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | failed | peak RSS |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|'];
  for (const r of rows) {
    const isDirect = r === direct;
    lines.push(
      `| ${r.label} | ${ms(r.p50Ms)} | ${ms(r.p99Ms)} | ${ms(r.p999Ms)} | ${isDirect ? '–' : added(r.p50Ms, direct.p50Ms)} | ${isDirect ? '–' : added(r.p99Ms, direct.p99Ms)} | ${isDirect ? '–' : added(r.p999Ms, direct.p999Ms)} | ${r.failed} | ${mb(r.peakRssMb)} |`,
    );
  }
  return lines.join('\n');
}
