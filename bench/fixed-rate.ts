import { Pool } from 'undici';

export interface FixedRateOptions {
  /** Requests per second, sent on schedule whatever the answers do (an open loop). */
  rate: number;
  seconds: number;
  connections: number;
  /** Header sets used in turn, one per request (a single set: the same headers on every request). */
  headers: ReadonlyArray<Record<string, string>>;
}

export interface FixedRateResult {
  sent: number;
  failed: number;
  /** Latency percentiles in ms, each measured from the moment the request was due, not sent. */
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/**
 * A fixed request rate, like `wrk2 -R` or `hey -q`: request i is due at start + i / rate, and its
 * latency runs from then. A proxy that stalls makes the requests queued behind the stall late,
 * and that lateness is counted (no coordinated omission). Runs in the benchmark's own process,
 * on the load core.
 */
export async function runFixedRate(url: string, o: FixedRateOptions): Promise<FixedRateResult> {
  const { origin, pathname, search } = new URL(url);
  const path = pathname + search;
  const pool = new Pool(origin, { connections: o.connections });
  const total = Math.round(o.rate * o.seconds);
  const latencies = new Float64Array(total);
  let sent = 0;
  let done = 0;
  let failed = 0;
  const start = performance.now();
  await new Promise<void>((resolve) => {
    const send = (i: number, due: number) => {
      pool.request({ method: 'GET', path, headers: o.headers[i % o.headers.length] }).then(
        async (res) => {
          await res.body.dump();
          if (res.statusCode !== 200) failed++;
          latencies[i] = performance.now() - due;
        },
        () => {
          failed++;
          latencies[i] = performance.now() - due;
        },
      ).finally(() => {
        if (++done === total) resolve();
      });
    };
    const tick = () => {
      const due = Math.min(total, Math.floor(((performance.now() - start) * o.rate) / 1000) + 1);
      while (sent < due) {
        send(sent, start + (sent * 1000) / o.rate);
        sent++;
      }
      if (sent < total) setTimeout(tick, 1);
    };
    tick();
  });
  await pool.close();
  latencies.sort();
  return { sent: total, failed, p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99), p999Ms: percentile(latencies, 99.9) };
}
