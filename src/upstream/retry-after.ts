/**
 * Retry-After of the gateway's overload refusals (the door's, the breaker's), taken in turn:
 * clients refused together (a storm) come back spread over three seconds rather than all in the
 * same one.
 */
export const RETRY_AFTER_SPREAD = [1, 2, 3].map((seconds) => Object.freeze({ 'retry-after': String(seconds) }));

let turn = 0;

/** The index into RETRY_AFTER_SPREAD (or a list built alike) of the next refusal. */
export function nextRetryAfterTurn(): number {
  turn = (turn + 1) % RETRY_AFTER_SPREAD.length;
  return turn;
}
