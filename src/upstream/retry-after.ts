/**
 * Retry-After of the gateway's overload refusals (the door's, the breaker's), taken in turn:
 * clients refused together (a storm) come back spread over three seconds rather than all in the
 * same one.
 */
export const RETRY_AFTER_SPREAD = [1, 2, 3].map((seconds) => Object.freeze({ 'retry-after': String(seconds) }));
