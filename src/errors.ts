import { STATUS_CODES, type ServerResponse } from 'node:http';

/**
 * Every error the gateway answers by itself is declared here once: a stable code, its HTTP
 * status and a title. Clients, tests and docs rely on the code, never on the message text.
 * The body is RFC 9457 problem details plus the code and the request id.
 */
export const ERRORS = {
  GW_BAD_REQUEST: { status: 400, title: 'Bad Request' },
  GW_BAD_PATH: { status: 400, title: 'Bad Request' },
  GW_INVALID_BODY: { status: 400, title: 'Bad Request' },
  GW_AUTH_TOKEN_MISSING: { status: 401, title: 'Unauthorized' },
  GW_AUTH_TOKEN_MALFORMED: { status: 401, title: 'Unauthorized' },
  GW_AUTH_TOKEN_INVALID: { status: 401, title: 'Unauthorized' },
  GW_AUTH_TOKEN_EXPIRED: { status: 401, title: 'Unauthorized' },
  GW_AUTH_TOKEN_NOT_YET_VALID: { status: 401, title: 'Unauthorized' },
  GW_AUTH_CLAIMS_INVALID: { status: 401, title: 'Unauthorized' },
  GW_AUTH_TOKEN_TYPE: { status: 401, title: 'Unauthorized' },
  GW_AUTH_TOKEN_REVOKED: { status: 401, title: 'Unauthorized' },
  GW_AUTH_SESSION_INVALID: { status: 401, title: 'Unauthorized' },
  GW_FORBIDDEN: { status: 403, title: 'Forbidden' },
  GW_BREAK_GLASS_REASON_REQUIRED: { status: 403, title: 'Forbidden' },
  GW_CORS_REJECTED: { status: 403, title: 'Forbidden' },
  GW_ROUTE_NOT_FOUND: { status: 404, title: 'Not Found' },
  GW_METHOD_NOT_ALLOWED: { status: 405, title: 'Method Not Allowed' },
  GW_REQUEST_TIMEOUT: { status: 408, title: 'Request Timeout' },
  GW_UPGRADE_REQUIRED: { status: 426, title: 'Upgrade Required' },
  GW_BODY_TOO_LARGE: { status: 413, title: 'Content Too Large' },
  GW_UNSUPPORTED_MEDIA_TYPE: { status: 415, title: 'Unsupported Media Type' },
  GW_RATE_LIMITED: { status: 429, title: 'Too Many Requests' },
  GW_HEADERS_TOO_LARGE: { status: 431, title: 'Request Header Fields Too Large' },
  GW_INTERNAL: { status: 500, title: 'Internal Server Error' },
  GW_UPSTREAM_UNAVAILABLE: { status: 502, title: 'Bad Gateway' },
  GW_UPSTREAM_BAD_RESPONSE: { status: 502, title: 'Bad Gateway' },
  GW_NO_HEALTHY_UPSTREAM: { status: 502, title: 'Bad Gateway' },
  GW_UPSTREAM_OVERLOADED: { status: 503, title: 'Service Unavailable' },
  GW_SHUTTING_DOWN: { status: 503, title: 'Service Unavailable' },
  GW_DEPENDENCY_UNAVAILABLE: { status: 503, title: 'Service Unavailable' },
  GW_AUTH_UNAVAILABLE: { status: 503, title: 'Service Unavailable' },
  GW_AUDIT_UNAVAILABLE: { status: 503, title: 'Service Unavailable' },
  GW_UPSTREAM_TIMEOUT: { status: 504, title: 'Gateway Timeout' },
  GW_UPSTREAM_CONNECT_TIMEOUT: { status: 504, title: 'Gateway Timeout' },
  /** An upstream's own 4xx/5xx in the gateway's shape (routes with `transform.mapErrors`): its status and title are the upstream's. */
  GW_UPSTREAM_ERROR: { status: 502, title: 'Bad Gateway' },
} as const satisfies Record<string, { status: number; title: string }>;

export type ErrorCode = keyof typeof ERRORS;

/**
 * A configuration the gateway refuses to run with (an environment variable or the routes file):
 * each problem names its field path and what would fix it, and never a secret's value.
 */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

export interface Problem {
  type: string;
  title: string;
  status: number;
  code: ErrorCode;
  detail: string;
  request_id: string;
}

export function problem(code: ErrorCode, requestId: string, detail: string): Problem {
  const { status, title } = ERRORS[code];
  return {
    type: `urn:api-gateway:error:${code}`,
    title,
    status,
    code,
    detail,
    request_id: requestId,
  };
}

/**
 * The one problem writer: every answer the gateway gives by itself, whichever stage or upstream
 * layer decided it, is written here.
 */
export function writeProblem(
  res: ServerResponse,
  code: ErrorCode,
  requestId: string,
  detail: string,
  headers?: Record<string, string>,
  /** Fields every answer of the exchange carries (CORS, HSTS), as [name, value, ...]. */
  extra?: readonly string[] | null,
): void {
  const { status, title } = ERRORS[code];
  send(res, status, title, JSON.stringify(problem(code, requestId, detail)), requestId, headers, extra);
}

/**
 * An upstream's 4xx/5xx answer in the gateway's error shape, with the upstream's status (routes
 * with `transform.mapErrors`). Its own body is never shown: only the status is carried over.
 */
export function writeUpstreamError(res: ServerResponse, status: number, requestId: string, retryAfter: string | string[] | undefined, extra: readonly string[] | null): void {
  const title = STATUS_CODES[status] ?? 'Error';
  const body = JSON.stringify({ ...problem('GW_UPSTREAM_ERROR', requestId, `the upstream service answered ${status} ${title}`), title, status });
  send(res, status, title, body, requestId, typeof retryAfter === 'string' ? { 'retry-after': retryAfter } : undefined, extra);
}

/** One problem body on the wire, HTTP/1.1 or HTTP/2, or a broken connection if an answer has begun. */
function send(
  res: ServerResponse,
  status: number,
  title: string,
  body: string,
  requestId: string,
  headers: Record<string, string> | undefined,
  extra: readonly string[] | null | undefined,
): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const fields: Record<string, string | number> = {
    ...headers,
    'content-type': PROBLEM_CONTENT_TYPE,
    'content-length': Buffer.byteLength(body),
    'x-request-id': requestId,
    'cache-control': 'no-store',
  };
  if (extra != null) for (let i = 0; i < extra.length; i += 2) fields[extra[i]!] = extra[i + 1]!;
  if (res.req?.httpVersionMajor === 2) {
    // HTTP/2 has neither reason phrases nor Connection: a stream ends, the connection stays.
    delete fields.connection;
    res.writeHead(status, fields);
  } else res.writeHead(status, title, fields);
  res.end(body);
}
