import { parseEnv } from '../config/env.js';
import { loadConfig, loadRoutesFile } from '../config/load.js';
import { ConfigError } from '../errors.js';
import { compiled } from './context.js';

export interface Validation {
  ok: boolean;
  routesFile: string;
  problems: string[];
  routes: number;
  services: number;
}

/**
 * The environment and the routes file, checked as the gateway checks them at start-up (and on a
 * reload): the variables, the routes file against its schema, and the compiled config. Every
 * problem is reported with its field path, not only the first; no value of a secret is printed
 * (the checks never quote one).
 */
export async function validate(source: NodeJS.ProcessEnv): Promise<Validation> {
  const parsed = parseEnv(source);
  const routesFile = 'errors' in parsed ? (source.ROUTES_FILE ?? 'config/routes.yaml') : parsed.env.ROUTES_FILE;
  const problems: string[] = [];
  const none = { ok: false, routesFile, routes: 0, services: 0 };
  if ('errors' in parsed) {
    problems.push(...parsed.errors);
    // The routes file is still worth checking: its problems are independent of the variables'.
    await loadRoutesFile(routesFile, source).catch((err: unknown) => problems.push(...problemsOf(err)));
    return { ...none, problems };
  }
  let config;
  try {
    config = await loadConfig(source);
  } catch (err) {
    return { ...none, problems: problemsOf(err) };
  }
  try {
    const { table, close } = await compiled(config);
    close();
    return { ok: true, routesFile, problems: [], routes: table.routes.length, services: table.services.size };
  } catch (err) {
    return { ...none, problems: problemsOf(err) };
  }
}

function problemsOf(err: unknown): string[] {
  if (err instanceof ConfigError) return err.problems;
  return [(err as Error).message];
}
