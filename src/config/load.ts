import { readFile } from 'node:fs/promises';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from '../errors.js';
import { parseEnv, type Env } from './env.js';
import { routesFileSchema, type RoutesFile } from './routes-schema.js';

export { ConfigError };

export interface GatewayConfig {
  env: Env;
  routes: RoutesFile;
  routesFile: string;
  /** The environment the config came from: a reload resolves the file's ${VAR}s from it again. */
  source: NodeJS.ProcessEnv;
}

/** `routes[2].service` from a zod issue path. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out || '(file)';
}

function formatIssues(issues: readonly z.core.$ZodIssue[]): string[] {
  return issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') {
      return `${formatPath(issue.path)}: unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')} (check the spelling against the README's routes-file reference)`;
    }
    if (issue.code === 'invalid_key' && issue.issues.length > 0) {
      // A record key that failed its own check: its reason is nested one level down.
      return `${formatPath(issue.path)}: ${issue.issues[0]!.message}`;
    }
    if (issue.code === 'invalid_type' && issue.input === undefined) {
      return `${formatPath(issue.path)}: is required`;
    }
    return `${formatPath(issue.path)}: ${issue.message}`;
  });
}

const VARIABLE = /\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * `${NAME}` and `${NAME:-default}` in string values are taken from the environment, so one
 * routes file serves every deployment. Substitution happens after YAML parsing, so a value can
 * never inject YAML structure.
 */
/**
 * Variables a routes file may never read: secrets and credentials. The file is often editable by
 * more people than the Secrets are (a ConfigMap), and a transform could send any value to clients.
 */
const SECRET_VARIABLE = /SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY($|_)|^JWT_|^REDIS_URL$|^OTEL_.*HEADERS$/;

/** A value that is one `${NAME}` and nothing else: it may stand for a number or a boolean. */
const WHOLE_VARIABLE = /^\$\{[A-Z_][A-Z0-9_]*(?::-[^}]*)?\}$/;

/**
 * `whole` collects the paths of values that were one variable and nothing else: where the schema
 * then wants a number or a boolean, the text is read as one (typedSubstitutions below).
 */
function substitute(value: unknown, env: NodeJS.ProcessEnv, path: PropertyKey[], problems: string[], whole: Array<readonly PropertyKey[]> = []): unknown {
  if (typeof value === 'string') {
    if (WHOLE_VARIABLE.test(value)) whole.push(path);
    return value.replace(VARIABLE, (_, name: string, fallback: string | undefined) => {
      if (SECRET_VARIABLE.test(name)) {
        problems.push(`${formatPath(path)}: may not use \${${name}}: secrets and credentials never go into the routes file`);
        return '';
      }
      // Transforms send their values to upstreams and clients: only literal text and placeholders.
      if (path.includes('transform')) {
        problems.push(`${formatPath(path)}: transform values cannot use \${${name}}; write the value, or a placeholder such as {user.id}`);
        return '';
      }
      const found = env[name];
      if (found !== undefined && found !== '') return found;
      if (fallback !== undefined) return fallback;
      problems.push(`${formatPath(path)}: uses \${${name}}, which is not set; set it or write \${${name}:-default}`);
      return '';
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => substitute(v, env, [...path, i], problems, whole));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = substitute(v, env, [...path, k], problems, whole);
    return out;
  }
  return value;
}

const samePath = (a: readonly PropertyKey[], b: readonly PropertyKey[]) => a.length === b.length && a.every((p, i) => p === b[i]);

/**
 * `${VAR}` always yields text; where the schema wants a number or a boolean (`timeoutMs:
 * ${ROUTE_TIMEOUT_MS:-5000}`, `phi: ${RECORDS_PHI:-true}`), a value that was one variable is read
 * as one. Returns whether anything changed; text that is neither stays, and its error names the field.
 */
function typedSubstitutions(raw: unknown, issues: readonly z.core.$ZodIssue[], whole: ReadonlyArray<readonly PropertyKey[]>): boolean {
  let changed = false;
  for (const issue of issues) {
    if (issue.code !== 'invalid_type' && issue.code !== 'invalid_union') continue;
    if (!whole.some((p) => samePath(p, issue.path))) continue;
    let parent = raw as Record<PropertyKey, unknown>;
    for (const key of issue.path.slice(0, -1)) parent = parent[key] as Record<PropertyKey, unknown>;
    const key = issue.path.at(-1)!;
    const text = parent[key];
    if (typeof text !== 'string') continue;
    const t = text.trim();
    const typed = t === 'true' ? true : t === 'false' ? false : t !== '' && Number.isFinite(Number(t)) ? Number(t) : undefined;
    if (typed === undefined) continue;
    parent[key] = typed;
    changed = true;
  }
  return changed;
}

export function parseRoutesFile(text: string, env: NodeJS.ProcessEnv): RoutesFile {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    // prettyErrors ends the first line of each message with "at line L, column C:".
    throw new ConfigError(doc.errors.map((e) => `YAML syntax: ${e.message.split('\n')[0]!.replace(/:$/, '')}`));
  }
  const problems: string[] = [];
  const whole: Array<readonly PropertyKey[]> = [];
  const raw = substitute(doc.toJS(), env, [], problems, whole);
  if (problems.length > 0) throw new ConfigError(problems);
  // With the input on each issue, a present value of the wrong type is not reported as missing.
  let result = routesFileSchema.safeParse(raw, { reportInput: true });
  if (!result.success && typedSubstitutions(raw, result.error.issues, whole)) result = routesFileSchema.safeParse(raw, { reportInput: true });
  if (!result.success) throw new ConfigError(formatIssues(result.error.issues));
  return result.data;
}

export async function loadRoutesFile(file: string, env: NodeJS.ProcessEnv): Promise<RoutesFile> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError([`ROUTES_FILE: cannot read "${file}" (${code ?? 'error'}); point ROUTES_FILE at the routes YAML file`]);
  }
  try {
    return parseRoutesFile(text, env);
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(err.problems.map((p) => `${file}: ${p}`));
    throw err;
  }
}

export async function loadConfig(source: NodeJS.ProcessEnv): Promise<GatewayConfig> {
  const parsed = parseEnv(source);
  if ('errors' in parsed) throw new ConfigError(parsed.errors);
  const { env } = parsed;
  const redisChoices = [env.REDIS_URL !== undefined && 'REDIS_URL', env.REDIS_SENTINELS !== undefined && 'REDIS_SENTINELS', env.REDIS_CLUSTER_NODES !== undefined && 'REDIS_CLUSTER_NODES'].filter(
    (v): v is string => v !== false,
  );
  if (redisChoices.length > 1) {
    throw new ConfigError([
      `${redisChoices[1]}: is set together with ${redisChoices[0]}; set one: REDIS_URL for one Redis, REDIS_SENTINELS with REDIS_SENTINEL_NAME for Sentinel, REDIS_CLUSTER_NODES for Redis Cluster`,
    ]);
  }
  if (env.REDIS_SENTINELS !== undefined && env.REDIS_SENTINEL_NAME === undefined) {
    throw new ConfigError(['REDIS_SENTINEL_NAME: is required with REDIS_SENTINELS: the name the sentinels monitor the primary under (sentinel monitor <name> ...)']);
  }
  const sharedStore = redisChoices.length > 0;
  if (env.NODE_ENV === 'production' && !sharedStore) {
    throw new ConfigError([
      'REDIS_URL: is required when NODE_ENV=production, so that limits, revocations and sessions hold across replicas (or REDIS_SENTINELS with REDIS_SENTINEL_NAME, or REDIS_CLUSTER_NODES)',
    ]);
  }
  if (env.REDIS_TLS && env.REDIS_URL !== undefined) {
    throw new ConfigError(['REDIS_TLS: goes with REDIS_SENTINELS or REDIS_CLUSTER_NODES; with REDIS_URL, write rediss://host:port instead']);
  }
  if (env.REDIS_CA_FILE !== undefined && !env.REDIS_URL?.startsWith('rediss://') && !env.REDIS_TLS) {
    throw new ConfigError([
      env.REDIS_URL !== undefined
        ? 'REDIS_CA_FILE: is set but REDIS_URL is not a rediss:// URL; use rediss://host:port for TLS to Redis, or unset REDIS_CA_FILE'
        : 'REDIS_CA_FILE: is set but REDIS_TLS is not true; set REDIS_TLS=true for TLS to Redis, or unset REDIS_CA_FILE',
    ]);
  }
  if (env.WORKERS > 1 && !sharedStore) {
    throw new ConfigError([
      `WORKERS: ${env.WORKERS} worker processes need REDIS_URL, so that limits, revocations and sessions are shared by all of them; set REDIS_URL or WORKERS=1`,
    ]);
  }
  if (env.NODE_ENV === 'production' && !env.TLS_CERT_FILE && !env.TLS_TERMINATED_BY_PROXY) {
    throw new ConfigError([
      'TLS_CERT_FILE: is required when NODE_ENV=production (the spec requires TLS); set TLS_CERT_FILE and TLS_KEY_FILE, or TLS_TERMINATED_BY_PROXY=true when a load balancer in front of the gateway ends TLS',
    ]);
  }
  const routes = await loadRoutesFile(env.ROUTES_FILE, source);
  return { env, routes, routesFile: env.ROUTES_FILE, source };
}
