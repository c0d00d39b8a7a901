import { parseArgs } from 'node:util';
import { routesJsonSchema } from '../config/routes-json-schema.js';
import { ConfigError } from '../errors.js';
import { cliConfig, compiled } from './context.js';
import { explain, explanationText } from './explain.js';
import { routeRows, routeRowsText } from '../config/route-rows.js';
import { inspectToken, tokenReportText } from './token-inspect.js';
import { validate } from './validate.js';

const USAGE = `usage: api-gateway <command>

  validate [ROUTES_FILE]         check the environment and the routes file as at start-up
  explain METHOD URL [-H 'Name: value']... [--token JWT] [--from ADDRESS]
                                 what the gateway would do with this request (nothing is sent or counted)
  token inspect JWT              decode a token and say why the gateway would refuse it, or that it passes
  routes                         the compiled route table
  schema                         the JSON Schema of the routes file

  --json                         machine-readable output (validate, explain, token inspect, routes)

The commands read the same environment as the gateway (JWT_SECRET, REDIS_URL, ROUTES_FILE, ...).
Exit codes: 0 ok (the request or token would pass), 1 refused or invalid, 2 a usage or config error.
`;

/** Exit codes: what a script or a CI step branches on. */
const OK = 0;
const REFUSED = 1;
const USAGE_ERROR = 2;

/**
 * The operator's command line (`npx api-gateway ...`). Each command answers from the same code and
 * config the gateway runs: the config loader, the compiled route table, the verifier, the stages.
 */
export async function runCli(argv: readonly string[], out: (text: string) => void, err: (text: string) => void): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        json: { type: 'boolean', default: false },
        header: { type: 'string', short: 'H', multiple: true, default: [] },
        token: { type: 'string' },
        from: { type: 'string', default: '127.0.0.1' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (e) {
    err(`api-gateway: ${(e as Error).message}\n\n${USAGE}`);
    return USAGE_ERROR;
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  const print = (value: unknown, text: string) => out(values.json ? `${JSON.stringify(value, null, 2)}\n` : text);
  if (values.help || command === undefined || command === 'help') {
    out(USAGE);
    return command === undefined && !values.help ? USAGE_ERROR : OK;
  }
  try {
    switch (command) {
      case 'validate': {
        if (rest.length > 1) return usage(err, 'validate takes at most one routes file');
        const result = await validate(rest[0] === undefined ? process.env : { ...process.env, ROUTES_FILE: rest[0] });
        print(result, result.ok ? `ok: ${result.routesFile}: ${result.routes} routes, ${result.services} services; the environment is valid\n` : `invalid (${result.routesFile}):\n${result.problems.map((p) => `  ${p}\n`).join('')}`);
        return result.ok ? OK : REFUSED;
      }
      case 'explain': {
        if (rest.length !== 2) return usage(err, 'explain takes a method and a URL');
        const headers: Record<string, string> = {};
        for (const h of values.header) {
          const at = h.indexOf(':');
          if (at <= 0) return usage(err, `-H "${h}": write it as 'Name: value'`);
          headers[h.slice(0, at).trim().toLowerCase()] = h.slice(at + 1).trim();
        }
        if (values.token !== undefined) headers.authorization = `Bearer ${values.token}`;
        const e = await explain(await cliConfig(), { method: rest[0]!, url: rest[1]!, headers, from: values.from });
        print(e, explanationText(e));
        return e.answer.code === null && e.answer.status === null ? OK : e.answer.status !== null && e.answer.status < 400 ? OK : REFUSED;
      }
      case 'token': {
        if (rest[0] !== 'inspect' || rest.length !== 2) return usage(err, 'token inspect takes one token');
        const report = await inspectToken(await cliConfig(), rest[1]!);
        print(report, tokenReportText(report));
        return report.verdict.passes ? OK : REFUSED;
      }
      case 'routes': {
        const config = await cliConfig();
        const { table, close } = await compiled(config);
        close();
        const rows = routeRows(config.routes, table);
        print(rows, routeRowsText(rows));
        return OK;
      }
      case 'schema':
        out(`${JSON.stringify(routesJsonSchema(), null, 2)}\n`);
        return OK;
      default:
        return usage(err, `unknown command "${command}"`);
    }
  } catch (e) {
    if (e instanceof ConfigError) {
      err(`api-gateway: ${e.message}\n`);
      return USAGE_ERROR;
    }
    throw e;
  }
}

function usage(err: (text: string) => void, problem: string): number {
  err(`api-gateway: ${problem}\n\n${USAGE}`);
  return USAGE_ERROR;
}
