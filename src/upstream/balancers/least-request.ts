import type { Instance } from '../instance.js';
import { eligible, type Balancer } from './balancer.js';

/** Power of two random choices: the one with fewer requests in flight (per unit of weight). */
export class LeastRequest implements Balancer {
  constructor(private readonly random: () => number = Math.random) {}

  pick(list: readonly Instance[], _key: string | undefined, now: number, tried: readonly Instance[] | null): Instance | null {
    const a = this.randomEligible(list, now, tried, null);
    if (a === null) return null;
    const b = this.randomEligible(list, now, tried, a);
    if (b === null) return a;
    return a.active * b.weight <= b.active * a.weight ? a : b;
  }

  private randomEligible(list: readonly Instance[], now: number, tried: readonly Instance[] | null, not: Instance | null): Instance | null {
    const n = list.length;
    const start = Math.floor(this.random() * n);
    for (let k = 0; k < n; k++) {
      const inst = list[(start + k) % n]!;
      if (inst !== not && eligible(inst, now, tried)) return inst;
    }
    return null;
  }
}
