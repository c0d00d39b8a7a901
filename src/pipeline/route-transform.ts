import { z } from 'zod';
import { headerName } from '../schema-fields.js';
import type { Exchange } from './exchange.js';

/**
 * A route's declared request and response changes: header set/add/remove, query parameter
 * rename/remove/add, with placeholders for the verified caller. Compiled when the config loads
 * into literal parts and field readers: nothing is parsed or evaluated per request, and no
 * config value is ever code.
 */

/** The placeholders a value may use; anything else in braces is refused when the file loads. */
export const PLACEHOLDER = /\{(user\.id|user\.role|user\.phi_access_level|request\.id|route\.name|client\.ip|param\.[A-Za-z_][A-Za-z0-9_]*)\}/g;
const PLACEHOLDER_EXACT = new RegExp(`^${PLACEHOLDER.source}$`);
/** Any `{name.name}` that looks like a placeholder, to catch typos such as `{user.ID}`. */
export const PLACEHOLDER_LIKE = /\{[A-Za-z_][A-Za-z0-9_.-]*\}/g;

type Reader = (ex: Exchange) => string | undefined;

const READERS: Record<string, Reader> = {
  'user.id': (ex) => ex.identity?.userId,
  'user.role': (ex) => ex.identity?.role,
  'user.phi_access_level': (ex) => ex.identity?.phiAccessLevel,
  'request.id': (ex) => ex.id,
  'route.name': (ex) => ex.route?.name,
  'client.ip': (ex) => ex.clientIp,
};

/** A value: literal text and readers. `undefined` when a reader has nothing (a user field on a public route). */
export type Template = (ex: Exchange) => string | undefined;

/** Header values may not carry control characters, whatever a token's claims hold. */
const UNSAFE_VALUE = /[^\t -~\u0080-\uffff]/g;

export function compileTemplate(text: string): Template {
  const parts: Array<string | Reader> = [];
  let last = 0;
  for (const m of text.matchAll(PLACEHOLDER)) {
    if (m.index > last) parts.push(text.slice(last, m.index));
    const name = m[1]!;
    parts.push(name.startsWith('param.') ? paramReader(name.slice(6)) : READERS[name]!);
    last = m.index + m[0].length;
  }
  if (last < text.length) parts.push(text.slice(last));
  if (parts.every((p) => typeof p === 'string')) {
    const literal = parts.join('');
    return () => literal;
  }
  return (ex) => {
    let out = '';
    for (const part of parts) {
      if (typeof part === 'string') out += part;
      else {
        const value = part(ex);
        if (value === undefined) return undefined;
        out += value.replace(UNSAFE_VALUE, '');
      }
    }
    return out;
  };
}

function paramReader(name: string): Reader {
  return (ex) => ex.params?.[name];
}

export interface HeaderOps {
  readonly remove: ReadonlySet<string>;
  /** Replace any copy of the header. */
  readonly set: ReadonlyArray<readonly [string, Template]>;
  /** Add a copy beside any others. */
  readonly add: ReadonlyArray<readonly [string, Template]>;
}

export function compileHeaderOps(config: HeaderOpsConfig | undefined): HeaderOps | null {
  if (config === undefined) return null;
  const set = Object.entries(config.set ?? {}).map(([k, v]) => [k.toLowerCase(), compileTemplate(v)] as const);
  const add = Object.entries(config.add ?? {}).map(([k, v]) => [k.toLowerCase(), compileTemplate(v)] as const);
  const remove = new Set([...(config.remove ?? []).map((h) => h.toLowerCase()), ...set.map(([k]) => k)]);
  return Object.freeze({ remove, set, add });
}

/** Applies header operations to a flat [name, value, ...] list, in place of its entries. */
export function applyHeaderOps(list: string[], ops: HeaderOps, ex: Exchange): string[] {
  const out: string[] = [];
  for (let i = 0; i < list.length; i += 2) if (!ops.remove.has(list[i]!)) out.push(list[i]!, list[i + 1]!);
  for (const [name, template] of ops.set) {
    const value = template(ex);
    if (value !== undefined) out.push(name, value);
  }
  for (const [name, template] of ops.add) {
    const value = template(ex);
    if (value !== undefined) out.push(name, value);
  }
  return out;
}

export interface QueryOps {
  readonly rename: ReadonlyMap<string, string>;
  /** Names dropped from the client's query: `remove`, the gateway's own `add`s and the rename targets. */
  readonly remove: ReadonlySet<string>;
  readonly add: ReadonlyArray<readonly [string, Template]>;
}

export function compileQueryOps(config: QueryOpsConfig | undefined): QueryOps | null {
  if (config === undefined) return null;
  const add = Object.entries(config.add ?? {}).map(([k, v]) => [k, compileTemplate(v)] as const);
  // A parameter the gateway adds is the gateway's: a client's copy of it is dropped first. So is
  // a client's copy of a rename target: `?pid=r-2&patient_id=r-1` must not reach the upstream as
  // two `pid`s after `patient_id` passed a subject check.
  const rename = new Map(Object.entries(config.rename ?? {}));
  const remove = new Set([...(config.remove ?? []), ...add.map(([k]) => k), ...[...rename.values()].filter((target) => !rename.has(target))]);
  return Object.freeze({ rename, remove, add });
}

function decodeName(raw: string): string | null {
  try {
    return decodeURIComponent(raw.replace(/\+/g, ' '));
  } catch {
    return null;
  }
}

/** The query string the upstream receives. Values the gateway does not touch keep their exact encoding. */
export function transformQuery(query: string, ops: QueryOps, ex: Exchange): string {
  const out: string[] = [];
  if (query !== '') {
    for (const pair of query.split('&')) {
      if (pair === '') continue;
      const eq = pair.indexOf('=');
      const rawName = eq === -1 ? pair : pair.slice(0, eq);
      const name = decodeName(rawName);
      // A name that does not decode cannot be matched against the rules: it is not passed on.
      if (name === null) continue;
      const renamed = ops.rename.get(name);
      if (renamed === undefined && ops.remove.has(name)) continue;
      out.push(renamed === undefined ? pair : encodeURIComponent(renamed) + (eq === -1 ? '' : pair.slice(eq)));
    }
  }
  for (const [name, template] of ops.add) {
    const value = template(ex);
    if (value !== undefined) out.push(`${encodeURIComponent(name)}=${encodeURIComponent(value)}`);
  }
  return out.join('&');
}

export interface RouteTransform {
  readonly requestHeaders: HeaderOps | null;
  readonly query: QueryOps | null;
  readonly responseHeaders: HeaderOps | null;
  /** Upstream 4xx/5xx answers become the gateway's problem shape; their bodies are dropped. */
  readonly mapErrors: boolean;
}

export function compileTransform(config: TransformConfig | undefined): RouteTransform | null {
  if (config === undefined) return null;
  return Object.freeze({
    requestHeaders: compileHeaderOps(config.request?.headers),
    query: compileQueryOps(config.request?.query),
    responseHeaders: compileHeaderOps(config.response?.headers),
    mapErrors: config.mapErrors ?? false,
  });
}

/** Framing and hop fields: a transform that set them could desynchronise the gateway and the upstream. */
const FRAMING_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'trailer', 'keep-alive', 'expect', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate', 'http2-settings']);
/** Answers' fields the gateway's own policies own (CORS, HSTS): a transform may not weaken them. */
const POLICY_HEADER = /^(access-control-|strict-transport-security$)/i;
const transformHeaderName = headerName.refine((h) => !FRAMING_HEADERS.has(h.toLowerCase()), 'framing and hop-by-hop headers (Host, Content-Length, Transfer-Encoding, Connection...) cannot be transformed');
const templateValue = z.string().max(4096).superRefine((v, ctx) => {
  for (const m of v.matchAll(PLACEHOLDER_LIKE)) {
    if (!PLACEHOLDER_EXACT.test(m[0])) {
      ctx.addIssue({ code: 'custom', message: `unknown placeholder ${m[0]}: use {user.id}, {user.role}, {user.phi_access_level}, {request.id}, {route.name}, {client.ip} or {param.name}` });
    }
  }
});
const headerOps = z.strictObject({
  set: z.record(transformHeaderName, templateValue).optional(),
  add: z.record(transformHeaderName, templateValue).optional(),
  remove: z.array(transformHeaderName).optional(),
});
const responseHeaderName = transformHeaderName.refine((h) => !POLICY_HEADER.test(h), 'Access-Control-* and Strict-Transport-Security are set by the gateway (CORS_*, HSTS_MAX_AGE_SECONDS, a route\'s cors)');
const responseHeaderOps = z.strictObject({
  set: z.record(responseHeaderName, templateValue).optional(),
  add: z.record(responseHeaderName, templateValue).optional(),
  remove: z.array(responseHeaderName).optional(),
});
const queryName = z.string().min(1).max(256);
/** The routes-file `transform:` of a route: declared changes to the request and the answer. */
export const transformRulesSchema = z.strictObject({
  request: z
    .strictObject({
      headers: headerOps.optional(),
      query: z.strictObject({ rename: z.record(queryName, queryName).optional(), remove: z.array(queryName).optional(), add: z.record(queryName, templateValue).optional() }).optional(),
    })
    .optional(),
  response: z.strictObject({ headers: responseHeaderOps.optional() }).optional(),
  mapErrors: z.boolean().optional(),
});

export type TransformConfig = z.output<typeof transformRulesSchema>;
type HeaderOpsConfig = z.output<typeof headerOps>;
type QueryOpsConfig = NonNullable<NonNullable<TransformConfig['request']>['query']>;
