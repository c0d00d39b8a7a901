import type { Instance } from '../instance.js';
import { eligible, type Balancer } from './balancer.js';

/** Each instance in turn, skipping the ones out of rotation. */
export class RoundRobin implements Balancer {
  private cursor = 0;

  pick(list: readonly Instance[], _key: string | undefined, now: number, tried: readonly Instance[] | null): Instance | null {
    const n = list.length;
    for (let k = 0; k < n; k++) {
      const index = (this.cursor + k) % n;
      const inst = list[index]!;
      if (eligible(inst, now, tried)) {
        this.cursor = (index + 1) % n;
        return inst;
      }
    }
    return null;
  }
}
