/**
 * Holds this process's event loop for `ms`, as a long collection or a burst of work would: no
 * timer fires, no socket is read and no immediate runs until it ends.
 */
export function stallEventLoop(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}
