/**
 * The gateway routes, authorises and forwards one canonical path, so that no spelling of a path
 * can match one route at the gateway and reach another at the upstream:
 * - percent-encoded unreserved characters are decoded (`/ch%61t` is `/chat`), other escapes are
 *   kept with upper-case hex;
 * - encoded `/`, `\` and NUL, raw `\`, and control characters are refused;
 * - repeated slashes are merged and `.` / `..` segments resolved; `..` above the root is refused.
 * Returns null when the path must be refused with 400.
 */
export function normalizePath(path: string): string | null {
  if (path.charCodeAt(0) !== 47 /* / */) return null;
  let needsWork = false;
  let prev = 0;
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    // A raw `#` is no part of a request target: an upstream URL parser would cut the path there.
    if (c <= 0x20 || c === 0x7f || c === 0x5c /* \ */ || c === 0x23 /* # */ || c >= 0x80) return null;
    if (c === 0x25 /* % */ || c === 0x3b /* ; */ || (prev === 47 && (c === 47 || c === 46 /* . */))) needsWork = true;
    prev = c;
  }
  return needsWork ? canonicalise(path) : path;
}

const HEX = '0123456789ABCDEF';

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 65 && c <= 70) return c - 55;
  if (c >= 97 && c <= 102) return c - 87;
  return -1;
}

function isUnreserved(c: number): boolean {
  return (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 45 || c === 46 || c === 95 || c === 126;
}

function decodeUnreserved(path: string): string | null {
  let out = '';
  for (let i = 0; i < path.length; i++) {
    const ch = path[i]!;
    if (ch !== '%') {
      out += ch;
      continue;
    }
    const hi = hexValue(path.charCodeAt(i + 1));
    const lo = hexValue(path.charCodeAt(i + 2));
    if (hi < 0 || lo < 0) return null;
    const byte = hi * 16 + lo;
    // Encoded separators and NUL are how traversal and truncation tricks get past a router.
    if (byte === 0x2f || byte === 0x5c || byte === 0) return null;
    out += isUnreserved(byte) ? String.fromCharCode(byte) : `%${HEX[hi]}${HEX[lo]}`;
    i += 2;
  }
  return out;
}

function canonicalise(path: string): string | null {
  const decoded = decodeUnreserved(path);
  if (decoded === null) return null;
  // Escapes that are not UTF-8 (overlong forms such as %C0%AE for '.') mean different things to
  // different decoders: refuse them rather than guess which one the upstream uses.
  if (decoded.includes('%')) {
    try {
      decodeURIComponent(decoded);
    } catch {
      return null;
    }
  }
  const segments = decoded.split('/');
  const out: string[] = [];
  const last = segments.length - 1;
  for (let i = 1; i <= last; i++) {
    const seg = segments[i]!;
    // `..;x` and `.;x` are dot segments to servlet containers (Tomcat, Jetty), which drop path
    // parameters after `;` before resolving: `/public/..;/admin` is `/admin` to them.
    if (seg.startsWith('..;') || seg.startsWith('.;')) return null;
    if (seg === '..') {
      if (out.length === 0) return null;
      out.pop();
      if (i === last) out.push('');
    } else if (seg === '.') {
      if (i === last) out.push('');
    } else if (seg === '') {
      if (i === last) out.push('');
    } else {
      out.push(seg);
    }
  }
  // `/a/./` and `/a/b/..` both leave a trailing empty segment; one is enough.
  while (out.length > 1 && out[out.length - 1] === '' && out[out.length - 2] === '') out.pop();
  return '/' + out.join('/');
}
