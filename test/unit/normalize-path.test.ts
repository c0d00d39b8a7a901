import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { normalizePath } from '../../src/pipeline/normalize-path.js';

// Fixed seeds keep a failure reproducible from one run to the next.
const RUNS = { numRuns: 2_000, seed: 0x6a7e };

const UNRESERVED = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~';

describe('normalizePath: examples', () => {
  const canonical: Array<[string, string]> = [
    ['/', '/'],
    ['/api/v1/chat/history', '/api/v1/chat/history'],
    ['/a/./b', '/a/b'],
    ['/a/../b', '/b'],
    ['/a/b/..', '/a/'],
    ['/a/b/../', '/a/'],
    ['/a/.', '/a/'],
    ['/a/./', '/a/'],
    ['/.', '/'],
    ['/a/..', '/'],
    ['//a///b//', '/a/b/'],
    ['/a/%2e%2e/b', '/b'],
    ['/a/%2E./b', '/b'],
    ['/a/.%2e/b', '/b'],
    ['/a/%2e/b', '/a/b'],
    ['/ch%61t', '/chat'],
    ['/%41%7A%30%2D%2E%5F%7E', '/Az0-._~'],
    ['/a%20b', '/a%20b'],
    ['/a%3bb%3Bc', '/a%3Bb%3Bc'],
    ['/%c3%a9', '/%C3%A9'],
    ['/%25', '/%25'],
    ['/%252e%252e/x', '/%252e%252e/x'],
    ['/a/...', '/a/...'],
    ['/a/..x/b', '/a/..x/b'],
    ['/a:b@c!$&\'()*+,;=', '/a:b@c!$&\'()*+,;='],
  ];
  for (const [input, expected] of canonical) {
    it(`${input} -> ${expected}`, () => assert.equal(normalizePath(input), expected));
  }

  const refused = [
    '',
    'a/b',
    '*',
    'http://other.example/a',
    '/..',
    '/../a',
    '/a/../..',
    '/a/%2e%2e/%2e%2e',
    '/a%2fb',
    '/a%2Fb',
    '/a/..%2f..%2fb',
    '/a%5cb',
    '/a\\b',
    '/a%00b',
    '/a\u0000b',
    '/a b',
    '/a\tb',
    '/a\u007fb',
    '/caf\u00e9',
    '/a%',
    '/a%2',
    '/a%zz',
    '/a%%32e',
  ];
  for (const input of refused) {
    it(`refuses ${JSON.stringify(input)}`, () => assert.equal(normalizePath(input), null));
  }
});

/** Paths in the shape an attacker would try: dots, slashes and their encodings, in any mix. */
const trickyPath = fc
  .array(
    fc.oneof(
      fc.constantFrom('/', '.', '..', '%2e', '%2E', '%2f', '%5c', '%00', '%25', '%41', '%7e', '%3B', '%c0%ae', '\\', ';', '~'),
      fc.string({ unit: fc.constantFrom(...UNRESERVED.split('')), minLength: 1, maxLength: 4 }),
    ),
    { maxLength: 12 },
  )
  .map((parts) => '/' + parts.join(''));

const segment = fc.string({ unit: fc.constantFrom(...UNRESERVED.split('')), minLength: 1, maxLength: 8 }).filter((s) => s !== '.' && s !== '..');

/** Resolves dot segments the way a file system or an upstream router would, after decoding. */
function escapesRoot(decodedPath: string): boolean {
  let depth = 0;
  for (const seg of decodedPath.split('/').slice(1)) {
    if (seg === '..') depth--;
    else if (seg !== '.' && seg !== '') depth++;
    if (depth < 0) return true;
  }
  return false;
}

describe('normalizePath: properties', () => {
  it('is idempotent', () => {
    fc.assert(
      fc.property(trickyPath, (p) => {
        const once = normalizePath(p);
        if (once !== null) assert.equal(normalizePath(once), once);
      }),
      RUNS,
    );
  });

  it('never returns dot segments, empty segments or an encoded separator', () => {
    fc.assert(
      fc.property(trickyPath, (p) => {
        const out = normalizePath(p);
        if (out === null) return;
        assert.ok(out.startsWith('/'));
        for (const bad of ['/./', '/../', '//', '%2F', '%2f', '%5C', '%5c', '%00', '\\']) assert.ok(!out.includes(bad), `${p} -> ${out} contains ${bad}`);
        assert.ok(!out.endsWith('/.') && !out.endsWith('/..'), `${p} -> ${out}`);
      }),
      RUNS,
    );
  });

  it('never yields a path that escapes the root once an upstream decodes it', () => {
    fc.assert(
      fc.property(trickyPath, (p) => {
        const out = normalizePath(p);
        if (out === null) return;
        let decoded: string;
        try {
          decoded = decodeURIComponent(out);
        } catch {
          decoded = out;
        }
        assert.ok(!escapesRoot(decoded), `${p} -> ${out} decodes to ${decoded}`);
        assert.ok(!decoded.includes('\\') && !decoded.includes('\u0000'), `${p} -> ${out} decodes to ${JSON.stringify(decoded)}`);
      }),
      RUNS,
    );
  });

  it('leaves a path of plain unreserved segments unchanged', () => {
    fc.assert(
      fc.property(fc.array(segment, { minLength: 1, maxLength: 8 }), fc.boolean(), (segments, trailingSlash) => {
        const p = '/' + segments.join('/') + (trailingSlash ? '/' : '');
        assert.equal(normalizePath(p), p);
      }),
      RUNS,
    );
  });

  it('gives every spelling of a plain path, with its unreserved characters percent-encoded, that one path', () => {
    fc.assert(
      fc.property(fc.array(segment, { minLength: 1, maxLength: 5 }), fc.infiniteStream(fc.boolean()), (segments, encodeFlags) => {
        const p = '/' + segments.join('/');
        const spelled = p.replace(/[^/]/g, (ch) => (encodeFlags.next().value ? `%${ch.charCodeAt(0).toString(16)}` : ch));
        assert.equal(normalizePath(spelled), p);
      }),
      RUNS,
    );
  });
});
