/**
 * Packets to bytes. Pure; the peer link owns the socket and writes what these
 * functions return (header and payload together, under cork or writev).
 *
 * encodePacket returns views: one buffer with the header and the fixed
 * fields, then the caller's payload untouched (never copied), then the
 * digest (a view of the same allocation as the header). encodeInto writes a
 * whole packet into a caller's buffer, for small packets (acks, pings) sent
 * from a reused buffer.
 *
 * Encoding a packet whose fields are out of range is a bug in the caller, so
 * it throws a RangeError; decoding hostile input never throws (decoder.ts).
 */
import CRC32C from 'crc-32/crc32c.js';
import {
  AUTH_BYTES,
  DIGEST_SIZE,
  HEADER_FLAG_DIGEST,
  HEADER_SIZE,
  KNOWN_PARAMS_FLAGS,
  KNOWN_UUID_FLAGS,
  KNOWN_WRITE_FLAGS,
  MAX_ALG_NAME_BYTES,
  MAX_DIGEST_BYTES,
  MAX_NAME_BYTES,
  MAX_NODE_ID,
  NO_NODE,
  RUN_BYTES,
  TWOPC_CHANGES,
  TWOPC_REFUSALS,
  WIRE_MAGIC,
} from './constants.js';
import { WIRE_DISK_STATES, WIRE_ROLES, specOfKind, type Packet, type ResyncRun } from './packets.js';
import { runsBytes, runsProblem } from './runs.js';
import { SYNC_RULES, SYNC_STRATEGIES } from '../sync-decision.js';

const TWO_POW_32 = 0x1_0000_0000;

export interface EncodeOptions {
  /**
   * integrity-crc32c was agreed: block-data packets (DATA, RS_DATA_REPLY,
   * RS_BATCH_REPLY, DATA_REPLY) get HEADER_FLAG_DIGEST and a trailing
   * crc32c. Other packets are unaffected.
   */
  integrity?: boolean;
}

/** The packet's payload, for the kinds that carry one. */
function payloadOf(p: Packet): Buffer | null {
  switch (p.kind) {
    case 'data':
    case 'rs-data-reply':
    case 'rs-batch-reply':
    case 'data-reply':
    case 'bitmap':
      return p.payload;
    default:
      return null;
  }
}

/** The payload as its pieces: a gathered resync reply's `parts`, else [payload] (or null). */
function payloadPieces(p: Packet): readonly Buffer[] | null {
  if ((p.kind === 'rs-data-reply' || p.kind === 'rs-batch-reply' || p.kind === 'data') && p.parts !== undefined) {
    if (p.payload.length !== 0) throw new RangeError(`${p.kind} has both a payload and parts`);
    return p.parts;
  }
  const payload = payloadOf(p);
  return payload === null ? null : [payload];
}

function piecesLength(pieces: readonly Buffer[] | null): number {
  let n = 0;
  if (pieces !== null) for (const b of pieces) n += b.length;
  return n;
}

/** The bytes a DATA packet writes, whether its payload is one buffer or pieces. */
export function dataLength(p: Extract<Packet, { kind: 'data' }>): number {
  return piecesLength(payloadPieces(p));
}

function withDigest(p: Packet, options: EncodeOptions | undefined): boolean {
  return options?.integrity === true && specOfKind(p.kind).digest;
}

/** Bytes of header plus fixed and variable fields (everything before the payload). */
function headLength(p: Packet): number {
  const s = specOfKind(p.kind);
  switch (p.kind) {
    case 'hello':
      return HEADER_SIZE + s.fixed + Buffer.byteLength(p.resource, 'utf8');
    case 'params':
      return HEADER_SIZE + s.fixed + Buffer.byteLength(p.csumsAlg, 'utf8') + Buffer.byteLength(p.verifyAlg, 'utf8');
    case 'csum-rs-request':
    case 'ov-reply':
      return HEADER_SIZE + s.fixed + p.digest.length;
    case 'disconnect':
      return HEADER_SIZE + s.fixed + Buffer.byteLength(p.reason, 'utf8');
    case 'rs-batch-request':
    case 'rs-batch-reply':
      return HEADER_SIZE + s.fixed + p.runs.length * RUN_BYTES;
    default:
      return HEADER_SIZE + s.fixed;
  }
}

/** Total bytes the packet takes on the wire. */
export function encodedLength(p: Packet, options?: EncodeOptions): number {
  return headLength(p) + piecesLength(payloadPieces(p)) + (withDigest(p, options) ? DIGEST_SIZE : 0);
}

/**
 * Header and payload as separate buffers, for writev/cork: [head] or
 * [head, payload] or [head, payload, digest]. The payload is the caller's
 * buffer itself; it must not change until the write completed.
 */
export function encodePacket(p: Packet, options?: EncodeOptions): Buffer[] {
  const digest = withDigest(p, options);
  const pieces = payloadPieces(p);
  const head = headLength(p);
  const bodyLength = head - HEADER_SIZE + piecesLength(pieces) + (digest ? DIGEST_SIZE : 0);
  // One allocation holds the head and, at its end, the digest.
  const buf = Buffer.allocUnsafe(head + (digest ? DIGEST_SIZE : 0));
  writeHead(p, buf, 0, bodyLength, digest ? HEADER_FLAG_DIGEST : 0);
  if (pieces === null) return [buf];
  const out: Buffer[] = [buf.subarray(0, head)];
  for (const b of pieces) if (b.length > 0) out.push(b);
  if (digest) {
    buf.writeUInt32BE(bodyDigest(buf.subarray(HEADER_SIZE, head), ...pieces), head);
    out.push(buf.subarray(head));
  }
  return out;
}

/**
 * Writes the whole packet (payload copied) into target at `at`; returns the
 * bytes written. Throws RangeError when it does not fit.
 */
export function encodeInto(p: Packet, target: Buffer, at: number, options?: EncodeOptions): number {
  const total = encodedLength(p, options);
  if (at < 0 || at + total > target.length) throw new RangeError(`${p.kind} packet of ${total} bytes does not fit at ${at} of ${target.length}`);
  const digest = withDigest(p, options);
  const pieces = payloadPieces(p);
  const head = headLength(p);
  writeHead(p, target, at, total - HEADER_SIZE, digest ? HEADER_FLAG_DIGEST : 0);
  if (pieces !== null) {
    let end = at + head;
    for (const b of pieces) end += b.copy(target, end);
    if (digest) target.writeUInt32BE(bodyDigest(target.subarray(at + HEADER_SIZE, at + head), ...pieces), end);
  }
  return total;
}

/**
 * crc32c over the body before the digest: the fixed fields and the payload.
 * Covering the fixed fields too means a flipped offset bit is caught, not
 * just a flipped data bit (a right block at a wrong place is as bad).
 */
export function bodyDigest(fixed: Buffer, ...payload: Buffer[]): number {
  let crc = CRC32C.buf(fixed);
  for (const b of payload) crc = CRC32C.buf(b, crc);
  return crc >>> 0;
}

// --- field writers ---------------------------------------------------------------

function writeHead(p: Packet, b: Buffer, at: number, bodyLength: number, flags: number): void {
  const s = specOfKind(p.kind);
  b.writeUInt32BE(WIRE_MAGIC, at);
  b.writeUInt16BE(s.code, at + 4);
  b.writeUInt16BE(flags, at + 6);
  b.writeUInt32BE(bodyLength, at + 8);
  const o = at + HEADER_SIZE;
  switch (p.kind) {
    case 'hello': {
      b.writeUInt16BE(u16(p.protocolMin, 'protocolMin'), o);
      b.writeUInt16BE(u16(p.protocolMax, 'protocolMax'), o + 2);
      b.writeUInt32BE(u32(p.features, 'features'), o + 4);
      b.writeBigUInt64BE(u64big(p.sessionId, 'sessionId'), o + 8);
      if (!Number.isInteger(p.nodeId) || p.nodeId < 0 || p.nodeId > MAX_NODE_ID) throw new RangeError(`nodeId ${p.nodeId} is not 0..${MAX_NODE_ID}`);
      b.writeUInt8(p.nodeId, o + 16);
      b.writeUInt8(p.channel === 'data' ? 0 : 1, o + 17);
      writeString(b, o + 18, p.resource, MAX_NAME_BYTES, 'resource');
      return;
    }
    case 'auth-challenge':
      copyExact(b, o, p.challenge, AUTH_BYTES, 'challenge');
      return;
    case 'auth-response':
      copyExact(b, o, p.response, AUTH_BYTES, 'response');
      return;
    case 'params': {
      if (p.protocol !== 'A' && p.protocol !== 'B' && p.protocol !== 'C') throw new RangeError(`protocol ${String(p.protocol)} is not A, B or C`);
      b.writeUInt8(p.protocol.charCodeAt(0), o);
      b.fill(0, o + 1, o + 4);
      b.writeUInt32BE(bits(p.flags, KNOWN_PARAMS_FLAGS, 'params flags'), o + 4);
      const next = writeString(b, o + 8, p.csumsAlg, MAX_ALG_NAME_BYTES, 'csumsAlg');
      writeString(b, next, p.verifyAlg, MAX_ALG_NAME_BYTES, 'verifyAlg');
      return;
    }
    case 'sizes':
      writeU53(b, o, p.dataSizeBytes, 'dataSizeBytes');
      b.writeUInt32BE(u32(p.maxPayloadBytes, 'maxPayloadBytes'), o + 8);
      return;
    case 'uuids':
      b.writeBigUInt64BE(u64big(p.current, 'current'), o);
      b.writeBigUInt64BE(u64big(p.bitmap, 'bitmap'), o + 8);
      b.writeBigUInt64BE(u64big(p.history[0], 'history[0]'), o + 16);
      b.writeBigUInt64BE(u64big(p.history[1], 'history[1]'), o + 24);
      b.writeUInt32BE(bits(p.flags, KNOWN_UUID_FLAGS, 'uuid flags'), o + 32);
      writeU53(b, o + 36, p.dirtyBlocks, 'dirtyBlocks');
      return;
    case 'state':
      b.writeUInt8(codeOf(WIRE_ROLES, p.role, 'role'), o);
      b.writeUInt8(codeOf(WIRE_DISK_STATES, p.disk, 'disk'), o + 1);
      return;
    case 'bitmap':
      b.writeUInt8(p.last ? 1 : 0, o);
      b.fill(0, o + 1, o + 4);
      writeU53(b, o + 4, p.startBit, 'startBit');
      return;
    case 'decision':
      b.writeUInt8(codeOf(SYNC_STRATEGIES, p.strategy, 'strategy'), o);
      b.writeUInt8(codeOf(SYNC_RULES, p.rule, 'rule'), o + 1);
      return;
    case 'data':
      writeU53(b, o, p.seq, 'seq');
      b.writeUInt32BE(u32(p.epoch, 'epoch'), o + 8);
      b.writeUInt16BE(bits(p.flags, KNOWN_WRITE_FLAGS, 'write flags'), o + 12);
      b.writeUInt16BE(0, o + 14);
      writeU53(b, o + 16, p.offset, 'offset');
      return;
    case 'zeroes':
    case 'trim':
      writeU53(b, o, p.seq, 'seq');
      b.writeUInt32BE(u32(p.epoch, 'epoch'), o + 8);
      b.writeUInt16BE(bits(p.flags, KNOWN_WRITE_FLAGS, 'write flags'), o + 12);
      b.writeUInt16BE(0, o + 14);
      writeU53(b, o + 16, p.offset, 'offset');
      b.writeUInt32BE(u32(p.length, 'length'), o + 24);
      return;
    case 'recv-ack':
    case 'write-ack':
      writeU53(b, o, p.seq, 'seq');
      return;
    case 'neg-ack':
      writeU53(b, o, p.seq, 'seq');
      b.writeUInt32BE(u32(p.errno, 'errno'), o + 8);
      return;
    case 'barrier':
      b.writeUInt32BE(u32(p.epoch, 'epoch'), o);
      return;
    case 'barrier-ack':
      b.writeUInt32BE(u32(p.epoch, 'epoch'), o);
      b.writeUInt32BE(u32(p.writes, 'writes'), o + 4);
      return;
    case 'flush':
    case 'flush-ack':
    case 'rs-write-ack':
      writeU53(b, o, p.id, 'id');
      return;
    case 'out-of-sync':
      writeU53(b, o, p.offset, 'offset');
      b.writeUInt32BE(u32(p.length, 'length'), o + 8);
      return;
    case 'rs-data-request':
    case 'rs-is-in-sync':
    case 'ov-request':
    case 'data-request':
      writeU53(b, o, p.id, 'id');
      writeU53(b, o + 8, p.offset, 'offset');
      b.writeUInt32BE(u32(p.length, 'length'), o + 16);
      return;
    case 'rs-data-reply':
    case 'data-reply':
      writeU53(b, o, p.id, 'id');
      writeU53(b, o + 8, p.offset, 'offset');
      return;
    case 'csum-rs-request':
    case 'ov-reply':
      writeU53(b, o, p.id, 'id');
      writeU53(b, o + 8, p.offset, 'offset');
      b.writeUInt32BE(u32(p.length, 'length'), o + 16);
      if (p.digest.length > MAX_DIGEST_BYTES) throw new RangeError(`digest of ${p.digest.length} bytes is longer than ${MAX_DIGEST_BYTES}`);
      b.writeUInt8(p.digest.length, o + 20);
      p.digest.copy(b, o + 21);
      return;
    case 'neg-rs-reply':
    case 'neg-data-reply':
      writeU53(b, o, p.id, 'id');
      b.writeUInt32BE(u32(p.errno, 'errno'), o + 8);
      return;
    case 'rs-batch-request':
    case 'rs-batch-reply':
      writeU53(b, o, p.id, 'id');
      writeRuns(b, o + 8, p.runs);
      if (p.kind === 'rs-batch-reply') {
        const payload = piecesLength(payloadPieces(p));
        if (payload !== runsBytes(p.runs)) throw new RangeError(`rs-batch-reply carries ${payload} bytes for runs of ${runsBytes(p.runs)}`);
      }
      return;
    case 'disconnect':
      writeString(b, o, p.reason, MAX_NAME_BYTES, 'reason');
      return;
    case 'twopc-prepare':
      writeU53(b, o, p.txId, 'txId');
      b.writeUInt8(codeOf(TWOPC_CHANGES, p.change, 'change'), o + 8);
      b.writeUInt8(nodeIdOf(p.initiatorNodeId, 'initiatorNodeId'), o + 9);
      b.writeUInt8(p.lostPrimaryNodeId === NO_NODE ? NO_NODE : nodeIdOf(p.lostPrimaryNodeId, 'lostPrimaryNodeId'), o + 10);
      b.writeUInt8(0, o + 11);
      writeU53(b, o + 12, p.lastSeq, 'lastSeq');
      return;
    case 'peers-in-sync':
      b.writeUInt32BE(u32(p.epoch, 'epoch'), o);
      return;
    case 'twopc-reply':
      writeU53(b, o, p.txId, 'txId');
      b.writeUInt8(p.yes ? 1 : 0, o + 8);
      b.writeUInt8(codeOf(TWOPC_REFUSALS, p.reason, 'reason'), o + 9);
      b.writeUInt8(p.primaryNodeId === NO_NODE ? NO_NODE : nodeIdOf(p.primaryNodeId, 'primaryNodeId'), o + 10);
      return;
    case 'twopc-commit':
    case 'twopc-abort':
      writeU53(b, o, p.txId, 'txId');
      return;
    case 'auth-ok':
    case 'sync-pause':
    case 'sync-resume':
    case 'sync-done':
    case 'ping':
    case 'ping-ack':
      return;
  }
}

/** Run count u16, reserved u16, then each run: offset u64, length u32. */
function writeRuns(b: Buffer, at: number, runs: readonly ResyncRun[]): void {
  const problem = runsProblem(runs);
  if (problem !== null) throw new RangeError(`runs: ${problem}`);
  b.writeUInt16BE(runs.length, at);
  b.writeUInt16BE(0, at + 2);
  let o = at + 4;
  for (const r of runs) {
    writeU53(b, o, r.offset, 'run offset');
    b.writeUInt32BE(r.length, o + 8);
    o += RUN_BYTES;
  }
}

function nodeIdOf(id: number, name: string): number {
  if (!Number.isInteger(id) || id < 0 || id > MAX_NODE_ID) throw new RangeError(`${name} ${id} is not 0..${MAX_NODE_ID}`);
  return id;
}

/** u8 length then UTF-8 bytes; returns the offset after them. */
function writeString(b: Buffer, at: number, s: string, max: number, name: string): number {
  const n = b.write(s, at + 1, 'utf8');
  // Buffer#write stops short rather than overflow; byteLength is the truth.
  const want = Buffer.byteLength(s, 'utf8');
  if (want > max || n !== want) throw new RangeError(`${name} of ${want} bytes is longer than ${max}`);
  b.writeUInt8(n, at);
  return at + 1 + n;
}

function copyExact(b: Buffer, at: number, src: Buffer, n: number, name: string): void {
  if (src.length !== n) throw new RangeError(`${name} must be ${n} bytes, not ${src.length}`);
  src.copy(b, at);
}

/** A non-negative integer below 2^53 as u64 (two u32 halves). */
function writeU53(b: Buffer, at: number, v: number, name: string): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${name} ${v} is not an integer in 0..2^53-1`);
  b.writeUInt32BE(Math.floor(v / TWO_POW_32), at);
  b.writeUInt32BE(v >>> 0, at + 4);
}

function u32(v: number, name: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`${name} ${v} is not a u32`);
  return v;
}

/** Flags with only known bits (unknown ones would be refused by the peer). */
function bits(v: number, known: number, name: string): number {
  if (u32(v, name) & ~known) throw new RangeError(`${name} 0x${v.toString(16)} has unknown bits`);
  return v;
}

function u16(v: number, name: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new RangeError(`${name} ${v} is not a u16`);
  return v;
}

function u64big(v: bigint, name: string): bigint {
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new RangeError(`${name} ${v} is not a u64`);
  return v;
}

function codeOf<T>(table: readonly T[], v: T, name: string): number {
  const i = table.indexOf(v);
  if (i < 0) throw new RangeError(`${name} ${String(v)} has no wire code`);
  return i;
}
