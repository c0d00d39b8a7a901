import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { exportJWK, exportSPKI, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import { request } from 'undici';
import type { TestGateway } from './gateway.js';
import { expectProblem, read, type Answer, type ProblemBody } from './http.js';
import { signToken, TEST_SECRET, type TokenOptions } from './tokens.js';
import { startUpstream, type TestUpstream } from './upstream.js';

/** Building blocks for JWT tests: hand-made tokens, a JWKS endpoint, the shape of a refusal. */

/** base64url of a string as is, or of a value as JSON. */
export function b64url(value: unknown): string {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

/** The HS256 signature of `signingInput` under `key` (any bytes: a secret, a PEM text...). */
export function hs256(signingInput: string, key: string | Buffer = TEST_SECRET): string {
  return createHmac('sha256', key).update(signingInput).digest('base64url');
}

/** A compact JWS built by hand: header and payload as given, HS256-signed under `key` unless a signature is given. */
export function handmadeToken(header: unknown, payload: unknown, signature?: string, key?: string | Buffer): string {
  const input = `${b64url(header)}.${b64url(payload)}`;
  return `${input}.${signature ?? hs256(input, key)}`;
}

/** signToken's token with a `kid` in its header, signed under the same secret. */
export async function signTokenWithKid(kid: string, options: TokenOptions = {}): Promise<string> {
  const payload: unknown = JSON.parse(Buffer.from((await signToken(options)).split('.')[1]!, 'base64url').toString('utf8'));
  return handmadeToken({ alg: 'HS256', typ: 'JWT', kid }, payload, undefined, options.secret ?? TEST_SECRET);
}

export interface RsaSigningKey {
  kid: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  /** The public key as the JWKS serves it (kid, alg RS256, use sig). */
  jwk: JWK;
  /** The public key as SPKI PEM text. */
  pem: string;
}

export async function rsaSigningKey(kid: string): Promise<RsaSigningKey> {
  const { publicKey, privateKey } = await generateKeyPair('RS256');
  return { kid, privateKey, publicKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' }, pem: await exportSPKI(publicKey) };
}

export const JWKS_PATH = '/.well-known/jwks.json';

/** A JWKS endpoint on loopback serving the given public keys; `jwksUrl` is the key set document's URL. */
export async function startJwks(keys: readonly JWK[]): Promise<TestUpstream & { jwksUrl: string }> {
  const body = JSON.stringify({ keys });
  const server = await startUpstream((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  return { ...server, jwksUrl: `${server.url}${JWKS_PATH}` };
}

export interface AuthRefusalOptions {
  /** The status expected: 401 for the caller's fault (default), 503 when the key source is down. */
  status?: number;
  path?: string;
}

/**
 * Sends `authorization` (or no such header) to the gateway and checks the refusal: the status,
 * the error shape with one of the codes, a Bearer challenge on a 401 (RFC 6750), no trace of
 * the credential in the body or the headers, and nothing sent to the upstream.
 */
export async function expectAuthRefused(
  gw: TestGateway,
  upstream: TestUpstream,
  authorization: string | undefined,
  code: string | readonly string[],
  { status = 401, path = '/records/refused' }: AuthRefusalOptions = {},
): Promise<{ answer: Answer; body: ProblemBody }> {
  const before = upstream.received.length;
  const answer = await read(request(`${gw.url}${path}`, { headers: authorization === undefined ? {} : { authorization } }));
  const codes = typeof code === 'string' ? [code] : code;
  assert.equal(answer.statusCode, status, `expected ${status} ${codes.join('|')}, got ${answer.statusCode}: ${answer.text}`);
  const got = (JSON.parse(answer.text) as { code?: unknown }).code;
  assert.ok(typeof got === 'string' && codes.includes(got), `expected code ${codes.join(' or ')}, got ${String(got)}`);
  const body = expectProblem(answer, status, got);

  const challenge = answer.headers['www-authenticate'];
  if (status === 401) {
    assert.equal(typeof challenge, 'string', 'a 401 must carry one WWW-Authenticate header');
    assert.match(challenge as string, /^Bearer(?: |$)/, `WWW-Authenticate: ${String(challenge)}`);
  }

  if (authorization !== undefined) {
    const credential = authorization.replace(/^\S*\s*/, '');
    const echoed = JSON.stringify(answer.headers) + answer.text;
    if (credential.length >= 8) assert.ok(!echoed.includes(credential), 'the answer echoes the credential');
    for (const part of credential.split('.')) {
      if (part.length >= 16) assert.ok(!echoed.includes(part), `the answer echoes a part of the token: ${part}`);
    }
  }

  assert.equal(upstream.received.length, before, `the upstream was called: ${JSON.stringify(upstream.received.slice(before).map((r) => r.url))}`);
  return { answer, body };
}
