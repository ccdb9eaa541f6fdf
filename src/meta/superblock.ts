/**
 * The metadata superblock, version 1: one 4 KiB block, big-endian, pure codec.
 *
 * Decoding checks, in this order: the magic (absent: no metadata), the crc32
 * of bytes 0..4091 stored in the last 4 bytes (a torn or rotted block), the
 * version, then every field against what is possible. Any failure after the
 * magic is ERR_MD_CORRUPT naming the device byte offset of the bad field, so
 * an operator can look at it with a hex dump. A newer format must keep the
 * magic and the crc where they are so that old readers say "unknown version"
 * rather than "crc mismatch".
 */
import CRC32 from 'crc-32';
import { MirrorError } from '../errors.js';
import { KNOWN_MD_FLAGS, KNOWN_PEER_FLAGS } from './flags.js';
import {
  BITMAP_BYTES_PER_BIT,
  MAX_PEERS,
  MD_BLOCK_BYTES,
  SUPERBLOCK_BYTES,
  alignDown,
  bitmapBytesFor,
  type MdLayout,
} from './layout.js';

export const MD_MAGIC = Buffer.from('MIRRORBD', 'ascii');
export const MD_VERSION = 1;
export const MIN_AL_EXTENTS = 7;
export const MAX_AL_EXTENTS = 65536;

/** Placement codes stored in the superblock. */
const PLACEMENT_INTERNAL = 1;
const PLACEMENT_EXTERNAL = 2;

/** Byte offsets of the fields within the superblock (the docs' table follows this). */
export const SB_FIELDS = {
  magic: 0, //              8 bytes ASCII
  version: 8, //            u32
  nodeId: 12, //            u32
  flags: 16, //             u32, MD_FLAGS
  maxPeers: 20, //          u32, bitmap slots
  dataSizeBytes: 24, //     u64
  deviceSizeBytes: 32, //   u64
  mdSizeBytes: 40, //       u64
  alOffset: 48, //          u64
  alSizeBytes: 56, //       u32
  alExtents: 60, //         u32
  bitmapOffset: 64, //      u64
  bitmapBytesPerBit: 72, // u32
  placement: 76, //         u32, 1 internal, 2 external
  currentUuid: 80, //       u64
  historyUuid0: 88, //      u64, newest
  historyUuid1: 96, //      u64
  generation: 104, //       u64
  bitmapBytesPerPeer: 112, // u64
  peerCount: 120, //        u32, slots in use (0..maxPeers)
  reserved: 124, //         4 bytes, zero
  peers: 128, //            MAX_PEERS slots of PEER_SLOT_BYTES
  crc: SUPERBLOCK_BYTES - 4, // u32, crc32 of bytes [0, crc)
} as const;

/** Byte offsets within one peer slot. */
export const PEER_SLOT_FIELDS = { nodeId: 0, flags: 4, bitmapUuid: 8, agreedSizeBytes: 16, reserved: 24 } as const;
export const PEER_SLOT_BYTES = 32;
const PEERS_END = SB_FIELDS.peers + MAX_PEERS * PEER_SLOT_BYTES;

export interface PeerSlot {
  nodeId: number;
  /** PEER_FLAGS bits. */
  flags: number;
  /** See uuid.ts: the generation this slot's bitmap counts changes from; 0 = clean. */
  bitmapUuid: bigint;
  /**
   * The data size last agreed with this peer (the smaller disk), so a node
   * that restarts alone never exports more than its peer can hold. Absent
   * (0 on disk) until the first handshake.
   */
  agreedSizeBytes?: number;
}

export interface Superblock {
  version: number;
  nodeId: number;
  /** MD_FLAGS bits. */
  flags: number;
  internal: boolean;
  maxPeers: number;
  /** The data disk's size when the metadata was written. */
  deviceSizeBytes: number;
  dataSizeBytes: number;
  mdSizeBytes: number;
  alOffset: number;
  alSizeBytes: number;
  /** The activity log's extent count (config `al-extents`). */
  alExtents: number;
  bitmapOffset: number;
  bitmapBytesPerPeer: number;
  bitmapBytesPerBit: number;
  currentUuid: bigint;
  /** Newest first. */
  historyUuids: [bigint, bigint];
  /** Bumped on every write of the superblock. */
  generation: number;
  /** Slot i owns bitmap i; at most maxPeers. */
  peers: PeerSlot[];
}

// --- errors ----------------------------------------------------------------

function corrupt(superblockOffset: number, fieldOffset: number, field: string, what: string): MirrorError {
  const offset = superblockOffset + fieldOffset;
  return new MirrorError(
    'ERR_MD_CORRUPT',
    `corrupt metadata at byte ${offset} (superblock at ${superblockOffset}, field ${field} at +${fieldOffset}): ${what}`,
    { offset, superblockOffset, fieldOffset, field },
  );
}

// --- encode ----------------------------------------------------------------

/** The 4 KiB image of `sb`. Refuses (RangeError) what decodeSuperblock would refuse. */
export function encodeSuperblock(sb: Superblock, superblockOffset = sb.internal ? alignDown(sb.deviceSizeBytes) - SUPERBLOCK_BYTES : 0): Buffer {
  const buf = Buffer.alloc(SUPERBLOCK_BYTES);
  const F = SB_FIELDS;
  try {
    MD_MAGIC.copy(buf, F.magic);
    buf.writeUInt32BE(sb.version, F.version);
    buf.writeUInt32BE(sb.nodeId, F.nodeId);
    buf.writeUInt32BE(sb.flags, F.flags);
    buf.writeUInt32BE(sb.maxPeers, F.maxPeers);
    buf.writeBigUInt64BE(BigInt(sb.dataSizeBytes), F.dataSizeBytes);
    buf.writeBigUInt64BE(BigInt(sb.deviceSizeBytes), F.deviceSizeBytes);
    buf.writeBigUInt64BE(BigInt(sb.mdSizeBytes), F.mdSizeBytes);
    buf.writeBigUInt64BE(BigInt(sb.alOffset), F.alOffset);
    buf.writeUInt32BE(sb.alSizeBytes, F.alSizeBytes);
    buf.writeUInt32BE(sb.alExtents, F.alExtents);
    buf.writeBigUInt64BE(BigInt(sb.bitmapOffset), F.bitmapOffset);
    buf.writeUInt32BE(sb.bitmapBytesPerBit, F.bitmapBytesPerBit);
    buf.writeUInt32BE(sb.internal ? PLACEMENT_INTERNAL : PLACEMENT_EXTERNAL, F.placement);
    buf.writeBigUInt64BE(sb.currentUuid, F.currentUuid);
    buf.writeBigUInt64BE(sb.historyUuids[0], F.historyUuid0);
    buf.writeBigUInt64BE(sb.historyUuids[1], F.historyUuid1);
    buf.writeBigUInt64BE(BigInt(sb.generation), F.generation);
    buf.writeBigUInt64BE(BigInt(sb.bitmapBytesPerPeer), F.bitmapBytesPerPeer);
    if (sb.peers.length > MAX_PEERS) throw new RangeError(`at most ${MAX_PEERS} peer slots, got ${sb.peers.length}`);
    buf.writeUInt32BE(sb.peers.length, F.peerCount);
    sb.peers.forEach((p, i) => {
      const at = F.peers + i * PEER_SLOT_BYTES;
      buf.writeUInt32BE(p.nodeId, at + PEER_SLOT_FIELDS.nodeId);
      buf.writeUInt32BE(p.flags, at + PEER_SLOT_FIELDS.flags);
      buf.writeBigUInt64BE(p.bitmapUuid, at + PEER_SLOT_FIELDS.bitmapUuid);
      buf.writeBigUInt64BE(BigInt(p.agreedSizeBytes ?? 0), at + PEER_SLOT_FIELDS.agreedSizeBytes);
    });
  } catch (e) {
    throw new RangeError(`superblock field out of range: ${(e as Error).message}`);
  }
  buf.writeUInt32BE(CRC32.buf(buf.subarray(0, F.crc)) >>> 0, F.crc);
  // One set of rules: whatever we would refuse to read, we refuse to write.
  try {
    decodeSuperblock(buf, superblockOffset);
  } catch (e) {
    throw new RangeError(`refusing to encode an impossible superblock: ${(e as Error).message}`);
  }
  return buf;
}

// --- decode ----------------------------------------------------------------

/**
 * Reads the superblock found at device offset `superblockOffset` (used in
 * messages and, for internal metadata, checked against the recorded size).
 */
export function decodeSuperblock(buf: Buffer, superblockOffset: number): Superblock {
  if (buf.length < SUPERBLOCK_BYTES) throw new RangeError(`a superblock is ${SUPERBLOCK_BYTES} bytes, got ${buf.length}`);
  const F = SB_FIELDS;
  const bad = (field: keyof typeof SB_FIELDS, what: string, extra = 0): never => {
    throw corrupt(superblockOffset, F[field] + extra, field, what);
  };

  if (!buf.subarray(F.magic, F.magic + MD_MAGIC.length).equals(MD_MAGIC)) {
    const zero = buf.subarray(0, SUPERBLOCK_BYTES).every((b) => b === 0);
    throw new MirrorError('ERR_MD_MISSING', `no mirrorbd metadata at byte ${superblockOffset} (${zero ? 'all zeroes' : 'no MIRRORBD magic'})`, {
      offset: superblockOffset,
      allZero: zero,
    });
  }
  const storedCrc = buf.readUInt32BE(F.crc);
  const actualCrc = CRC32.buf(buf.subarray(0, F.crc)) >>> 0;
  if (storedCrc !== actualCrc) {
    bad('crc', `crc32 mismatch: stored 0x${storedCrc.toString(16).padStart(8, '0')}, computed 0x${actualCrc.toString(16).padStart(8, '0')}`);
  }
  const version = buf.readUInt32BE(F.version);
  if (version !== MD_VERSION) bad('version', `unknown metadata version ${version}, this mirrorbd reads version ${MD_VERSION}`);

  const u64 = (field: keyof typeof SB_FIELDS): number => {
    const n = buf.readBigUInt64BE(F[field]);
    return n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : bad(field, `${n} is beyond 2^53`);
  };
  const blocks = (field: keyof typeof SB_FIELDS, n: number): number =>
    n % MD_BLOCK_BYTES === 0 ? n : bad(field, `${n} is not a multiple of ${MD_BLOCK_BYTES}`);

  const nodeId = buf.readUInt32BE(F.nodeId);
  if (nodeId > 31) bad('nodeId', `node-id ${nodeId} is not 0..31`);
  const flags = buf.readUInt32BE(F.flags);
  if ((flags & ~KNOWN_MD_FLAGS) !== 0) bad('flags', `unknown flag bits 0x${(flags & ~KNOWN_MD_FLAGS).toString(16)}`);
  const maxPeers = buf.readUInt32BE(F.maxPeers);
  if (maxPeers < 1 || maxPeers > MAX_PEERS) bad('maxPeers', `${maxPeers} bitmap slots, expected 1..${MAX_PEERS}`);
  const placement = buf.readUInt32BE(F.placement);
  if (placement !== PLACEMENT_INTERNAL && placement !== PLACEMENT_EXTERNAL) bad('placement', `placement code ${placement}, expected 1 (internal) or 2 (external)`);
  const internal = placement === PLACEMENT_INTERNAL;

  const dataSizeBytes = blocks('dataSizeBytes', u64('dataSizeBytes'));
  if (dataSizeBytes === 0) bad('dataSizeBytes', 'data size 0');
  const deviceSizeBytes = u64('deviceSizeBytes');
  const mdSizeBytes = u64('mdSizeBytes');
  const alOffset = u64('alOffset');
  const alSizeBytes = blocks('alSizeBytes', buf.readUInt32BE(F.alSizeBytes));
  if (alSizeBytes === 0) bad('alSizeBytes', 'activity log size 0');
  const alExtents = buf.readUInt32BE(F.alExtents);
  if (alExtents < MIN_AL_EXTENTS || alExtents > MAX_AL_EXTENTS) bad('alExtents', `${alExtents} extents, expected ${MIN_AL_EXTENTS}..${MAX_AL_EXTENTS}`);
  const bitmapOffset = u64('bitmapOffset');
  const bitmapBytesPerBit = buf.readUInt32BE(F.bitmapBytesPerBit);
  if (bitmapBytesPerBit !== BITMAP_BYTES_PER_BIT) bad('bitmapBytesPerBit', `${bitmapBytesPerBit} bytes per bit, this mirrorbd uses ${BITMAP_BYTES_PER_BIT}`);
  const bitmapBytesPerPeer = blocks('bitmapBytesPerPeer', u64('bitmapBytesPerPeer'));
  if (bitmapBytesPerPeer < bitmapBytesFor(dataSizeBytes)) bad('bitmapBytesPerPeer', `${bitmapBytesPerPeer} bytes cannot map ${dataSizeBytes} bytes of data`);
  const bitmapBytes = bitmapBytesPerPeer * maxPeers;
  if (mdSizeBytes !== SUPERBLOCK_BYTES + alSizeBytes + bitmapBytes) {
    bad('mdSizeBytes', `${mdSizeBytes} is not superblock + activity log + bitmap = ${SUPERBLOCK_BYTES + alSizeBytes + bitmapBytes}`);
  }

  if (internal) {
    // [data][activity log][bitmap][superblock], the superblock in the last aligned 4 KiB.
    if (alignDown(deviceSizeBytes) - SUPERBLOCK_BYTES !== superblockOffset) {
      bad('deviceSizeBytes', `device size ${deviceSizeBytes} puts the superblock at ${alignDown(deviceSizeBytes) - SUPERBLOCK_BYTES}, not here`);
    }
    if (alOffset !== dataSizeBytes) bad('alOffset', `activity log at ${alOffset}, expected right after the data at ${dataSizeBytes}`);
    if (bitmapOffset !== alOffset + alSizeBytes) bad('bitmapOffset', `bitmap at ${bitmapOffset}, expected right after the activity log at ${alOffset + alSizeBytes}`);
    if (bitmapOffset + bitmapBytes !== superblockOffset) bad('bitmapOffset', `bitmap ends at ${bitmapOffset + bitmapBytes}, expected at the superblock (${superblockOffset})`);
  } else {
    if (dataSizeBytes > deviceSizeBytes) bad('dataSizeBytes', `data size ${dataSizeBytes} exceeds device size ${deviceSizeBytes}`);
    if (alOffset !== SUPERBLOCK_BYTES) bad('alOffset', `activity log at ${alOffset}, expected ${SUPERBLOCK_BYTES} (after the superblock)`);
    if (bitmapOffset !== alOffset + alSizeBytes) bad('bitmapOffset', `bitmap at ${bitmapOffset}, expected ${alOffset + alSizeBytes}`);
  }

  const generation = u64('generation');
  const peerCount = buf.readUInt32BE(F.peerCount);
  if (peerCount > maxPeers) bad('peerCount', `${peerCount} peer slots in use, but only ${maxPeers} bitmap slots`);
  const firstNonZero = (from: number, to: number): number => {
    for (let i = from; i < to; i++) if (buf[i] !== 0) return i;
    return -1;
  };
  const reservedAt = (from: number, to: number, field: keyof typeof SB_FIELDS): void => {
    const i = firstNonZero(from, to);
    if (i >= 0) bad(field, `reserved byte is 0x${buf[i]!.toString(16)}, expected 0`, i - F[field]);
  };
  reservedAt(F.reserved, F.peers, 'reserved');

  const peers: PeerSlot[] = [];
  for (let i = 0; i < MAX_PEERS; i++) {
    const slot = F.peers + i * PEER_SLOT_BYTES;
    const rel = slot - F.peers;
    if (i >= peerCount) {
      reservedAt(slot, slot + PEER_SLOT_BYTES, 'peers');
      continue;
    }
    const peerNode = buf.readUInt32BE(slot + PEER_SLOT_FIELDS.nodeId);
    if (peerNode > 31 || peerNode === nodeId) bad('peers', `peer slot ${i} has node-id ${peerNode}, expected 0..31 other than ${nodeId}`, rel);
    if (peers.some((p) => p.nodeId === peerNode)) bad('peers', `peer slot ${i} repeats node-id ${peerNode}`, rel);
    const peerFlags = buf.readUInt32BE(slot + PEER_SLOT_FIELDS.flags);
    if ((peerFlags & ~KNOWN_PEER_FLAGS) !== 0) bad('peers', `peer slot ${i} has unknown flag bits 0x${(peerFlags & ~KNOWN_PEER_FLAGS).toString(16)}`, rel + PEER_SLOT_FIELDS.flags);
    reservedAt(slot + PEER_SLOT_FIELDS.reserved, slot + PEER_SLOT_BYTES, 'peers');
    const agreed = buf.readBigUInt64BE(slot + PEER_SLOT_FIELDS.agreedSizeBytes);
    if (agreed > BigInt(Number.MAX_SAFE_INTEGER)) bad('peers', `peer slot ${i} has an agreed size beyond 2^53`, rel + PEER_SLOT_FIELDS.agreedSizeBytes);
    peers.push({
      nodeId: peerNode,
      flags: peerFlags,
      bitmapUuid: buf.readBigUInt64BE(slot + PEER_SLOT_FIELDS.bitmapUuid),
      ...(agreed > 0n ? { agreedSizeBytes: Number(agreed) } : {}),
    });
  }
  reservedAt(PEERS_END, F.crc, 'peers');

  return {
    version,
    nodeId,
    flags,
    internal,
    maxPeers,
    deviceSizeBytes,
    dataSizeBytes,
    mdSizeBytes,
    alOffset,
    alSizeBytes,
    alExtents,
    bitmapOffset,
    bitmapBytesPerPeer,
    bitmapBytesPerBit,
    currentUuid: buf.readBigUInt64BE(F.currentUuid),
    historyUuids: [buf.readBigUInt64BE(F.historyUuid0), buf.readBigUInt64BE(F.historyUuid1)],
    generation,
    peers,
  };
}

/** The layout a superblock describes (offsets on the device holding the metadata). */
export function layoutOf(sb: Superblock): MdLayout {
  const bitmapBytes = sb.bitmapBytesPerPeer * sb.maxPeers;
  return {
    dataSizeBytes: sb.dataSizeBytes,
    superblockOffset: sb.internal ? alignDown(sb.deviceSizeBytes) - SUPERBLOCK_BYTES : 0,
    alOffset: sb.alOffset,
    alSizeBytes: sb.alSizeBytes,
    bitmapOffset: sb.bitmapOffset,
    bitmapBytesPerPeer: sb.bitmapBytesPerPeer,
    bitmapBytes,
    mdSizeBytes: sb.mdSizeBytes,
  };
}

/** A fresh superblock for `layout`: Inconsistent, no data generation yet (current UUID 0). */
export function freshSuperblock(args: {
  layout: MdLayout;
  internal: boolean;
  deviceSizeBytes: number;
  nodeId: number;
  maxPeers: number;
  alExtents: number;
}): Superblock {
  const { layout } = args;
  return {
    version: MD_VERSION,
    nodeId: args.nodeId,
    flags: 0,
    internal: args.internal,
    maxPeers: args.maxPeers,
    deviceSizeBytes: args.deviceSizeBytes,
    dataSizeBytes: layout.dataSizeBytes,
    mdSizeBytes: layout.mdSizeBytes,
    alOffset: layout.alOffset,
    alSizeBytes: layout.alSizeBytes,
    alExtents: args.alExtents,
    bitmapOffset: layout.bitmapOffset,
    bitmapBytesPerPeer: layout.bitmapBytesPerPeer,
    bitmapBytesPerBit: BITMAP_BYTES_PER_BIT,
    currentUuid: 0n,
    historyUuids: [0n, 0n],
    generation: 1,
    peers: [],
  };
}
