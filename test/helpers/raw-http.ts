import { connect } from 'node:net';

/** Bytes on the wire that no HTTP client will send, and the responses that come back. */

export interface RawResponse {
  status: number;
  /** Lower-cased field names; every line of a repeated field is kept. */
  headers: Map<string, string[]>;
  body: string;
}

export interface RawExchange {
  /** Everything the server wrote before it closed the connection. */
  text: string;
  responses: RawResponse[];
}

/**
 * Writes `payload` on a new connection and collects what the server sends until it closes the
 * connection. A payload must therefore end in something the server closes on (Connection: close,
 * or a framing error). The timeout only turns a hang into a failure; it is never the expected path.
 */
export function rawExchange(port: number, payload: string | Buffer, timeoutMs = 5_000): Promise<RawExchange> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = connect(port, '127.0.0.1');
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server did not close the connection within ${timeoutMs} ms; got: ${JSON.stringify(Buffer.concat(chunks).toString('latin1'))}`));
    }, timeoutMs);
    socket.on('data', (d: Buffer) => chunks.push(d));
    // A reset after the server has answered and hung up mid-write is still an answer.
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      const bytes = Buffer.concat(chunks);
      try {
        resolve({ text: bytes.toString('latin1'), responses: parseResponses(bytes) });
      } catch (err) {
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
    socket.write(typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload);
  });
}

/** Splits a byte stream into HTTP/1.1 responses (Content-Length, chunked, or read-to-close bodies). */
export function parseResponses(bytes: Buffer): RawResponse[] {
  const out: RawResponse[] = [];
  let pos = 0;
  const line = (): string => {
    const end = bytes.indexOf('\r\n', pos);
    if (end === -1) throw new Error(`truncated response at byte ${pos}: ${JSON.stringify(bytes.subarray(pos).toString('latin1'))}`);
    const text = bytes.subarray(pos, end).toString('latin1');
    pos = end + 2;
    return text;
  };
  while (pos < bytes.length) {
    const statusLine = line();
    const m = /^HTTP\/1\.[01] (\d{3}) /.exec(statusLine);
    if (m === null) throw new Error(`not a status line: ${JSON.stringify(statusLine)}`);
    const status = Number(m[1]);
    const headers = new Map<string, string[]>();
    for (let h = line(); h !== ''; h = line()) {
      const colon = h.indexOf(':');
      const name = h.slice(0, colon).toLowerCase();
      headers.set(name, [...(headers.get(name) ?? []), h.slice(colon + 1).trim()]);
    }
    let body = '';
    if (status >= 200 && status !== 204 && status !== 304) {
      const length = headers.get('content-length')?.[0];
      if (headers.get('transfer-encoding')?.[0]?.toLowerCase() === 'chunked') {
        for (let size = parseInt(line(), 16); size > 0; size = parseInt(line(), 16)) {
          body += bytes.subarray(pos, pos + size).toString('latin1');
          pos += size;
          if (line() !== '') throw new Error('chunk not followed by CRLF');
        }
        while (line() !== '');
      } else if (length !== undefined) {
        body = bytes.subarray(pos, pos + Number(length)).toString('latin1');
        pos += Number(length);
      } else {
        body = bytes.subarray(pos).toString('latin1');
        pos = bytes.length;
      }
    }
    out.push({ status, headers, body });
  }
  return out;
}

export function header(res: RawResponse, name: string): string | undefined {
  return res.headers.get(name)?.[0];
}

/** The gateway's problem body, checked to be one. */
export function problemOf(res: RawResponse): Record<string, unknown> {
  if (header(res, 'content-type') !== 'application/problem+json') {
    throw new Error(`expected a problem+json answer, got ${res.status} ${header(res, 'content-type')}: ${res.body}`);
  }
  return JSON.parse(res.body) as Record<string, unknown>;
}

