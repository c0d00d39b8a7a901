/** CRC16-CCITT (XMODEM), the checksum Redis Cluster takes of a key, by table. */
const TABLE = new Uint16Array(256);
for (let i = 0; i < 256; i++) {
  let c = i << 8;
  for (let k = 0; k < 8; k++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
  TABLE[i] = c;
}

export const SLOTS = 16384;

/**
 * The hash slot of a key, as Redis Cluster computes it: of the part between the first `{` and the
 * next `}` when that part is not empty (a hash tag), of the whole key otherwise. Keys are hashed
 * as UTF-8 bytes; ASCII keys (the common case) are read without an encoding step.
 */
export function hashSlot(key: string): number {
  let start = 0;
  let end = key.length;
  const open = key.indexOf('{');
  if (open !== -1) {
    const close = key.indexOf('}', open + 1);
    if (close > open + 1) {
      start = open + 1;
      end = close;
    }
  }
  let crc = 0;
  for (let i = start; i < end; i++) {
    const c = key.charCodeAt(i);
    if (c < 0x80) crc = ((crc << 8) & 0xffff) ^ TABLE[((crc >> 8) ^ c) & 0xff]!;
    else return slotOfBytes(Buffer.from(key.slice(start, end), 'utf8'));
  }
  return crc & (SLOTS - 1);
}

function slotOfBytes(bytes: Buffer): number {
  let crc = 0;
  for (const b of bytes) crc = ((crc << 8) & 0xffff) ^ TABLE[((crc >> 8) ^ b) & 0xff]!;
  return crc & (SLOTS - 1);
}
