/**
 * The stamped 4 KiB block the checker writes: every block says which write
 * it is, so a block read back after a fault shows, on its own, whether it
 * holds that very write, an older one, a torn mix of two, or bytes that
 * never came from the checker. Pure: bytes in, a typed result out.
 *
 * Layout (big-endian, like the rest of mirrorbd's formats):
 *   0   8  magic "MBDCHECK"
 *   8   2  format version (1)
 *  10   2  reserved, 0
 *  12   4  writer id
 *  16   8  log id (random, from the ack log's header: tells two logs apart)
 *  24   8  block number (byte offset / 4096, on the export)
 *  32   8  sequence (the write's number in its log)
 *  40   4  crc32 of bytes 0..39 and 44..4095
 *  44     body: a pseudo-random stream seeded from log id, block and sequence
 *
 * The body differs from one write to the next, so a block that is half one
 * write and half another (a torn write) fails the crc even where the two
 * headers agree.
 */
import CRC32 from 'crc-32';

export const STAMP_BLOCK_BYTES = 4096;
export const STAMP_MAGIC = Buffer.from('MBDCHECK', 'latin1');
export const STAMP_VERSION = 1;

const VERSION_AT = 8;
const WRITER_AT = 12;
const LOG_ID_AT = 16;
const BLOCK_AT = 24;
const SEQUENCE_AT = 32;
const CRC_AT = 40;
const BODY_AT = 44;
/** The log id is 8 bytes, written as 16 hex digits everywhere else. */
export const LOG_ID_HEX_DIGITS = 16;

const ZERO_BLOCK = Buffer.alloc(STAMP_BLOCK_BYTES);

export interface StampFields {
  /** 16 lower-case hex digits. */
  logId: string;
  writer: number;
  block: number;
  sequence: number;
}

export type DecodedBlock =
  /** Never written (or written with zeros by someone else). */
  | { kind: 'zero' }
  /** A whole, valid stamp. */
  | ({ kind: 'stamp' } & StampFields)
  /**
   * The magic is there but the crc does not match: a mix of two writes, or
   * damaged bytes. `claimed` is what the (untrustworthy) header says.
   */
  | { kind: 'torn'; reason: string; claimed: StampFields }
  /** Not a stamp at all: bytes from something other than the checker. */
  | { kind: 'foreign'; reason: string };

export function isLogId(s: string): boolean {
  return s.length === LOG_ID_HEX_DIGITS && /^[0-9a-f]+$/.test(s);
}

/** A stamped block for `f`, written into `out` (4096 bytes) or a fresh buffer. */
export function encodeStamp(f: StampFields, out: Buffer = Buffer.allocUnsafe(STAMP_BLOCK_BYTES)): Buffer {
  if (out.length !== STAMP_BLOCK_BYTES) throw new RangeError(`a stamped block is ${STAMP_BLOCK_BYTES} bytes, not ${out.length}`);
  if (!isLogId(f.logId)) throw new RangeError(`log id must be ${LOG_ID_HEX_DIGITS} hex digits: ${f.logId}`);
  if (!isU32(f.writer)) throw new RangeError(`writer id out of range: ${f.writer}`);
  if (!Number.isSafeInteger(f.block) || f.block < 0) throw new RangeError(`block number out of range: ${f.block}`);
  if (!Number.isSafeInteger(f.sequence) || f.sequence < 0) throw new RangeError(`sequence out of range: ${f.sequence}`);
  STAMP_MAGIC.copy(out, 0);
  out.writeUInt16BE(STAMP_VERSION, VERSION_AT);
  out.writeUInt16BE(0, VERSION_AT + 2);
  out.writeUInt32BE(f.writer, WRITER_AT);
  out.write(f.logId, LOG_ID_AT, 8, 'hex');
  out.writeBigUInt64BE(BigInt(f.block), BLOCK_AT);
  out.writeBigUInt64BE(BigInt(f.sequence), SEQUENCE_AT);
  fillBody(out, bodySeed(f));
  out.writeUInt32BE(stampCrc(out), CRC_AT);
  return out;
}

/** Classifies one 4096-byte block read back from the device. */
export function decodeStamp(b: Buffer): DecodedBlock {
  if (b.length !== STAMP_BLOCK_BYTES) throw new RangeError(`a stamped block is ${STAMP_BLOCK_BYTES} bytes, not ${b.length}`);
  if (b.equals(ZERO_BLOCK)) return { kind: 'zero' };
  if (!b.subarray(0, STAMP_MAGIC.length).equals(STAMP_MAGIC)) {
    return { kind: 'foreign', reason: `no stamp (starts 0x${b.subarray(0, 8).toString('hex')})` };
  }
  const version = b.readUInt16BE(VERSION_AT);
  if (version !== STAMP_VERSION) return { kind: 'foreign', reason: `stamp format version ${version}, this checker reads ${STAMP_VERSION}` };
  const claimed = readFields(b);
  const stored = b.readUInt32BE(CRC_AT);
  const actual = stampCrc(b);
  if (stored !== actual) {
    return { kind: 'torn', reason: `crc 0x${hex32(actual)} does not match the stamp's 0x${hex32(stored)}`, claimed };
  }
  return { kind: 'stamp', ...claimed };
}

function readFields(b: Buffer): StampFields {
  return {
    logId: b.toString('hex', LOG_ID_AT, LOG_ID_AT + 8),
    writer: b.readUInt32BE(WRITER_AT),
    // Beyond 2^53 a number is inexact; such a value is never one we wrote,
    // and every comparison with a real block or sequence then fails.
    block: Number(b.readBigUInt64BE(BLOCK_AT)),
    sequence: Number(b.readBigUInt64BE(SEQUENCE_AT)),
  };
}

/** crc32 (IEEE, as the crc-32 package computes it) of the block without its crc field. */
function stampCrc(b: Buffer): number {
  const head = CRC32.buf(b.subarray(0, CRC_AT));
  return CRC32.buf(b.subarray(BODY_AT), head) >>> 0;
}

/**
 * A seed that changes with every field, so two writes never share a body.
 * FNV-1a over the header bytes that name the write; never 0 (xorshift's
 * fixed point).
 */
function bodySeed(f: StampFields): number {
  let h = 0x811c9dc5;
  const mix = (v: number): void => {
    h = Math.imul(h ^ (v >>> 0), 0x01000193) >>> 0;
  };
  mix(parseInt(f.logId.slice(0, 8), 16));
  mix(parseInt(f.logId.slice(8), 16));
  mix(f.block % 0x1_0000_0000);
  mix(Math.floor(f.block / 0x1_0000_0000));
  mix(f.sequence % 0x1_0000_0000);
  mix(Math.floor(f.sequence / 0x1_0000_0000));
  mix(f.writer);
  return h === 0 ? 1 : h;
}

/** xorshift32 from `seed` over bytes 44..4095 (1013 words: 4052 bytes). */
function fillBody(b: Buffer, seed: number): void {
  let x = seed >>> 0;
  for (let at = BODY_AT; at < STAMP_BLOCK_BYTES; at += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b.writeUInt32BE(x, at);
  }
}

function isU32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffff_ffff;
}

function hex32(n: number): string {
  return n.toString(16).padStart(8, '0');
}
