/**
 * The container's HEALTHCHECK: asks the gateway's liveness endpoint on loopback, over HTTPS when
 * it serves TLS (its own certificate, so the name is not checked), and exits 0 or 1.
 */
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';

const tls = Boolean(process.env.TLS_CERT_FILE);
const port = Number(process.env.PORT ?? 8090);
const req = (tls ? httpsRequest : httpRequest)({ host: '127.0.0.1', port, path: '/health/live', timeout: 2_000, rejectUnauthorized: false }, (res) => {
  res.resume();
  process.exit(res.statusCode === 200 ? 0 : 1);
});
req.on('timeout', () => req.destroy(new Error('timeout')));
req.on('error', () => process.exit(1));
req.end();
