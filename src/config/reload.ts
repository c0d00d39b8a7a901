import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import type { Logger } from '../observability/logger.js';
import { ConfigError, parseRoutesFile } from './load.js';
import type { RoutesFile } from './routes-schema.js';

/** Editors and config maps write a file in several steps; the reload waits for them to settle. */
const SETTLE_MS = 150;

export type ReloadResult = { ok: true; changed: boolean } | { ok: false; problems: string[] };

/**
 * Reloads the routes file on request (SIGHUP) or when it changes on disk. A new file is read,
 * validated and compiled in full before anything changes; an invalid one is refused, logged
 * with its problems, and the running config stays. Reloads run one at a time.
 */
export class RoutesReloader {
  private watcher: FSWatcher | null = null;
  private debounce: NodeJS.Timeout | null = null;
  private running: Promise<ReloadResult> | null = null;
  private again = false;
  private lastText: string | null = null;

  constructor(
    private readonly file: string,
    private readonly source: NodeJS.ProcessEnv,
    /** Compiles and swaps in a validated file; throws to refuse it. */
    private readonly apply: (routes: RoutesFile) => Promise<void>,
    private readonly logger: Logger,
    private readonly onResult: (ok: boolean, problems?: readonly string[]) => void,
  ) {}

  /** Watches the file's folder, not the file: a config map swaps a symlink, an editor renames over it. */
  watch(initialText?: string): void {
    this.lastText = initialText ?? null;
    const name = basename(this.file);
    try {
      this.watcher = watch(dirname(this.file), { persistent: false }, (_event, changed) => {
        if (changed !== null && changed !== name && changed !== '..data') return;
        if (this.debounce !== null) clearTimeout(this.debounce);
        this.debounce = setTimeout(() => {
          this.debounce = null;
          void this.reload(true);
        }, SETTLE_MS);
      });
      this.watcher.on('error', (err) => this.logger.warn({ err, routes_file: this.file }, 'cannot watch the routes file; reload with SIGHUP'));
    } catch (err) {
      this.logger.warn({ err, routes_file: this.file }, 'cannot watch the routes file; reload with SIGHUP');
    }
  }

  close(): void {
    this.watcher?.close();
    this.watcher = null;
    if (this.debounce !== null) clearTimeout(this.debounce);
  }

  /**
   * Reloads now, or right after the reload under way. `onlyIfChanged` skips a file whose text
   * is what is already running (a watcher fires for writes that change nothing).
   */
  async reload(onlyIfChanged = false): Promise<ReloadResult> {
    if (this.running !== null) {
      this.again = true;
      return this.running;
    }
    this.running = this.run(onlyIfChanged);
    try {
      return await this.running;
    } finally {
      this.running = null;
      if (this.again) {
        this.again = false;
        void this.reload(true);
      }
    }
  }

  private async run(onlyIfChanged: boolean): Promise<ReloadResult> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      // Mid-swap (a rename or a symlink flip) the file can be missing for a moment.
      return this.refuse([`cannot read ${this.file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`]);
    }
    if (onlyIfChanged && text === this.lastText) return { ok: true, changed: false };
    let routes: RoutesFile;
    try {
      routes = parseRoutesFile(text, this.source);
      await this.apply(routes);
    } catch (err) {
      if (err instanceof ConfigError) return this.refuse(err.problems);
      return this.refuse([`the new config could not be compiled: ${(err as Error).message}`]);
    }
    this.lastText = text;
    this.onResult(true);
    this.logger.info({ routes_file: this.file, routes: routes.routes.length, services: Object.keys(routes.services).length }, 'routes reloaded');
    return { ok: true, changed: true };
  }

  private refuse(problems: string[]): ReloadResult {
    this.onResult(false, problems);
    this.logger.error({ routes_file: this.file, problems }, 'routes file refused; the running config stays');
    return { ok: false, problems };
  }
}
