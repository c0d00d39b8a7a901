// Fastify 5 with @fastify/http-proxy (undici underneath): a proxy with a framework and no features.
import Fastify from 'fastify';
import proxy from '@fastify/http-proxy';

const app = Fastify({ logger: false });
await app.register(proxy, { upstream: process.env.UPSTREAM });
await app.listen({ port: Number(process.env.PORT), host: '127.0.0.1' });

// An orderly exit on SIGTERM, so that node --cpu-prof writes its profile.
process.once('SIGTERM', () => process.exit(0));
