// The assembly one would build from Fastify's plugins instead of the gateway: @fastify/jwt
// (HS256, the same secret and token as the gateway's rows), a role check, @fastify/rate-limit
// counting per user in Redis (ioredis), and @fastify/http-proxy to the same upstream.
import Fastify from 'fastify';
import jwt from '@fastify/jwt';
import rateLimit from '@fastify/rate-limit';
import proxy from '@fastify/http-proxy';
import { Redis } from 'ioredis';

const ROLES = new Set(['health_provider', 'admin']);
const app = Fastify({ logger: false });
await app.register(jwt, { secret: process.env.JWT_SECRET, verify: { algorithms: ['HS256'] } });
app.addHook('onRequest', async (request, reply) => {
  try {
    await request.jwtVerify();
  } catch {
    return reply.code(401).send({ error: 'unauthorized' });
  }
  if (!ROLES.has(request.user.role)) return reply.code(403).send({ error: 'forbidden' });
});
await app.register(rateLimit, {
  redis: new Redis(process.env.REDIS_URL, { connectTimeout: 500, maxRetriesPerRequest: 1 }),
  hook: 'preHandler',
  max: 1_000_000,
  timeWindow: 60_000,
  keyGenerator: (request) => `user:${request.user.sub}`,
});
await app.register(proxy, { upstream: process.env.UPSTREAM });
await app.listen({ port: Number(process.env.PORT), host: '127.0.0.1' });

// An orderly exit on SIGTERM, so that node --cpu-prof writes its profile.
process.once('SIGTERM', () => process.exit(0));
