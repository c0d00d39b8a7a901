// The Node ceiling: a hand-written reverse proxy on node:http and an undici keep-alive pool, with
// no features at all (no auth, no limits, no logs). Every request goes to UPSTREAM, path kept.
import { createServer } from 'node:http';
import { Pool } from 'undici';

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'host']);
const pool = new Pool(process.env.UPSTREAM, { connections: 128 });

function forwardHeaders(req) {
  const out = {};
  for (const name in req.headers) if (!HOP_BY_HOP.has(name)) out[name] = req.headers[name];
  out['x-forwarded-for'] = req.socket.remoteAddress;
  return out;
}

createServer((req, res) => {
  pool
    .stream(
      { method: req.method, path: req.url, headers: forwardHeaders(req), body: req.method === 'GET' || req.method === 'HEAD' ? null : req },
      ({ statusCode, headers }) => {
        for (const name of HOP_BY_HOP) delete headers[name];
        res.writeHead(statusCode, headers);
        return res;
      },
    )
    .catch(() => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
}).listen(Number(process.env.PORT), '127.0.0.1');

// An orderly exit on SIGTERM, so that node --cpu-prof writes its profile.
process.once('SIGTERM', () => process.exit(0));
