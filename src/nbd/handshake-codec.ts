/**
 * The option-haggling half of NBD (fixed newstyle), as pure functions and one
 * pull-based decoder: bytes in, typed events out, and the replies back to
 * bytes. No sockets, timers or logging here; session.ts owns the socket.
 *
 * Wire layout (all big-endian):
 *   greeting      "NBDMAGIC" "IHAVEOPT" u16 handshake-flags            (18)
 *   client flags  u32                                                  (4)
 *   option        "IHAVEOPT" u32 option u32 length, data               (16+n)
 *   option reply  u64 0x0003e889045565a9 u32 option u32 type u32 length, data (20+n)
 */
import { isUtf8 } from 'node:buffer';
import { ByteQueue } from './byte-queue.js';
import {
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_INIT_MAGIC,
  NBD_MAX_OPTION_BYTES,
  NBD_MAX_STRING_BYTES,
  NBD_OPT_EXPORT_NAME,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_REP_MAGIC_HI,
  NBD_REP_MAGIC_LO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
} from './constants.js';

const GREETING_SIZE = 18;
const CLIENT_FLAGS_SIZE = 4;
const OPTION_HEADER_SIZE = 16;
const OPTION_REPLY_HEADER_SIZE = 20;
/** EXPORT_NAME reply: u64 size, u16 flags, then 124 zero bytes unless NO_ZEROES. */
const EXPORT_NAME_REPLY_SIZE = 10;
const EXPORT_NAME_ZEROES = 124;
const TWO_POW_32 = 0x1_0000_0000;

// --- greeting ----------------------------------------------------------------

/** The 18-byte greeting: we always offer FIXED_NEWSTYLE and NO_ZEROES. */
export function encodeGreeting(): Buffer {
  const b = Buffer.alloc(GREETING_SIZE);
  NBD_INIT_MAGIC.copy(b, 0);
  NBD_OPTS_MAGIC.copy(b, 8);
  b.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
  return b;
}

// --- decoding what the client sends ------------------------------------------

export type HandshakeEvent =
  | { kind: 'clientFlags'; flags: number }
  | { kind: 'option'; option: number; data: Buffer };

export interface HandshakeDecoderLimits {
  /** Longest option data accepted; longer is a violation (checked before buffering). */
  maxOptionBytes: number;
}

const enum HandshakeState {
  /** Waiting for the 4-byte client flags. */
  ClientFlags,
  /** Waiting for a 16-byte option header. */
  OptionHeader,
  /** Collecting `optionLength` bytes of option data. */
  OptionData,
  /** A violation was found; nothing more is decoded. */
  Failed,
}

/**
 * Decodes client flags and then options. Feed bytes with push() in whatever
 * pieces TCP delivers; call next() until it returns null. After null, check
 * `violation`: non-null means the client broke the protocol and the
 * connection must be dropped. The decoder never allocates more than one
 * option's data, and only after the length passed the limit.
 */
export class HandshakeDecoder {
  private readonly bytes = new ByteQueue();
  private state = HandshakeState.ClientFlags;
  private option = 0;
  private optionLength = 0;
  private readonly maxOptionBytes: number;
  violation: string | null = null;

  constructor(limits: Partial<HandshakeDecoderLimits> = {}) {
    this.maxOptionBytes = limits.maxOptionBytes ?? NBD_MAX_OPTION_BYTES;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0 || this.state === HandshakeState.Failed) return;
    this.bytes.push(chunk);
  }

  /** Bytes received but not yet decoded. */
  buffered(): number {
    return this.bytes.length;
  }

  /**
   * Hands over the undecoded bytes (those that follow the option that ended
   * negotiation belong to the transmission phase) and empties the decoder.
   */
  takeRemaining(): Buffer[] {
    return this.bytes.takeAll();
  }

  next(): HandshakeEvent | null {
    switch (this.state) {
      case HandshakeState.Failed:
        return null;
      case HandshakeState.ClientFlags: {
        if (this.bytes.length < CLIENT_FLAGS_SIZE) return null;
        const flags = this.bytes.take(CLIENT_FLAGS_SIZE).readUInt32BE(0);
        this.state = HandshakeState.OptionHeader;
        return { kind: 'clientFlags', flags };
      }
      case HandshakeState.OptionHeader: {
        if (this.bytes.length < OPTION_HEADER_SIZE) return null;
        const h = this.bytes.take(OPTION_HEADER_SIZE);
        if (!h.subarray(0, 8).equals(NBD_OPTS_MAGIC)) return this.fail('bad option magic');
        this.option = h.readUInt32BE(8);
        this.optionLength = h.readUInt32BE(12);
        // Limits first, so a hostile length never makes us buffer anything.
        if (this.optionLength > this.maxOptionBytes) {
          return this.fail(`option ${this.option} data of ${this.optionLength} bytes exceeds the limit of ${this.maxOptionBytes}`);
        }
        if (this.option === NBD_OPT_EXPORT_NAME && this.optionLength > NBD_MAX_STRING_BYTES) {
          return this.fail(`export name of ${this.optionLength} bytes exceeds ${NBD_MAX_STRING_BYTES}`);
        }
        this.state = HandshakeState.OptionData;
        return this.next();
      }
      case HandshakeState.OptionData: {
        if (this.bytes.length < this.optionLength) return null;
        const data = this.optionLength === 0 ? Buffer.alloc(0) : Buffer.from(this.bytes.take(this.optionLength));
        this.state = HandshakeState.OptionHeader;
        return { kind: 'option', option: this.option, data };
      }
    }
  }

  private fail(reason: string): null {
    this.state = HandshakeState.Failed;
    this.violation = reason;
    this.bytes.clear();
    return null;
  }

}

// --- strings -------------------------------------------------------------------

export type StringVerdict = { ok: true; value: string } | { ok: false; reason: string };

/** A protocol string: at most 4096 bytes, valid UTF-8, no NUL. */
export function decodeNbdString(bytes: Buffer, what: string): StringVerdict {
  if (bytes.length > NBD_MAX_STRING_BYTES) return { ok: false, reason: `${what} longer than ${NBD_MAX_STRING_BYTES} bytes` };
  if (bytes.includes(0)) return { ok: false, reason: `${what} contains NUL` };
  if (!isUtf8(bytes)) return { ok: false, reason: `${what} is not valid UTF-8` };
  return { ok: true, value: bytes.toString('utf8') };
}

// --- INFO / GO payload -----------------------------------------------------------

export type InfoRequest =
  | { kind: 'ok'; name: string; infos: number[] }
  | { kind: 'invalid'; reason: string };

/** INFO and GO data: u32 name length, name, u16 count, count x u16 info type. */
export function parseInfoRequest(data: Buffer): InfoRequest {
  if (data.length < 6) return { kind: 'invalid', reason: 'INFO/GO data shorter than 6 bytes' };
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) return { kind: 'invalid', reason: 'export name length runs past the option' };
  const name = decodeNbdString(data.subarray(4, 4 + nameLength), 'export name');
  if (!name.ok) return { kind: 'invalid', reason: name.reason };
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 6 + nameLength + 2 * count) return { kind: 'invalid', reason: 'information request count does not match the option length' };
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLength + 2 * i));
  return { kind: 'ok', name: name.value, infos };
}

// --- LIST/SET_META_CONTEXT payload ----------------------------------------------

export type MetaContextRequest =
  | { kind: 'ok'; exportName: string; queries: string[] }
  | { kind: 'invalid'; reason: string };

/** u32 name length, name, u32 query count, count x (u32 length, query). */
export function parseMetaContextRequest(data: Buffer): MetaContextRequest {
  if (data.length < 8) return { kind: 'invalid', reason: 'meta context data shorter than 8 bytes' };
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 8) return { kind: 'invalid', reason: 'export name length runs past the option' };
  const name = decodeNbdString(data.subarray(4, 4 + nameLength), 'export name');
  if (!name.ok) return { kind: 'invalid', reason: name.reason };
  let pos = 4 + nameLength;
  const count = data.readUInt32BE(pos);
  pos += 4;
  // Each query takes at least 4 bytes: bound the count before looping on it.
  if (count > (data.length - pos) / 4) return { kind: 'invalid', reason: 'query count runs past the option' };
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - pos < 4) return { kind: 'invalid', reason: 'query length runs past the option' };
    const len = data.readUInt32BE(pos);
    pos += 4;
    if (len > data.length - pos) return { kind: 'invalid', reason: 'query runs past the option' };
    const q = decodeNbdString(data.subarray(pos, pos + len), 'context query');
    if (!q.ok) return { kind: 'invalid', reason: q.reason };
    queries.push(q.value);
    pos += len;
  }
  if (pos !== data.length) return { kind: 'invalid', reason: 'trailing bytes after the last query' };
  return { kind: 'ok', exportName: name.value, queries };
}

// --- replies ---------------------------------------------------------------------

/** An option reply frame: header and `payloadLength` bytes to be filled by the caller at offset 20. */
function optionReplyFrame(option: number, type: number, payloadLength: number): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER_SIZE + payloadLength);
  b.writeUInt32BE(NBD_REP_MAGIC_HI, 0);
  b.writeUInt32BE(NBD_REP_MAGIC_LO, 4);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(payloadLength, 16);
  return b;
}

function writeU64(b: Buffer, value: number, at: number): void {
  b.writeUInt32BE(Math.floor(value / TWO_POW_32), at);
  b.writeUInt32BE(value % TWO_POW_32, at + 4);
}

export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const b = optionReplyFrame(option, type, data ? data.length : 0);
  if (data) data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

export function encodeAck(option: number): Buffer {
  return optionReplyFrame(option, NBD_REP_ACK, 0);
}

/** An error reply (type has bit 31 set) with a human-readable message, cut to 4096 bytes. */
export function encodeOptionError(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, truncateUtf8(message, NBD_MAX_STRING_BYTES));
}

/** NBD_REP_SERVER for LIST: u32 name length, name, description (length = 4 + name + description). */
export function encodeServerReply(option: number, name: string, description: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = truncateUtf8(description, NBD_MAX_STRING_BYTES);
  const b = optionReplyFrame(option, NBD_REP_SERVER, 4 + n.length + d.length);
  b.writeUInt32BE(n.length, 20);
  n.copy(b, 24);
  d.copy(b, 24 + n.length);
  return b;
}

/** NBD_INFO_EXPORT: u16 type, u64 size, u16 transmission flags: exactly 12 bytes. */
export function encodeInfoExport(option: number, size: number, transmissionFlags: number): Buffer {
  const b = optionReplyFrame(option, NBD_REP_INFO, 12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 20);
  writeU64(b, size, 22);
  b.writeUInt16BE(transmissionFlags, 30);
  return b;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: u16 type, then the string. */
export function encodeInfoString(option: number, infoType: number, text: string): Buffer {
  const s = truncateUtf8(text, NBD_MAX_STRING_BYTES);
  const b = optionReplyFrame(option, NBD_REP_INFO, 2 + s.length);
  b.writeUInt16BE(infoType, 20);
  s.copy(b, 22);
  return b;
}

/** NBD_INFO_BLOCK_SIZE: u16 type, u32 minimum, u32 preferred, u32 maximum: exactly 14 bytes. */
export function encodeInfoBlockSize(option: number, minimum: number, preferred: number, maximum: number): Buffer {
  const b = optionReplyFrame(option, NBD_REP_INFO, 14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 20);
  b.writeUInt32BE(minimum, 22);
  b.writeUInt32BE(preferred, 26);
  b.writeUInt32BE(maximum, 30);
  return b;
}

/** NBD_REP_META_CONTEXT: u32 context id (0 in LIST replies), context name. */
export function encodeMetaContextReply(option: number, contextId: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = optionReplyFrame(option, NBD_REP_META_CONTEXT, 4 + n.length);
  b.writeUInt32BE(contextId, 20);
  n.copy(b, 24);
  return b;
}

/**
 * The reply to NBD_OPT_EXPORT_NAME, which has no option-reply framing:
 * u64 size, u16 flags, and 124 zero bytes unless both sides agreed NO_ZEROES.
 */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : EXPORT_NAME_ZEROES));
  writeU64(b, size, 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

/** UTF-8 bytes of `text`, cut at a character boundary to at most `max` bytes. */
function truncateUtf8(text: string, max: number): Buffer {
  const b = Buffer.from(text, 'utf8');
  if (b.length <= max) return b;
  let end = max;
  // Back up over continuation bytes (10xxxxxx) so no character is split.
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

// --- the client's side (for tests and tools) ------------------------------------

/** An option as a client sends it. */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_HEADER_SIZE + data.length);
  NBD_OPTS_MAGIC.copy(b, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, OPTION_HEADER_SIZE);
  return b;
}

export function encodeInfoRequest(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(6 + n.length + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

export function encodeMetaContextRequest(exportName: string, queries: string[]): Buffer {
  const n = Buffer.from(exportName, 'utf8');
  const qs = queries.map((q) => Buffer.from(q, 'utf8'));
  const b = Buffer.alloc(8 + n.length + qs.reduce((s, q) => s + 4 + q.length, 0));
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  let pos = 4 + n.length;
  b.writeUInt32BE(qs.length, pos);
  pos += 4;
  for (const q of qs) {
    b.writeUInt32BE(q.length, pos);
    q.copy(b, pos + 4);
    pos += 4 + q.length;
  }
  return b;
}

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

/**
 * Decodes one option reply from the front of `buf`; returns it with the bytes
 * used, or null when more bytes are needed. Throws on a bad magic (tests only).
 */
export function decodeOptionReply(buf: Buffer): { reply: OptionReply; used: number } | null {
  if (buf.length < OPTION_REPLY_HEADER_SIZE) return null;
  if (buf.readUInt32BE(0) !== NBD_REP_MAGIC_HI || buf.readUInt32BE(4) !== NBD_REP_MAGIC_LO) {
    throw new Error('bad option reply magic');
  }
  const length = buf.readUInt32BE(16);
  if (buf.length < OPTION_REPLY_HEADER_SIZE + length) return null;
  return {
    reply: {
      option: buf.readUInt32BE(8),
      type: buf.readUInt32BE(12),
      data: Buffer.from(buf.subarray(OPTION_REPLY_HEADER_SIZE, OPTION_REPLY_HEADER_SIZE + length)),
    },
    used: OPTION_REPLY_HEADER_SIZE + length,
  };
}
