import { z } from 'zod';
import { routesFileSchema } from './routes-schema.js';

/** A value that is one `${NAME}` or `${NAME:-default}` (load.ts reads it as a number or a boolean where one is wanted). */
const VARIABLE = { type: 'string', pattern: '^\\$\\{[A-Z_][A-Z0-9_]*(:-[^}]*)?\\}$' } as const;

/**
 * The routes file's JSON Schema, generated from the zod schema the gateway validates with, for
 * editors (`# yaml-language-server: $schema=…` at the top of config/routes.yaml). Where a
 * number or a boolean is wanted, a lone `${VAR}` is accepted too, as the gateway accepts it.
 * Checks the zod schema makes in code (a pattern's parameters, a transform's targets) are the
 * gateway's own: `api-gateway validate` runs them.
 */
export function routesJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(routesFileSchema, { io: 'input', unrepresentable: 'any', target: 'draft-2020-12' }) as Record<string, unknown>;
  return {
    ...(allowVariables(schema) as Record<string, unknown>),
    title: 'api-gateway routes file',
    description: 'config/routes.yaml of the healthcare API gateway; see the README, "Routes file".',
  } as Record<string, unknown>;
}

function allowVariables(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(allowVariables);
  if (node === null || typeof node !== 'object') return node;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node)) out[k] = allowVariables(v);
  const type = out.type;
  if (type === 'integer' || type === 'number' || type === 'boolean') {
    const { default: fallback, description, ...typed } = out;
    return { ...(description === undefined ? {} : { description }), ...(fallback === undefined ? {} : { default: fallback }), anyOf: [typed, VARIABLE] };
  }
  return out;
}
