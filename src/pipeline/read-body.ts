import type { IncomingMessage } from 'node:http';

export const TOO_LARGE = Symbol('too large');
export const TOO_SLOW = Symbol('too slow');

/**
 * Reads a small request body whole, for the few routes whose body the gateway must see (login,
 * refresh, logout, revoke). Stops at `limit` bytes: the declared length is checked first, a
 * chunked body as it arrives. The whole body must arrive within `timeoutMs`: a client that
 * declares a body and never sends it, or sends it a byte at a time, does not hold the connection.
 */
export function readBody(req: IncomingMessage, limit: number, timeoutMs: number): Promise<Buffer | typeof TOO_LARGE | typeof TOO_SLOW> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) return Promise.resolve(TOO_LARGE);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => {
      cleanup();
      resolve(TOO_SLOW);
    }, timeoutMs);
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        req.resume();
        resolve(TOO_LARGE);
      } else chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onAborted = () => onError(new Error('the client closed the connection during the body'));
    const cleanup = () => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    const onClose = () => {
      if (!req.complete) onAborted();
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  });
}

/** Whether a request comes with a body (of any length but zero), whichever way it is framed. */
export function hasBody(req: IncomingMessage): boolean {
  const headers = req.headers;
  const length = headers['content-length'];
  if (headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')) return true;
  // HTTP/2 frames a body without either field: it has one unless the headers ended the stream.
  if (req.httpVersionMajor === 2) return length === undefined && (req as unknown as { stream?: { endAfterHeaders?: boolean } }).stream?.endAfterHeaders !== true;
  return false;
}
