import { ServerResponse } from 'node:http';
import { ROUTE_CHAIN, authFlowSettings, entryStages, type StageDeps } from '../app.js';
import { SessionValidator } from '../auth/sessions.js';
import type { ResolvedRoute } from '../config/compile.js';
import { trustedProxyList } from '../config/env.js';
import type { GatewayConfig } from '../config/load.js';
import { ERRORS } from '../errors.js';
import { AccessCheck } from '../pipeline/access-check.js';
import { admission } from '../pipeline/admission.js';
import { AuthFailureLimit } from '../pipeline/auth-failure-limit.js';
import { ClientAddress } from '../pipeline/client-address.js';
import { ANSWERED, Exchange, PASS, stage, type Refusal, type Stage, type Verdict } from '../pipeline/exchange.js';
import { forward } from '../pipeline/forward.js';
import { SocketRegistry, websocket } from '../pipeline/websocket.js';
import { createVerifier, openRedisStore, redisConnection } from '../resources.js';
import { DryAccessStore } from '../stores/dry-access-store.js';
import { AccessControl } from '../stores/failover-access-store.js';
import { MemoryAccessStore } from '../stores/memory-access-store.js';
import { UpstreamPools } from '../upstream/pools.js';
import { compiled, maskToken, quietLogger, syntheticRequest } from './context.js';

export interface ExplainInput {
  method: string;
  /** `https://host/path?query` or `/path?query`. */
  url: string;
  headers: Record<string, string>;
  /** The client's address as the gateway's socket would see it. */
  from: string;
}

export interface StageVerdict {
  stage: string;
  verdict: 'pass' | 'refused' | 'answered' | 'not evaluated';
  detail: string;
}

export interface Explanation {
  request: { method: string; path: string; query: string; client: string };
  route: { name: string; template: string; auth: string; phi: boolean; service: string | null; roles: string[] | null; permission: string | null } | null;
  stages: StageVerdict[];
  identity: { user: string; role: string; phiAccessLevel: string; tokenId: string | null; sessionId: string | null } | null;
  breakGlass: string | null;
  rateLimit: { key: string; limit: number; remaining: number; allowed: boolean } | null;
  upstream: { service: string; instances: string[]; target: string; headers: Array<[string, string]> } | null;
  answer: { status: number | null; code: string | null; detail: string; headers: Record<string, string> };
}

/** Header values never printed. */
const CREDENTIALS: ReadonlySet<string> = new Set(['authorization', 'proxy-authorization', 'cookie']);

/** Stages that read the request body: explain sends none, so it stops before them. */
const NEEDS_BODY = new Set(['auth-flow', 'revoke']);

/**
 * What the gateway would do with one request, by its own stages: the same entry, the same route
 * chains compiled from the same config, the same key set and store. Only the forward stage is
 * replaced (it records where the request would go and sends nothing), and the store is a dry view
 * of Redis (a budget is read, never spent; nothing is revoked or cached). A token's session is
 * asked of auth-rbac, as the gateway would.
 */
export async function explain(config: GatewayConfig, input: ExplainInput): Promise<Explanation> {
  const { env } = config;
  const logger = quietLogger();
  const connection = await redisConnection(env);
  const redis = connection === null ? null : openRedisStore(connection, env.REDIS_COMMAND_TIMEOUT_MS, logger);
  const dry = redis === null ? null : new DryAccessStore(redis.store);
  if (redis !== null) await waitForRedis(redis.pipe, env.REDIS_COMMAND_TIMEOUT_MS);
  const local = new MemoryAccessStore();
  const store = new AccessControl(dry, local, logger, env.REDIS_COMMAND_TIMEOUT_MS);
  const pools = new UpstreamPools();
  const authService = pools.get(new URL(env.AUTH_SERVICE_URL).origin, { connectTimeoutMs: env.AUTH_REQUEST_TIMEOUT_MS, maxConnections: 1, ca: undefined });
  let forwarded: { route: ResolvedRoute } | null = null;
  const deps: Omit<StageDeps, keyof import('../config/compile.js').CompileScope> = {
    logger,
    verifier: await createVerifier(env),
    authFailures: new AuthFailureLimit(store, env.AUTH_FAILURES_PER_ADDRESS_PER_MINUTE, logger),
    accessCheck: new AccessCheck(store, new SessionValidator(authService, env.AUTH_REQUEST_TIMEOUT_MS), logger),
    audit: null,
    store,
    authFlow: authFlowSettings(env),
    tls: env.TLS_CERT_FILE !== undefined,
    upstreamCall: () => {
      throw new Error('explain sends nothing upstream');
    },
    tracing: null,
    sockets: new SocketRegistry(null),
    metrics: null,
    upstreamCa: undefined,
    clockSkewSeconds: env.JWT_CLOCK_SKEW_SECONDS,
    loopLag: null,
    shedDelayMs: 0,
  };
  const { table, close } = await compiled(config, (route, scope) =>
    ROUTE_CHAIN.flatMap((s): Stage[] => {
      const built = s.create(route as never, { ...deps, ...scope } as never);
      if (built === null) return [];
      if (s !== forward && s !== websocket) return [built];
      // Where the request would go, and nothing sent.
      return [
        stage(s.name, () => {
          forwarded = { route };
          return ANSWERED;
        }),
      ];
    }),
  );
  try {
    const target = new URL(input.url, 'http://gateway.invalid');
    const headers = { host: input.url.startsWith('/') ? 'localhost' : target.host, ...input.headers };
    const req = syntheticRequest(input.method.toUpperCase(), `${target.pathname}${target.search}`, headers);
    const res = new ServerResponse(req);
    const addresses = new ClientAddress(env.TRUSTED_PROXIES.length > 0 ? trustedProxyList(env.TRUSTED_PROXIES) : null);
    const peer = addresses.peer(input.from);
    const trusted = addresses.isTrusted(peer);
    const ex = new Exchange('', performance.now(), peer, trusted, trusted ? addresses.clientIp(peer, req.headers['x-forwarded-for']) : peer);
    const stages: StageVerdict[] = [];
    let ending: Verdict = PASS;
    const runAll = async (chain: readonly Stage[]): Promise<boolean> => {
      for (const s of chain) {
        if (NEEDS_BODY.has(s.name)) {
          stages.push({ stage: s.name, verdict: 'not evaluated', detail: 'reads the request body, which explain does not send; the answer depends on it' });
          ending = ANSWERED;
          return false;
        }
        const verdict = await s.handle(ex, req, res);
        // No route: route-match leaves its 404 or 405 for the runner, which answers it next.
        if (s.name === 'route-match' && ex.route === null) return true;
        stages.push({ stage: s.name, ...describe(s.name, verdict, ex, req.headers.origin) });
        if (verdict !== PASS) {
          ending = verdict;
          return false;
        }
      }
      return true;
    };
    const entry = entryStages(() => table, null, admission(() => false));
    if (await runAll(entry)) {
      if (ex.route === null) {
        stages.push({ stage: 'route-match', verdict: 'refused', detail: refusalText(ex.miss!) });
        ending = ex.miss!;
      } else {
        await runAll(ex.route.chain);
      }
    }
    const routeConfig = ex.route === null ? null : config.routes.routes.find((r) => r.name === ex.route!.name)!;
    const via = forwarded as { route: ResolvedRoute } | null;
    const service = via?.route.service === undefined ? null : table.services.get(via.route.service)!;
    return {
      request: { method: req.method!, path: ex.path, query: ex.query, client: ex.clientIp },
      route:
        ex.route === null || routeConfig === null
          ? null
          : {
              name: ex.route.name,
              template: ex.route.template,
              auth: ex.route.auth,
              phi: ex.route.phi,
              service: routeConfig.service ?? null,
              roles: routeConfig.roles ?? null,
              permission: routeConfig.permission ?? null,
            },
      stages,
      identity: ex.identity === null ? null : { user: ex.identity.userId, role: ex.identity.role, phiAccessLevel: ex.identity.phiAccessLevel, tokenId: ex.identity.tokenId, sessionId: ex.identity.sessionId },
      breakGlass: ex.breakGlass,
      rateLimit:
        ex.rateLimit === null
          ? null
          : { key: dry?.asked.at(-1) ?? `(in this process's memory: ${ex.route?.rateLimit.policyName ?? ''})`, limit: ex.rateLimit.limit, remaining: ex.rateLimit.remaining, allowed: ex.rateLimit.allowed },
      upstream:
        via === null || service === null
          ? null
          : {
              service: service.name,
              instances: service.instances.map((i) => i.origin),
              target: ex.upstreamTarget,
              headers: pairs(ex.upstreamHeaders ?? []).map(([n, v]) => [n, CREDENTIALS.has(n) ? `<${v.length} characters, not shown>` : maskToken(v)] as [string, string]),
            },
      answer: answerOf(ending, res, via !== null),
    };
  } finally {
    close();
    local.close();
    await pools.close();
    redis?.redis.disconnect();
    redis?.pipe.close();
  }
}

/** A Redis deployment that answers within a few command timeouts; the access check then falls back as the gateway would. */
async function waitForRedis(pipe: { state(): { state: string } }, timeoutMs: number): Promise<void> {
  const until = Date.now() + Math.max(1_000, 10 * timeoutMs);
  while (pipe.state().state !== 'connected' && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 20));
}

function pairs(flat: readonly string[]): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i]!, flat[i + 1]!]);
  return out;
}

function refusalText(r: Refusal): string {
  return `${ERRORS[r.code].status} ${r.code}: ${r.detail}`;
}

function describe(name: string, verdict: Verdict, ex: Exchange, origin: string | undefined): Omit<StageVerdict, 'stage'> {
  if (verdict === ANSWERED) {
    if (name === 'forward') return { verdict: 'answered', detail: 'would send the request to the upstream (nothing sent)' };
    if (name === 'websocket') return { verdict: 'answered', detail: "would open the upstream's WebSocket, then answer 101 (nothing sent)" };
    return { verdict: 'answered', detail: name === 'preflight' ? 'answers the CORS preflight itself' : 'answers the request itself' };
  }
  if (verdict !== PASS) return { verdict: 'refused', detail: refusalText(verdict) };
  const who = ex.identity;
  const detail: Record<string, () => string> = {
    'request-id': () => 'a request id is given to the request',
    admission: () => 'the gateway is accepting requests',
    'canonical-path': () => `path ${ex.path}${ex.query === '' ? '' : `, query ${ex.query}`}`,
    preflight: () => 'not a CORS preflight',
    'route-match': () => `route ${ex.route!.name} (${ex.route!.template})`,
    cors: () => (origin === undefined ? 'no Origin: not a cross-origin request' : `origin ${origin} is allowed`),
    authenticate: () => (who === null ? 'a public route: no token needed' : `authenticated as ${who.userId}, role ${who.role}, PHI access level ${who.phiAccessLevel}`),
    authorize: () => (ex.breakGlass !== null ? `break-glass access by ${who!.role}, reason "${ex.breakGlass}"` : `the role ${who?.role ?? '(none)'} may use this route`),
    'access-check': () =>
      ex.rateLimit === null
        ? 'not revoked'
        : `${who === null ? '' : 'not revoked; '}${ex.rateLimit.remaining} of ${ex.rateLimit.limit} requests a minute left after this one (not spent)`,
    'content-type': () => 'the content type is accepted',
    'audit-gate': () => 'the audit spool has room',
    transform: () => `the upstream would get ${ex.upstreamTarget}`,
  };
  return { verdict: 'pass', detail: detail[name]?.() ?? 'passes' };
}

function answerOf(ending: Verdict, res: ServerResponse, forwarded: boolean): Explanation['answer'] {
  if (forwarded) return { status: null, code: null, detail: "proxied: the client gets the upstream's answer", headers: {} };
  if (ending === ANSWERED) {
    if (res.headersSent || res.statusCode !== 200 || res.getHeaderNames().length > 0) {
      return { status: res.statusCode, code: null, detail: 'answered by the gateway itself', headers: headersOf(res) };
    }
    return { status: null, code: null, detail: 'depends on the request body', headers: {} };
  }
  if (ending === PASS) return { status: null, code: null, detail: 'no stage answered', headers: {} };
  return { status: ERRORS[ending.code].status, code: ending.code, detail: ending.detail, headers: { ...ending.headers } };
}

function headersOf(res: ServerResponse): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(res.getHeaders())) out[name] = Array.isArray(value) ? value.join(', ') : String(value);
  return out;
}

/** The explanation as an operator reads it. */
export function explanationText(e: Explanation): string {
  const lines: string[] = [];
  lines.push(`${e.request.method} ${e.request.path}${e.request.query === '' ? '' : `?${e.request.query}`} from ${e.request.client}`);
  if (e.route !== null) {
    const r = e.route;
    const access = r.permission !== null ? `permission ${r.permission}` : r.roles !== null ? `roles ${r.roles.join(', ')}` : 'any role';
    lines.push(`route: ${r.name} (${r.template}), auth ${r.auth}${r.auth === 'required' ? `, ${access}` : ''}${r.phi ? ', PHI' : ''}${r.service === null ? ', answered by the gateway' : `, service ${r.service}`}`);
  } else lines.push('route: none');
  lines.push('stages:');
  for (const s of e.stages) lines.push(`  ${s.stage.padEnd(15)} ${s.verdict.padEnd(13)} ${s.detail}`);
  if (e.rateLimit !== null) lines.push(`rate limit: ${e.rateLimit.key}, ${e.rateLimit.remaining} of ${e.rateLimit.limit} left${e.rateLimit.allowed ? '' : ' (spent)'}`);
  if (e.upstream !== null) {
    lines.push(`upstream: service ${e.upstream.service} (${e.upstream.instances.join(', ')}), ${e.upstream.target}`);
    lines.push('  headers it would get:');
    for (const [n, v] of e.upstream.headers) lines.push(`    ${n}: ${v}`);
  }
  const a = e.answer;
  lines.push(`answer: ${a.status === null ? '' : `${a.status} `}${a.code === null ? '' : `${a.code}: `}${a.detail}`);
  for (const [n, v] of Object.entries(a.headers)) lines.push(`  ${n}: ${v}`);
  return `${lines.join('\n')}\n`;
}
