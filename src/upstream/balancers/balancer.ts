import type { Instance } from '../instance.js';

/**
 * A balancing policy: which instance of a service takes the next try. `tried` holds the
 * instances a retry must avoid; `key` is the affinity key of consistent hashing. A policy keeps
 * its own state (a cursor, running weights) and returns null when no instance is eligible.
 */
export interface Balancer {
  pick(list: readonly Instance[], key: string | undefined, now: number, tried: readonly Instance[] | null): Instance | null;
}

/** In rotation now, and not tried yet by this call. */
export function eligible(inst: Instance, now: number, tried: readonly Instance[] | null): boolean {
  return !inst.unavailable(now) && (tried === null || !tried.includes(inst));
}
