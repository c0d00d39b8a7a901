/** How often the loop's lateness is sampled. */
const TICK_MS = 20;
/** Each tick keeps this share of the delay seen so far: a stall is remembered for a few hundred ms. */
const DECAY = 0.85;

/**
 * How late the event loop runs right now: a timer due every TICK_MS measures by how much it
 * fired late, and the worst recent lateness fades by DECAY per tick. After a stall, the first
 * tick runs before that turn's sockets are read (timers come first in a turn), so the requests
 * that piled up during the stall are judged against it. Cheap enough to read on every request.
 */
export class LoopLag {
  private delay = 0;
  private last = performance.now();
  private readonly timer: NodeJS.Timeout;

  constructor() {
    this.timer = setInterval(() => {
      const now = performance.now();
      const late = Math.max(0, now - this.last - TICK_MS);
      this.last = now;
      this.delay = Math.max(late, this.delay * DECAY);
    }, TICK_MS);
    this.timer.unref();
  }

  /** The recent event-loop delay, in milliseconds. */
  get delayMs(): number {
    return this.delay;
  }

  close(): void {
    clearInterval(this.timer);
  }
}
