import { z } from 'zod';
import type { RateLimitDecision } from '../stores/rate-limit-store.js';

/** The spec's window: requests per minute. */
export const RATE_WINDOW_MS = 60_000;

/** The routes-file slice: a route's own budget, counted in its own key. */
export const rateLimitSchema = {
  rateLimit: z
    .strictObject({
      perMinute: z.number().int().min(1).max(1_000_000),
      /** While the shared store is down: false = limit per process, true = answer 503. */
      failClosed: z.boolean().default(false),
    })
    .optional(),
};

/** A route's limit, compiled once: the names and header values the hot path only copies. */
export interface RateLimitPolicy {
  readonly perMinute: number;
  /** The route has its own limit, counted in its own key, rather than the user's default budget. */
  readonly ownKey: boolean;
  readonly failClosed: boolean;
  readonly policyName: string;
  /** `RateLimit-Policy` value, made once. */
  readonly policyHeader: string;
}

/**
 * `defaultPerMinute`: the budget of a route without its own: RATE_LIMIT_PER_MINUTE per user on
 * authenticated routes, RATE_LIMIT_PER_ADDRESS_PER_MINUTE per client address on public ones.
 */
export function rateLimitPolicy(routeName: string, own: z.output<(typeof rateLimitSchema)['rateLimit']>, defaultPerMinute: number): RateLimitPolicy {
  const perMinute = own?.perMinute ?? defaultPerMinute;
  const policyName = own !== undefined ? routeName : 'default';
  return Object.freeze({
    perMinute,
    ownKey: own !== undefined,
    failClosed: own?.failClosed ?? false,
    policyName,
    policyHeader: `"${policyName}";q=${perMinute};w=60`,
  });
}

/** IETF RateLimit header value (draft-ietf-httpapi-ratelimit-headers): remaining and reset seconds. */
export function rateLimitHeader(policy: string, d: RateLimitDecision): string {
  return `"${policy}";r=${d.remaining};t=${Math.ceil(d.resetMs / 1000)}`;
}
