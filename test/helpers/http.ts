import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { Client, type Dispatcher } from 'undici';

export interface ProblemBody {
  type: string;
  title: string;
  status: number;
  code: string;
  detail: string;
  request_id: string;
  [key: string]: unknown;
}

/** Traces of an internal failure that must never reach a client: frames, source paths, stack fields. */
const LEAKS = [/\bat .+\(.*:\d+:\d+\)/, /\n\s+at /, /node:internal/, /\.[cm]?[jt]s:\d+/, /\/src\//, /"stack"/];

/** Fails if an answer tells the client what software runs behind the gateway. */
export function assertNoBanners(headers: Record<string, string | string[] | undefined>): void {
  assert.equal(headers.server, undefined, `Server header leaked: ${String(headers.server)}`);
  assert.equal(headers['x-powered-by'], undefined, `X-Powered-By header leaked: ${String(headers['x-powered-by'])}`);
}

export function assertNoStackTrace(text: string): void {
  for (const leak of LEAKS) assert.doesNotMatch(text, leak, `error body reveals internals: ${text}`);
}

/** A response read to the end: the status, the headers and the body text. */
export interface Answer {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

export async function read(pending: Dispatcher.ResponseData | Promise<Dispatcher.ResponseData>): Promise<Answer> {
  const res = await pending;
  return { statusCode: res.statusCode, headers: res.headers, text: await res.body.text() };
}

/** Sends a request on a connection of its own, so nothing an earlier request did to a pooled socket carries over. */
export async function onNewConnection(origin: string, path: string, options: Omit<Dispatcher.RequestOptions, 'origin' | 'path' | 'method'> & { method?: Dispatcher.HttpMethod } = {}): Promise<Answer> {
  const client = new Client(origin);
  try {
    return await read(client.request({ method: 'GET', ...options, path }));
  } finally {
    await client.close();
  }
}

/**
 * Checks an answer is the gateway's one error shape: the status, an application/problem+json
 * body with the code, the same request id in body and header, no banner and no stack trace.
 */
export function expectProblem(answer: Answer, status: number, code: string): ProblemBody {
  const { text } = answer;
  assert.equal(answer.statusCode, status, `expected ${status} ${code}, got ${answer.statusCode}: ${text}`);
  assert.equal(answer.headers['content-type'], 'application/problem+json', `content-type of: ${text}`);
  assertNoBanners(answer.headers);
  assertNoStackTrace(text);
  const body = JSON.parse(text) as ProblemBody;
  assert.equal(body.code, code);
  assert.equal(body.status, status);
  assert.equal(typeof body.request_id, 'string');
  assert.ok(body.request_id.length > 0);
  assert.equal(body.request_id, answer.headers['x-request-id'], 'request_id in the body must equal the X-Request-ID header');
  return body;
}

/**
 * Writes bytes on a new TCP connection and parses the one response that comes back. For
 * requests an HTTP client refuses to send (malformed syntax). Resolves when the server closes
 * the connection or a complete response with a content-length has arrived.
 */
export function rawRequest(port: number, bytes: string | Buffer): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(bytes));
    let data = Buffer.alloc(0);
    let done = false;
    const finish = () => {
      if (done) return;
      const parsed = parse(data);
      if (parsed === null) return;
      done = true;
      socket.destroy();
      resolve(parsed);
    };
    socket.on('data', (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      finish();
    });
    socket.on('close', () => {
      finish();
      if (!done) reject(new Error(`connection closed without a complete response: ${JSON.stringify(data.toString('latin1'))}`));
    });
    // A reset after the response arrived is the server discarding what it did not read.
    socket.on('error', () => undefined);
  });
}

function parse(data: Buffer): Answer | null {
  const end = data.indexOf('\r\n\r\n');
  if (end === -1) return null;
  const [statusLine, ...lines] = data.subarray(0, end).toString('latin1').split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const length = Number(headers['content-length'] ?? NaN);
  const body = data.subarray(end + 4);
  if (!Number.isFinite(length) || body.length < length) return null;
  return { statusCode: Number(statusLine!.split(' ')[1]), headers, text: body.subarray(0, length).toString('utf8') };
}
