import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ERRORS } from '../../src/errors.js';

const SRC = new URL('../../src/', import.meta.url).pathname;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? sources(path) : name.endsWith('.ts') ? [path] : [];
  });
}

describe('error codes', () => {
  it('every GW_ code the gateway can answer with is declared once, in the registry', () => {
    const used = new Set<string>();
    for (const file of sources(SRC)) for (const m of readFileSync(file, 'utf8').matchAll(/\bGW_[A-Z_]+\b/g)) used.add(m[0]);
    const unknown = [...used].filter((code) => !(code in ERRORS));
    assert.deepEqual(unknown, [], `codes used outside the registry: ${unknown.join(', ')}`);
  });

  it('every code in the registry is answered with somewhere, and is documented in the README', () => {
    const code = sources(SRC)
      .filter((f) => !f.endsWith('errors.ts'))
      .map((f) => readFileSync(f, 'utf8'))
      .join('\n');
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    for (const name of Object.keys(ERRORS)) {
      // GW_AUTH_* codes come from the verifier's reasons; GW_UPSTREAM_ERROR from the mapped-error writer in errors.ts.
      if (name !== 'GW_UPSTREAM_ERROR') assert.ok(code.includes(name), `${name} is never used`);
      assert.ok(readme.includes(name) || (name.startsWith('GW_AUTH_') && readme.includes('GW_AUTH_')), `${name} is not in the README`);
    }
  });
});
