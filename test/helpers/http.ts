import assert from 'node:assert/strict';
import { Client, request, type Dispatcher } from 'undici';
import { rawExchange } from './raw-http.js';

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
 * Writes bytes on a new TCP connection and returns the first response, for requests an HTTP
 * client refuses to send (malformed syntax). The bytes must make the server close the
 * connection (a malformed request, or Connection: close).
 */
export async function rawRequest(port: number, bytes: string | Buffer): Promise<Answer> {
  const { responses, text } = await rawExchange(port, bytes);
  const first = responses[0];
  if (first === undefined) throw new Error(`connection closed without a complete response: ${JSON.stringify(text)}`);
  const headers: Record<string, string | string[]> = {};
  for (const [name, values] of first.headers) headers[name] = values.length === 1 ? values[0]! : values;
  return { statusCode: first.status, headers, text: first.body };
}

export interface SendOptions {
  method?: Dispatcher.HttpMethod;
  /** Sent as Authorization: Bearer <token>. */
  token?: string;
  /** Sent as an application/json body. */
  json?: unknown;
  /** Sent as is, with whatever Content-Type `headers` names. */
  body?: string;
  headers?: Record<string, string>;
  /** Far above any answer a test expects: a hang fails the request, not the whole run. */
  timeoutMs?: number;
}

/** An answer and how long it took, from the request to the last body byte. */
export interface TimedAnswer extends Answer {
  ms: number;
}

/** One request on the shared pool, read to the end and timed. */
export async function send(url: string, options: SendOptions = {}): Promise<TimedAnswer> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  let body = options.body;
  if (options.json !== undefined) {
    headers['content-type'] ??= 'application/json';
    body = JSON.stringify(options.json);
  }
  const timeout = options.timeoutMs ?? 5_000;
  const started = performance.now();
  const answer = await read(request(url, { method: options.method ?? (body === undefined ? 'GET' : 'POST'), headers, body, headersTimeout: timeout, bodyTimeout: timeout }));
  return { ...answer, ms: performance.now() - started };
}
