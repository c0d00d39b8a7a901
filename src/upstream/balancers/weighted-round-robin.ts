import type { Instance } from '../instance.js';
import { eligible, type Balancer } from './balancer.js';

/** nginx's smooth weighted round robin: weights honoured without bursts to one instance. */
export class WeightedRoundRobin implements Balancer {
  pick(list: readonly Instance[], _key: string | undefined, now: number, tried: readonly Instance[] | null): Instance | null {
    let best: Instance | null = null;
    let total = 0;
    for (const inst of list) {
      if (!eligible(inst, now, tried)) continue;
      inst.currentWeight += inst.weight;
      total += inst.weight;
      if (best === null || inst.currentWeight > best.currentWeight) best = inst;
    }
    if (best !== null) best.currentWeight -= total;
    return best;
  }
}
