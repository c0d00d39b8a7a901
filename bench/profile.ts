/** The parts of a V8 .cpuprofile (the format `node --cpu-prof` writes) that a summary needs. */
interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface Entry {
  name: string;
  ms: number;
  share: number;
}

export interface ProfileSummary {
  totalMs: number;
  /** Self time per function. */
  functions: Entry[];
  /** Self time per package / module: where the CPU goes at a glance. */
  groups: Entry[];
  /** Inclusive time of the gateway's own functions (dist/src): which stage costs what. */
  gateway: Entry[];
}

function shortUrl(url: string): string {
  const nm = url.lastIndexOf('/node_modules/');
  if (nm !== -1) return url.slice(nm + '/node_modules/'.length);
  const src = url.indexOf('/dist/src/');
  if (src !== -1) return url.slice(src + '/dist/'.length);
  return url.replace(/^file:\/\//, '');
}

function groupOf(node: ProfileNode): string {
  const { url, functionName } = node.callFrame;
  if (url === '') return functionName.startsWith('(') ? functionName : '(native)';
  if (url.startsWith('node:')) return url.split('/')[0]!;
  const nm = url.lastIndexOf('/node_modules/');
  if (nm !== -1) {
    const parts = url.slice(nm + '/node_modules/'.length).split('/');
    return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
  }
  if (url.includes('/dist/src/')) return `gateway ${shortUrl(url)}`;
  return url;
}

function functionKey(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame;
  return url === '' ? functionName || '(anonymous)' : `${functionName || '(anonymous)'} ${shortUrl(url)}:${lineNumber + 1}`;
}

function ranked(map: Map<string, number>, totalMs: number, top: number): Entry[] {
  return [...map]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([name, ms]) => ({ name, ms, share: ms / totalMs }));
}

function add(map: Map<string, number>, key: string, ms: number): void {
  map.set(key, (map.get(key) ?? 0) + ms);
}

export function summarise(profile: CpuProfile, top = 20): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

  // A sample lasts until the next one (what DevTools shows); the last one until the profile ends.
  const self = new Map<number, number>();
  let at = profile.startTime;
  const stamps = profile.timeDeltas.map((d) => (at += d));
  profile.samples.forEach((id, i) => {
    const us = (i + 1 < stamps.length ? stamps[i + 1]! : profile.endTime) - stamps[i]!;
    self.set(id, (self.get(id) ?? 0) + Math.max(us, 0) / 1_000);
  });

  const functions = new Map<string, number>();
  const groups = new Map<string, number>();
  const gateway = new Map<string, number>();
  let totalMs = 0;
  for (const [id, ms] of self) {
    const node = byId.get(id)!;
    if (node.callFrame.functionName === '(idle)') continue;
    totalMs += ms;
    add(functions, functionKey(node), ms);
    add(groups, groupOf(node), ms);
    // Each gateway function on the stack is charged once, however deep the recursion.
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur)!;
      if (!n.callFrame.url.includes('/dist/src/')) continue;
      const key = functionKey(n);
      if (!seen.has(key)) add(gateway, key, ms);
      seen.add(key);
    }
  }
  return { totalMs, functions: ranked(functions, totalMs, top), groups: ranked(groups, totalMs, 12), gateway: ranked(gateway, totalMs, 12) };
}

export function formatSummary(title: string, s: ProfileSummary): string {
  const pct = (e: Entry) => `${(e.share * 100).toFixed(1).padStart(5)}%  ${e.ms.toFixed(0).padStart(6)} ms  ${e.name}`;
  return [
    `${title}: ${(s.totalMs / 1_000).toFixed(1)} s of CPU sampled (idle excluded)`,
    '  top self time, by function:',
    ...s.functions.map((e) => `    ${pct(e)}`),
    '  self time, by package / module:',
    ...s.groups.map((e) => `    ${pct(e)}`),
    '  inclusive time of the gateway\'s own functions:',
    ...s.gateway.map((e) => `    ${pct(e)}`),
  ].join('\n');
}
