import { readFileSync } from 'node:fs';

/** Jiffies of one CPU: non-idle (irq and softirq included), process time (user+nice+system), all. */
interface CoreTimes {
  busy: number;
  task: number;
  total: number;
}

export interface CpuSnapshot {
  cores: Map<number, CoreTimes>;
  /** user+system jiffies of each watched group of processes (all threads), summed. */
  groups: number[];
}

function read(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/**
 * user+system jiffies of a process. For `self`, the reaped children's too: that is how the CPU of
 * a finished wrk is still counted.
 */
function processJiffies(pid: number | 'self'): number {
  const stat = read(`/proc/${pid}/stat`);
  if (stat === null) return 0;
  // The command name may hold spaces and parentheses; the fields after the last ')' do not.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
  return f[11]! + f[12]! + (pid === 'self' ? f[13]! + f[14]! : 0);
}

/** The pid and every process below it (nginx's master and its workers). */
export function processTree(pid: number): number[] {
  const children = (read(`/proc/${pid}/task/${pid}/children`) ?? '').trim().split(/\s+/).filter(Boolean).map(Number);
  return [pid, ...children.flatMap(processTree)];
}

export function snapshot(groups: ReadonlyArray<ReadonlyArray<number | 'self'>> = []): CpuSnapshot {
  const cores = new Map<number, CoreTimes>();
  for (const line of (read('/proc/stat') ?? '').split('\n')) {
    const m = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (m === null) continue;
    // user nice system idle iowait irq softirq steal (guest time is already inside user)
    const f = m[2]!.trim().split(/\s+/).slice(0, 8).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    cores.set(Number(m[1]), { busy: total - f[3]! - f[4]!, task: f[0]! + f[1]! + f[2]!, total });
  }
  return { cores, groups: groups.map((pids) => pids.reduce((sum: number, pid) => sum + processJiffies(pid), 0)) };
}

export interface CoreUse {
  /** Share of the core that was not idle, 0..1. */
  busy: number;
  /** Share of the core the watched processes used. */
  watched: number;
  /** Process time on the core that the watched processes do not account for: other work. */
  foreign: number;
}

/**
 * How one CPU was used between two snapshots by the given group of processes (the ones pinned
 * there). `foreign` exposes any other workload that ran on that CPU and skewed the run.
 */
export function coreUse(before: CpuSnapshot, after: CpuSnapshot, cpu: number, group: number): CoreUse | null {
  const a = before.cores.get(cpu);
  const b = after.cores.get(cpu);
  if (a === undefined || b === undefined || b.total === a.total) return null;
  const total = b.total - a.total;
  const watched = ((after.groups[group] ?? 0) - (before.groups[group] ?? 0)) / total;
  return { busy: (b.busy - a.busy) / total, watched, foreign: Math.max(0, (b.task - a.task) / total - watched) };
}

/** Resident memory of the processes (VmRSS summed), in MB; null when none is readable. */
export function rssMb(pids: readonly number[]): number | null {
  let kb = 0;
  let found = false;
  for (const pid of pids) {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(read(`/proc/${pid}/status`) ?? '');
    if (m === null) continue;
    kb += Number(m[1]);
    found = true;
  }
  return found ? kb / 1024 : null;
}

/** Samples the processes' RSS every `everyMs` until stopped; `stop` returns the highest seen. */
export function watchRss(pids: readonly number[], everyMs = 200): { stop(): number | null } {
  let peak: number | null = pids.length === 0 ? null : rssMb(pids);
  const timer = pids.length === 0 ? null : setInterval(() => {
    const now = rssMb(pids);
    if (now !== null && (peak === null || now > peak)) peak = now;
  }, everyMs);
  return {
    stop() {
      if (timer !== null) clearInterval(timer);
      const last = pids.length === 0 ? null : rssMb(pids);
      return last !== null && (peak === null || last > peak) ? last : peak;
    },
  };
}
