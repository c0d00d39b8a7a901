import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createSecureContext } from 'node:tls';
import { ConfigError } from './errors.js';
import type { Logger } from './observability/logger.js';

export const MIN_TLS_VERSION = 'TLSv1.2';

export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
}

/** Reads the certificate and key and checks that they are a pair, or says which file is wrong. */
export async function readTlsMaterial(certFile: string, keyFile: string): Promise<TlsMaterial> {
  const read = async (file: string, variable: string) => {
    try {
      return await readFile(file);
    } catch (err) {
      throw new ConfigError([`${variable}: cannot read "${file}" (${(err as NodeJS.ErrnoException).code ?? 'error'})`]);
    }
  };
  const [cert, key] = await Promise.all([read(certFile, 'TLS_CERT_FILE'), read(keyFile, 'TLS_KEY_FILE')]);
  try {
    createSecureContext({ cert, key, minVersion: MIN_TLS_VERSION });
  } catch (err) {
    throw new ConfigError([`TLS_CERT_FILE/TLS_KEY_FILE: not a usable PEM certificate and matching private key (${(err as Error).message})`]);
  }
  return { cert, key };
}

/** Settles a burst of writes (a renewal writes two files; a Secret mount swaps a symlink). */
const SETTLE_MS = 200;

/**
 * Watches the certificate and key and hands a renewed, valid pair to the server: connections
 * opened after that see the new certificate, open ones keep theirs and are never dropped. A
 * half-written or mismatched pair is refused (the old one stays) and tried again on the next change.
 */
export class CertificateWatcher {
  private watchers: FSWatcher[] = [];
  private timer: NodeJS.Timeout | null = null;
  private current: TlsMaterial;

  constructor(
    private readonly certFile: string,
    private readonly keyFile: string,
    initial: TlsMaterial,
    private readonly apply: (material: TlsMaterial) => void,
    private readonly logger: Logger,
  ) {
    this.current = initial;
  }

  watch(): void {
    for (const dir of new Set([dirname(this.certFile), dirname(this.keyFile)])) {
      try {
        const watcher = watch(dir, { persistent: false }, () => this.schedule());
        watcher.on('error', (err) => this.logger.warn({ err, dir }, 'cannot watch the TLS files; a renewed certificate needs SIGHUP'));
        this.watchers.push(watcher);
      } catch (err) {
        this.logger.warn({ err, dir }, 'cannot watch the TLS files; a renewed certificate needs SIGHUP');
      }
    }
  }

  close(): void {
    for (const w of this.watchers) w.close();
    this.watchers = [];
    if (this.timer !== null) clearTimeout(this.timer);
  }

  /** Reads the files now and applies them if they changed and are a valid pair. */
  async reload(): Promise<boolean> {
    let next: TlsMaterial;
    try {
      next = await readTlsMaterial(this.certFile, this.keyFile);
    } catch (err) {
      this.logger.error({ problems: err instanceof ConfigError ? err.problems : [(err as Error).message] }, 'renewed TLS certificate refused; the current one stays');
      return false;
    }
    if (next.cert.equals(this.current.cert) && next.key.equals(this.current.key)) return false;
    this.apply(next);
    this.current = next;
    this.logger.info({ cert_file: this.certFile }, 'TLS certificate reloaded');
    return true;
  }

  private schedule(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.reload();
    }, SETTLE_MS);
  }
}
