import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { freePort } from '../helpers/ports.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Runs the image's HEALTHCHECK command (src/healthcheck.ts) against a port; resolves with its exit code. */
function healthcheck(port: number): Promise<number | null> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/healthcheck.ts'], { cwd: REPO_ROOT, env: { PATH: process.env.PATH, PORT: String(port) }, stdio: 'ignore' });
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

describe("the container's HEALTHCHECK command", () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/open', auth: 'public' }]));
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('exits 0 while the gateway is alive and 1 when nothing answers', async () => {
    assert.equal(await healthcheck(gw.port), 0);
    assert.equal(await healthcheck(await freePort()), 1);
  });
});
