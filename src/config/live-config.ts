import type { UpstreamRegistry } from '../upstream/registry.js';
import { compileConfig, type ChainBuilder, type CompiledConfig } from './compile.js';
import type { Env } from './env.js';
import type { RoutesFile } from './routes-schema.js';

/**
 * The routes in force. A reload prepares the new file's services, compiles the whole file (every
 * route with its chain), and only then swaps it in with one assignment, in the same tick as the
 * services go live: a request sees the old config or the new one, never a mix, and one already
 * routed keeps its route and chain.
 */
export class LiveConfig {
  private compiled!: CompiledConfig;
  private file!: RoutesFile;

  private constructor(
    private readonly env: Env,
    private readonly upstreams: UpstreamRegistry,
    private readonly chainFor: ChainBuilder,
    /** Why no config may be swapped in any more (shutting down), or null. */
    private readonly closed: () => string | null,
  ) {}

  static async create(file: RoutesFile, env: Env, upstreams: UpstreamRegistry, chainFor: ChainBuilder, closed: () => string | null): Promise<LiveConfig> {
    const live = new LiveConfig(env, upstreams, chainFor, closed);
    await live.swapIn(file);
    return live;
  }

  /** The routes in force now (route-match and the preflight read it once per request). */
  readonly current = (): CompiledConfig => this.compiled;

  /** The routes file the routes in force were compiled from. */
  readonly currentFile = (): RoutesFile => this.file;

  /** Compiles and swaps in a validated file; throws to refuse it, and the running config stays. */
  readonly swapIn = async (file: RoutesFile): Promise<void> => {
    const plan = await this.upstreams.prepare(file.services);
    let next: CompiledConfig;
    try {
      next = compileConfig(file, this.env, plan.services, this.chainFor);
    } catch (err) {
      this.upstreams.discard(plan);
      throw err;
    }
    const reason = this.closed();
    if (reason !== null) {
      this.upstreams.discard(plan);
      throw new Error(reason);
    }
    this.compiled = next;
    this.file = file;
    this.upstreams.commit(plan);
  };
}
