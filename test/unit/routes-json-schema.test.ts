import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { parse } from 'yaml';
import { routesJsonSchema } from '../../src/config/routes-json-schema.js';

const shipped = JSON.parse(readFileSync(new URL('../../config/routes.schema.json', import.meta.url), 'utf8')) as Record<string, unknown>;
const routesYaml = readFileSync(new URL('../../config/routes.yaml', import.meta.url), 'utf8');

/** The JSON Schema editors validate config/routes.yaml with. */
describe('config/routes.schema.json', () => {
  const validate = new Ajv2020({ strict: false, allErrors: true }).compile(shipped);

  it('is the schema generated from the zod schema the gateway validates with (regenerate: npx api-gateway schema > config/routes.schema.json)', () => {
    assert.deepEqual(shipped, routesJsonSchema());
  });

  it('is named at the top of config/routes.yaml for editors', () => {
    assert.equal(routesYaml.split('\n')[0], '# yaml-language-server: $schema=./routes.schema.json');
  });

  it('accepts the shipped routes file, ${VAR} where a number or a boolean is wanted included', () => {
    assert.equal(validate(parse(routesYaml)), true, JSON.stringify(validate.errors));
    const file = { services: { s: { instances: ['http://a:1'] } }, routes: [{ name: 'x', path: '/x', service: 's', timeoutMs: '${ROUTE_TIMEOUT_MS:-5000}', phi: '${PHI:-true}' }] };
    assert.equal(validate(file), true, JSON.stringify(validate.errors));
  });

  it('points at an unknown field, a wrong type and a role that does not exist', () => {
    const file = { services: { s: { instances: ['http://a:1'] } }, routes: [{ name: 'x', path: '/x', service: 's', timout: 5, phi: 'yes', roles: ['doctor'] }] };
    assert.equal(validate(file), false);
    const paths = (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message ?? ''}`);
    assert.ok(paths.some((p) => p.startsWith('/routes/0 ') && p.includes('additional')), paths.join('; '));
    assert.ok(paths.some((p) => p.startsWith('/routes/0/phi')), paths.join('; '));
    assert.ok(paths.some((p) => p.startsWith('/routes/0/roles/0')), paths.join('; '));
  });
});
