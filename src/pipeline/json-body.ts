import type { IncomingMessage } from 'node:http';
import type { z } from 'zod';
import type { Refusal } from './exchange.js';
import { readBody, TOO_LARGE, TOO_SLOW } from './read-body.js';

const JSON_TYPE = /^application\/json\s*(;|$)/i;
const CLOSE = Object.freeze({ connection: 'close' });

/** A small JSON body read whole (`empty`: it had no bytes, which `emptyAllowed` accepts as `{}`). */
export interface JsonBody {
  readonly json: unknown;
  readonly empty: boolean;
}

/**
 * The body of the few requests the gateway must read (login, refresh, logout, revoke): at most
 * `limit` bytes, sent as application/json, parsed. Anything else is a refusal that names the fix.
 */
export async function readJson(req: IncomingMessage, limit: number, timeoutMs: number, emptyAllowed: boolean): Promise<JsonBody | Refusal> {
  const body = await readBody(req, limit, timeoutMs);
  if (body === TOO_LARGE) return { code: 'GW_BODY_TOO_LARGE', detail: `request body exceeds ${limit} bytes`, headers: CLOSE };
  // The rest of the body is never read: the connection goes with the answer.
  if (body === TOO_SLOW) return { code: 'GW_REQUEST_TIMEOUT', detail: `the request body did not arrive within ${timeoutMs} ms`, headers: CLOSE };
  if (body.length === 0 && emptyAllowed) return { json: {}, empty: true };
  const type = req.headers['content-type'];
  if (type === undefined || !JSON_TYPE.test(type)) return { code: 'GW_INVALID_BODY', detail: 'send the body as Content-Type: application/json' };
  try {
    return { json: JSON.parse(body.toString('utf8')) as unknown, empty: body.length === 0 };
  } catch {
    return { code: 'GW_INVALID_BODY', detail: 'the body is not valid JSON' };
  }
}

/** The first problem, naming its field: `email: must be an email address`, `password: is required`. */
export function describe(error: z.ZodError, json: unknown): string {
  const issue = error.issues[0]!;
  if (issue.code === 'unrecognized_keys') return `${issue.keys.join(', ')}: not an accepted field`;
  const field = issue.path.join('.');
  if (field === '') return `body: ${issue.code === 'invalid_type' ? 'must be a JSON object' : issue.message}`;
  const missing = issue.path.length === 1 && typeof json === 'object' && json !== null && !(String(issue.path[0]) in json);
  return `${field}: ${missing && issue.code !== 'custom' ? 'is required' : issue.message}`;
}

export function invalid(error: z.ZodError, json: unknown): Refusal {
  return { code: 'GW_INVALID_BODY', detail: describe(error, json) };
}

export function isRefusal(value: object): value is Refusal {
  return 'code' in value;
}
