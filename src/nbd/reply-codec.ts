/**
 * Transmission-phase replies, written into caller-supplied buffers (so the
 * session can pack many headers into one reused slab). Pure: no sockets.
 *
 * Simple reply (16):        u32 0x67446698, u32 error, u64 cookie [, READ data]
 * Structured chunk (20+n):  u32 0x668e33ef, u16 flags, u16 type, u64 cookie,
 *                           u32 payload length, payload
 * Extended chunk (32+n):    u32 0x6e8a278c, u16 flags, u16 type, u64 cookie,
 *                           u64 offset (echoes the request), u64 payload length, payload
 *
 * Chunk payloads:
 *   OFFSET_DATA        u64 offset, data
 *   ERROR              u32 error, u16 message length, message
 *   ERROR_OFFSET       u32 error, u16 message length, message, u64 offset
 *   BLOCK_STATUS       u32 context id, n x (u32 length, u32 flags)
 *   BLOCK_STATUS_EXT   u32 context id, u32 n, n x (u64 length, u64 flags)
 */
import {
  NBD_EXTENDED_REPLY_MAGIC,
  NBD_EXTENDED_REPLY_SIZE,
  NBD_MAX_STRING_BYTES,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_SIZE,
} from './constants.js';

const TWO_POW_32 = 0x1_0000_0000;

/** Which reply framing a connection negotiated. */
export const enum ReplyMode {
  /** Nothing negotiated: simple replies only. */
  Simple = 0,
  /** NBD_OPT_STRUCTURED_REPLY: 20-byte chunk headers (simple replies still allowed without data). */
  Structured = 1,
  /** NBD_OPT_EXTENDED_HEADERS: 32-byte chunk headers, never a simple reply. */
  Extended = 2,
}

/** Bytes of a chunk header in this mode (Structured or Extended). */
export function chunkHeaderSize(mode: ReplyMode): number {
  return mode === ReplyMode.Extended ? NBD_EXTENDED_REPLY_SIZE : NBD_STRUCTURED_REPLY_SIZE;
}

function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_POW_32), at);
  buf.writeUInt32BE(value % TWO_POW_32, at + 4);
}

/** Writes a 16-byte simple reply header; returns the bytes written. */
export function writeSimpleReply(buf: Buffer, at: number, error: number, cookieHi: number, cookieLo: number): number {
  buf.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, at);
  buf.writeUInt32BE(error, at + 4);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
  return NBD_SIMPLE_REPLY_SIZE;
}

/**
 * Writes a structured (20-byte) or extended (32-byte) chunk header; the
 * request offset halves are used only by the extended form. Returns the
 * bytes written.
 */
export function writeChunkHeader(
  mode: ReplyMode,
  buf: Buffer,
  at: number,
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  offsetHi: number,
  offsetLo: number,
  payloadLength: number,
): number {
  if (mode === ReplyMode.Extended) {
    buf.writeUInt32BE(NBD_EXTENDED_REPLY_MAGIC, at);
    buf.writeUInt16BE(flags, at + 4);
    buf.writeUInt16BE(type, at + 6);
    buf.writeUInt32BE(cookieHi, at + 8);
    buf.writeUInt32BE(cookieLo, at + 12);
    buf.writeUInt32BE(offsetHi, at + 16);
    buf.writeUInt32BE(offsetLo, at + 20);
    writeU64(buf, payloadLength, at + 24);
    return NBD_EXTENDED_REPLY_SIZE;
  }
  buf.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
  buf.writeUInt32BE(payloadLength, at + 16);
  return NBD_STRUCTURED_REPLY_SIZE;
}

/** The u64 offset that starts an OFFSET_DATA payload; returns 8. */
export function writeOffset(buf: Buffer, at: number, offset: number): number {
  writeU64(buf, offset, at);
  return 8;
}

/** Fixed part of an ERROR payload: u32 error, u16 message length. */
export const ERROR_PAYLOAD_FIXED = 6;

/** Writes an ERROR (or, with `offset`, ERROR_OFFSET) payload; returns the bytes written. */
export function writeErrorPayload(buf: Buffer, at: number, error: number, message: Buffer, offset?: number): number {
  buf.writeUInt32BE(error, at);
  buf.writeUInt16BE(message.length, at + 4);
  message.copy(buf, at + ERROR_PAYLOAD_FIXED);
  let n = ERROR_PAYLOAD_FIXED + message.length;
  if (offset !== undefined) n += writeOffset(buf, at + n, offset);
  return n;
}

/** Error message bytes: UTF-8, at most 4096 bytes, cut on a character boundary. */
export function errorMessageBytes(message: string): Buffer {
  const b = Buffer.from(message, 'utf8');
  if (b.length <= NBD_MAX_STRING_BYTES) return b;
  let end = NBD_MAX_STRING_BYTES;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

/** Payload size of a BLOCK_STATUS (n extents) or BLOCK_STATUS_EXT chunk. */
export function blockStatusPayloadSize(extended: boolean, count: number): number {
  return extended ? 8 + 16 * count : 4 + 8 * count;
}

/**
 * Writes a BLOCK_STATUS or BLOCK_STATUS_EXT payload for `count` extents
 * taken from parallel arrays; returns the bytes written. In the compact form
 * each length must fit 32 bits (the caller clips extents to the request,
 * whose length is itself 32-bit there).
 */
export function writeBlockStatusPayload(
  buf: Buffer,
  at: number,
  extended: boolean,
  contextId: number,
  lengths: ArrayLike<number>,
  statuses: ArrayLike<number>,
  count: number,
): number {
  buf.writeUInt32BE(contextId, at);
  let pos = at + 4;
  if (extended) {
    buf.writeUInt32BE(count, pos);
    pos += 4;
    for (let i = 0; i < count; i++) {
      writeU64(buf, lengths[i]!, pos);
      buf.writeUInt32BE(0, pos + 8);
      buf.writeUInt32BE(statuses[i]!, pos + 12);
      pos += 16;
    }
  } else {
    for (let i = 0; i < count; i++) {
      buf.writeUInt32BE(lengths[i]!, pos);
      buf.writeUInt32BE(statuses[i]!, pos + 4);
      pos += 8;
    }
  }
  return pos - at;
}

// --- the client's side (for tests and tools) --------------------------------------

export type ReplyHeader =
  | { kind: 'simple'; size: number; error: number; cookie: bigint }
  | { kind: 'structured'; size: number; flags: number; type: number; cookie: bigint; length: number }
  | { kind: 'extended'; size: number; flags: number; type: number; cookie: bigint; offset: bigint; length: number };

/** Decodes the reply header at the front of buf, or null if incomplete; throws on a bad magic. */
export function parseReplyHeader(buf: Buffer): ReplyHeader | null {
  if (buf.length < 4) return null;
  const magic = buf.readUInt32BE(0);
  switch (magic) {
    case NBD_SIMPLE_REPLY_MAGIC:
      if (buf.length < NBD_SIMPLE_REPLY_SIZE) return null;
      return { kind: 'simple', size: NBD_SIMPLE_REPLY_SIZE, error: buf.readUInt32BE(4), cookie: buf.readBigUInt64BE(8) };
    case NBD_STRUCTURED_REPLY_MAGIC:
      if (buf.length < NBD_STRUCTURED_REPLY_SIZE) return null;
      return {
        kind: 'structured',
        size: NBD_STRUCTURED_REPLY_SIZE,
        flags: buf.readUInt16BE(4),
        type: buf.readUInt16BE(6),
        cookie: buf.readBigUInt64BE(8),
        length: buf.readUInt32BE(16),
      };
    case NBD_EXTENDED_REPLY_MAGIC:
      if (buf.length < NBD_EXTENDED_REPLY_SIZE) return null;
      return {
        kind: 'extended',
        size: NBD_EXTENDED_REPLY_SIZE,
        flags: buf.readUInt16BE(4),
        type: buf.readUInt16BE(6),
        cookie: buf.readBigUInt64BE(8),
        offset: buf.readBigUInt64BE(16),
        length: Number(buf.readBigUInt64BE(24)),
      };
    default:
      throw new Error(`bad reply magic 0x${magic.toString(16)}`);
  }
}
