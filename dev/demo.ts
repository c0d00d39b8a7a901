import { randomBytes } from 'node:crypto';
import type { Server } from 'node:http';
import { startGateway } from '../src/start.js';
import { createAuditStandIn } from './stand-ins/audit-logging.js';
import { createAuthStandIn, issueAccessToken, TEST_USERS } from './stand-ins/auth-rbac.js';
import { createChatHistoryStandIn } from './stand-ins/chat-history.js';
import { close, listen } from './stand-ins/http-util.js';

/**
 * `npm run demo`: the gateway on its embedded defaults (in-memory stores, a generated secret)
 * with local stand-ins for auth-rbac (:8080), chat-history (:8002) and audit-logging (:8084),
 * all on loopback. Prints curl lines that work as pasted; Ctrl-C stops everything.
 */
const HOST = '127.0.0.1';
const ports = { gateway: Number(process.env.PORT ?? 8090), auth: 8080, chat: 8002, audit: 8084 };
const jwtSecret = process.env.JWT_SECRET ?? randomBytes(32).toString('base64url');
const expiresIn = 7200;

const servers: Server[] = [];
async function standIn(name: string, server: Server, port: number): Promise<void> {
  try {
    await listen(server, port, HOST);
    servers.push(server);
  } catch (err) {
    throw new Error(`cannot start the ${name} stand-in on ${HOST}:${port} (${(err as NodeJS.ErrnoException).code}); free the port and retry`);
  }
}

async function main(): Promise<void> {
  await standIn('auth-rbac', createAuthStandIn({ jwtSecret, expiresIn }), ports.auth);
  await standIn('chat-history', createChatHistoryStandIn(), ports.chat);
  await standIn('audit-logging', createAuditStandIn().server, ports.audit);

  const { gateway } = await startGateway({
    ...process.env,
    HOST,
    PORT: String(ports.gateway),
    JWT_SECRET: jwtSecret,
    JWT_EXPIRES_IN: String(expiresIn),
    AUTH_SERVICE_URL: `http://${HOST}:${ports.auth}`,
    AUDIT_SERVICE_URL: `http://${HOST}:${ports.audit}`,
    CHAT_HISTORY_URL: `http://${HOST}:${ports.chat}`,
    ROUTES_FILE: process.env.ROUTES_FILE ?? 'config/routes.yaml',
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'INFO',
    REDIS_URL: '',
    ADMIN_PORT: process.env.ADMIN_PORT ?? '9091',
  });

  const provider = TEST_USERS[0]!;
  const token = await issueAccessToken(provider, { jwtSecret, expiresIn });
  const base = `http://localhost:${ports.gateway}`;
  process.stdout.write(
    [
      '',
      `api-gateway demo running on ${base} (stand-ins: auth-rbac :${ports.auth}, chat-history :${ports.chat}, audit-logging :${ports.audit})`,
      'In-memory stores and a generated JWT secret; nothing here is for production. Try:',
      '',
      '# health',
      `curl ${base}/health`,
      '',
      '# login (test user of the auth-rbac stand-in)',
      `curl -X POST ${base}/api/v1/auth/login -H "Content-Type: application/json" -d '{"email":"${provider.email}","password":"${provider.password}","mfa_token":"${provider.mfa}"}'`,
      '',
      `# chat history, with an access token for ${provider.email} (valid ${expiresIn / 3600} h)`,
      `curl "${base}/api/v1/chat/history?session_id=3fa85f64-5717-4562-b3fc-2c963f66afa6" -H "Authorization: Bearer ${token}"`,
      '',
      "# the assistant's answer as it is written: server-sent events, each passed on as it is sent",
      `curl -N "${base}/api/v1/chat/stream?session_id=3fa85f64-5717-4562-b3fc-2c963f66afa6" -H "Authorization: Bearer ${token}"`,
      '',
      '# the same without a token: 401',
      `curl -i "${base}/api/v1/chat/history?session_id=3fa85f64-5717-4562-b3fc-2c963f66afa6"`,
      '',
      '# Prometheus metrics, and diagnostics on the loopback-only admin listener',
      `curl ${base}/metrics`,
      `curl http://127.0.0.1:${process.env.ADMIN_PORT ?? '9091'}/debug/vars`,
      '',
      '# the status page for operators (open it in a browser on this machine; JSON at /status.json)',
      `http://127.0.0.1:${process.env.ADMIN_PORT ?? '9091'}/status`,
      '',
      'Ctrl-C stops the gateway and the stand-ins.',
      '',
      '',
    ].join('\n'),
  );

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    void gateway
      .close()
      .then(() => Promise.all(servers.map(close)))
      .finally(() => process.exit(0));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`demo: ${err instanceof Error ? err.message : String(err)}\n`);
  for (const s of servers) s.close();
  process.exit(1);
});
