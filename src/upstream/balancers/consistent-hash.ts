import { fnv1a, mix, type Instance } from '../instance.js';
import { eligible, type Balancer } from './balancer.js';

/**
 * Rendezvous hashing: a key keeps its instance while that instance is in rotation; only its keys
 * move when it leaves. The service sends requests without a key (no user, no header) round robin.
 */
export class ConsistentHash implements Balancer {
  pick(list: readonly Instance[], key: string | undefined, now: number, tried: readonly Instance[] | null): Instance | null {
    const keyHash = fnv1a(key ?? '');
    let best: Instance | null = null;
    let bestScore = -Infinity;
    for (const inst of list) {
      if (!eligible(inst, now, tried)) continue;
      const u = (mix(keyHash ^ inst.hash) + 1) / 4_294_967_297;
      const score = inst.weight / -Math.log(u);
      if (score > bestScore) {
        bestScore = score;
        best = inst;
      }
    }
    return best;
  }
}
