/**
 * Rate limiting uses GCRA (the generic cell rate algorithm): each key stores one number, its
 * theoretical arrival time (TAT). A limit of L per window W admits a burst of L, then one request
 * every W/L. Error bound: in any interval of length t, at most L + floor(t * L / W) requests pass.
 * A burst straddling a fixed-window boundary therefore gets L (plus what the elapsed time earned),
 * never the 2L that fixed windows allow.
 */
export interface RateLimitDecision {
  allowed: boolean;
  limit: number;
  /** Requests still admissible right now. */
  remaining: number;
  /** Milliseconds until the full quota is available again. */
  resetMs: number;
  /** Milliseconds until the next request would be admitted (0 when allowed). */
  retryAfterMs: number;
}

export interface RateLimitStore {
  consume(key: string, limit: number, windowMs: number): Promise<RateLimitDecision>;
}

/** One GCRA step, shared by the in-memory store and mirrored by the Redis script. */
export function gcra(storedTat: number | undefined, now: number, limit: number, windowMs: number): { decision: RateLimitDecision; tat: number | null } {
  const interval = windowMs / limit;
  const tat = storedTat === undefined || storedTat < now ? now : storedTat;
  const newTat = tat + interval;
  const allowAt = newTat - windowMs;
  if (now < allowAt) {
    return {
      decision: { allowed: false, limit, remaining: 0, resetMs: Math.ceil(tat - now), retryAfterMs: Math.ceil(allowAt - now) },
      tat: null,
    };
  }
  return {
    decision: {
      allowed: true,
      limit,
      remaining: Math.max(0, Math.floor((windowMs - (newTat - now)) / interval)),
      resetMs: Math.ceil(newTat - now),
      retryAfterMs: 0,
    },
    tat: newTat,
  };
}
