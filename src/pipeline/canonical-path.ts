import { PASS, stage, type Refusal } from './exchange.js';
import { normalizePath } from './normalize-path.js';

const BAD_PATH: Refusal = Object.freeze({ code: 'GW_BAD_PATH', detail: 'the request path is not a valid absolute path' });

/** Stage: one spelling of the path (normalize-path.ts), which everything after it matches and authorises; 400 otherwise. */
export const canonicalPath = stage('canonical-path', (ex, req) => {
  const url = req.url!;
  const q = url.indexOf('?');
  const path = normalizePath(q === -1 ? url : url.slice(0, q));
  if (path === null) return BAD_PATH;
  ex.path = path;
  ex.query = q === -1 ? '' : url.slice(q + 1);
  return PASS;
});
