import type { ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { start, waitFor200 } from './procs.js';

/** What the upstream answers: small and fixed, so that it costs next to nothing to serve. */
export const UPSTREAM_BODY = '{"status":"ok","service":"bench-upstream"}';

// Everything nginx would otherwise write under /var stays in the run's temp dir.
function common(dir: string, name: string): string {
  return `worker_processes 1;
pid ${dir}/${name}.pid;
error_log ${dir}/${name}.error.log warn;
events { worker_connections 4096; }`;
}

function tempPaths(dir: string, name: string): string {
  return ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${dir}/${name}-${t};`).join('\n  ');
}

export function upstreamConf(dir: string, port: number): string {
  return `${common(dir, 'upstream')}
http {
  ${tempPaths(dir, 'upstream')}
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:${port} backlog=4096;
    default_type application/json;
    location / { return 200 '${UPSTREAM_BODY}'; }
  }
}
`;
}

/**
 * The reference proxy, set up the way one would run it in front of a service: upstream
 * keep-alive, HTTP/1.1 to the upstream, the forwarding headers and a request id, and an access
 * log line per request in a JSON shape close to the gateway's, buffered like the gateway's
 * logger (4 KiB, flushed within 250 ms).
 */
export function proxyConf(dir: string, port: number, upstreamPort: number, connections: number): string {
  return `${common(dir, 'proxy')}
http {
  ${tempPaths(dir, 'proxy')}
  log_format gateway_like escape=json
    '{"timestamp":"$time_iso8601","level":"INFO","service":"nginx","request_id":"$request_id",'
    '"method":"$request_method","path":"$uri","status_code":$status,"response_time_ms":$request_time,'
    '"user_agent":"$http_user_agent","ip_address":"$remote_addr","upstream":"$upstream_addr","message":"request"}';
  access_log ${dir}/proxy.access.log gateway_like buffer=4k flush=250ms;
  keepalive_requests 1000000;
  upstream bench {
    server 127.0.0.1:${upstreamPort};
    keepalive ${connections};
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    location /plain {
      proxy_pass http://bench/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Request-ID $request_id;
      add_header X-Request-ID $request_id always;
    }
  }
}
`;
}

export async function startNginx(nginx: string, dir: string, name: string, conf: string, cpu: string | null, probeUrl: string): Promise<ChildProcess> {
  const file = join(dir, `${name}.conf`);
  await writeFile(file, conf);
  const child = start(nginx, ['-p', `${dir}/`, '-c', file, '-e', `${dir}/${name}.error.log`, '-g', 'daemon off;'], { cpu });
  await waitFor200(probeUrl, child, `nginx (${name})`);
  return child;
}
