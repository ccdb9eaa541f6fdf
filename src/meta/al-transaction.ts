/**
 * Activity log transactions: the 4 KiB blocks of the activity log ring
 * (pure codec and sizing rules).
 *
 * The log records which 4 MiB extents may have writes in flight. It is a
 * table of `al-extents` slots, each empty or holding one extent number. A
 * transaction records slot changes and, because the ring is small, a rolling
 * slice of the whole table (the "context"): replaying the newest few
 * transactions rebuilds every slot even after the ring has wrapped many
 * times. Transaction n lives in ring block n mod ringBlocks.
 *
 *   offset size field
 *        0    4 magic          0x4D42414C ("MBAL")
 *        4    4 number         u32, +1 per transaction (wraps at 2^32)
 *        8    4 crc32c         over the 4096 bytes, this field taken as zero
 *       12    2 type           1 update, 2 reset (all slots empty before this one's updates)
 *       14    2 update count   0..64
 *       16    4 slot count     al-extents when written, 1..65536
 *       20    4 context start  first slot of the context slice
 *       24    2 context count  0..888 slots in the slice
 *       26    6 reserved       zero
 *       32  512 updates        64 × { slot u32, extent u32 }
 *      544 3552 context        888 × extent u32: slots start.. after this transaction
 *
 * Extent 0xFFFFFFFF means "empty"; real extent numbers are 0..2^32 - 2, so
 * 4 MiB extents reach 16 PiB of data. All numbers big-endian.
 */
import CRC32C from 'crc-32/crc32c.js';
import { MirrorError } from '../errors.js';
import { MAX_AL_EXTENTS } from './superblock.js';

/** The data one activity log extent covers. */
export const AL_EXTENT_BYTES = 4 * 1024 * 1024;
export const AL_TX_BYTES = 4096;
export const AL_TX_MAGIC = 0x4d42414c;
/** The value of an empty slot. */
export const AL_EMPTY = 0xffffffff;
/** The largest extent number (one below AL_EMPTY). */
export const AL_MAX_EXTENT = AL_EMPTY - 1;
/** Slot changes one transaction carries. */
export const AL_MAX_UPDATES = 64;

export const AL_TX_FIELDS = {
  magic: 0,
  number: 4,
  crc: 8,
  type: 12,
  updateCount: 14,
  slotCount: 16,
  contextStart: 20,
  contextCount: 24,
  reserved: 26,
  updates: 32,
  context: 32 + AL_MAX_UPDATES * 8,
} as const;
const UPDATE_BYTES = 8;
/** Context slots one transaction carries: what is left of the block. */
export const AL_CONTEXT_SLOTS = (AL_TX_BYTES - AL_TX_FIELDS.context) / 4;

export const AL_TX_TYPE = { UPDATE: 1, RESET: 2 } as const;
export type AlTxType = 'update' | 'reset';

export interface AlSlotUpdate {
  slot: number;
  /** AL_EMPTY to empty the slot. */
  extent: number;
}

export interface AlTransaction {
  number: number;
  /** 'reset': every slot is empty before this transaction's updates apply. */
  type: AlTxType;
  slotCount: number;
  updates: AlSlotUpdate[];
  contextStart: number;
  /** Slots contextStart.. as they are after this transaction; at most AL_CONTEXT_SLOTS. */
  context: Uint32Array;
}

export type AlTxInvalidReason = 'no-magic' | 'crc' | 'bad-field';

export type AlTxDecoded = { ok: true; tx: AlTransaction } | { ok: false; reason: AlTxInvalidReason; detail: string };

// --- sizing ------------------------------------------------------------------

/** Transactions the ring holds. */
export function alRingBlocks(alSizeBytes: number): number {
  return Math.floor(alSizeBytes / AL_TX_BYTES);
}

/** Transactions whose contexts together cover `slotCount` slots. */
export function alContextWindow(slotCount: number): number {
  return Math.ceil(slotCount / AL_CONTEXT_SLOTS);
}

/**
 * The most extents an activity log area can track: a full context window
 * must fit in the ring with one block to spare, so a torn newest block
 * still leaves a complete window behind it. 32 KiB: 7 × 888 = 6216.
 */
export function alMaxExtents(alSizeBytes: number): number {
  return Math.min(MAX_AL_EXTENTS, Math.max(0, alRingBlocks(alSizeBytes) - 1) * AL_CONTEXT_SLOTS);
}

/** ERR_MD_TOO_SMALL when `alExtents` slots do not fit an area of `alSizeBytes`. */
export function checkAlFits(alExtents: number, alSizeBytes: number): void {
  const max = alMaxExtents(alSizeBytes);
  if (alExtents > max) {
    throw new MirrorError(
      'ERR_MD_TOO_SMALL',
      `al-extents ${alExtents} does not fit the ${alSizeBytes}-byte activity log area, which tracks at most ${max} extents; lower al-extents`,
      { alExtents, maxAlExtents: max, alSizeBytes },
    );
  }
}

/** Extents [first, last] that data bytes [offset, offset + length) touch; length > 0. */
export function extentsOf(offset: number, length: number): { first: number; last: number } {
  return { first: Math.floor(offset / AL_EXTENT_BYTES), last: Math.floor((offset + length - 1) / AL_EXTENT_BYTES) };
}

// --- crc ---------------------------------------------------------------------

const ZERO_CRC = new Uint8Array(4);

function blockCrc(block: Uint8Array): number {
  const F = AL_TX_FIELDS;
  let crc = CRC32C.buf(block.subarray(0, F.crc));
  crc = CRC32C.buf(ZERO_CRC, crc);
  return CRC32C.buf(block.subarray(F.crc + 4, AL_TX_BYTES), crc) >>> 0;
}

// --- encode ------------------------------------------------------------------

/** The 4 KiB block of `tx`. Refuses (RangeError) what decodeAlTransaction would refuse. */
export function encodeAlTransaction(tx: AlTransaction): Buffer {
  const problem = checkFields(tx.number, tx.slotCount, tx.updates.length, tx.contextStart, tx.context.length);
  if (problem !== null) throw new RangeError(`activity log transaction: ${problem}`);
  const F = AL_TX_FIELDS;
  const buf = Buffer.alloc(AL_TX_BYTES);
  buf.writeUInt32BE(AL_TX_MAGIC, F.magic);
  buf.writeUInt32BE(tx.number, F.number);
  buf.writeUInt16BE(tx.type === 'reset' ? AL_TX_TYPE.RESET : AL_TX_TYPE.UPDATE, F.type);
  buf.writeUInt16BE(tx.updates.length, F.updateCount);
  buf.writeUInt32BE(tx.slotCount, F.slotCount);
  buf.writeUInt32BE(tx.contextStart, F.contextStart);
  buf.writeUInt16BE(tx.context.length, F.contextCount);
  tx.updates.forEach((u, i) => {
    if (!Number.isInteger(u.slot) || u.slot < 0 || u.slot >= tx.slotCount) throw new RangeError(`activity log transaction: update slot ${u.slot} is not 0..${tx.slotCount - 1}`);
    if (!Number.isInteger(u.extent) || u.extent < 0 || u.extent > AL_EMPTY) throw new RangeError(`activity log transaction: extent ${u.extent} is not a u32`);
    buf.writeUInt32BE(u.slot, F.updates + i * UPDATE_BYTES);
    buf.writeUInt32BE(u.extent, F.updates + i * UPDATE_BYTES + 4);
  });
  for (let i = 0; i < tx.context.length; i++) buf.writeUInt32BE(tx.context[i]!, F.context + i * 4);
  buf.writeUInt32BE(blockCrc(buf), F.crc);
  return buf;
}

/** null when the header fields are possible, else what is wrong. */
function checkFields(number: number, slotCount: number, updateCount: number, contextStart: number, contextCount: number): string | null {
  if (!Number.isInteger(number) || number < 0 || number > 0xffffffff) return `number ${number} is not a u32`;
  if (!Number.isInteger(slotCount) || slotCount < 1 || slotCount > MAX_AL_EXTENTS) return `slot count ${slotCount} is not 1..${MAX_AL_EXTENTS}`;
  if (updateCount > AL_MAX_UPDATES) return `${updateCount} updates, at most ${AL_MAX_UPDATES}`;
  if (contextCount > AL_CONTEXT_SLOTS) return `${contextCount} context slots, at most ${AL_CONTEXT_SLOTS}`;
  if (!Number.isInteger(contextStart) || contextStart < 0 || contextStart + contextCount > slotCount) {
    return `context slots [${contextStart}, +${contextCount}) are not within the ${slotCount} slots`;
  }
  return null;
}

// --- decode ------------------------------------------------------------------

/**
 * Reads one ring block. Invalid blocks are normal (never written, torn,
 * overwritten half-way), so the result says why instead of throwing.
 */
export function decodeAlTransaction(block: Uint8Array): AlTxDecoded {
  if (block.length !== AL_TX_BYTES) throw new RangeError(`an activity log block is ${AL_TX_BYTES} bytes, got ${block.length}`);
  const F = AL_TX_FIELDS;
  const view = new DataView(block.buffer, block.byteOffset, block.length);
  if (view.getUint32(F.magic) !== AL_TX_MAGIC) return { ok: false, reason: 'no-magic', detail: 'no transaction magic' };
  const stored = view.getUint32(F.crc);
  const actual = blockCrc(block);
  if (stored !== actual) return { ok: false, reason: 'crc', detail: `crc32c stored 0x${stored.toString(16)}, computed 0x${actual.toString(16)}` };
  const bad = (detail: string): AlTxDecoded => ({ ok: false, reason: 'bad-field', detail });

  const typeCode = view.getUint16(F.type);
  if (typeCode !== AL_TX_TYPE.UPDATE && typeCode !== AL_TX_TYPE.RESET) return bad(`type ${typeCode}`);
  const number = view.getUint32(F.number);
  const updateCount = view.getUint16(F.updateCount);
  const slotCount = view.getUint32(F.slotCount);
  const contextStart = view.getUint32(F.contextStart);
  const contextCount = view.getUint16(F.contextCount);
  const problem = checkFields(number, slotCount, updateCount, contextStart, contextCount);
  if (problem !== null) return bad(problem);
  for (let i = F.reserved; i < F.updates; i++) if (block[i] !== 0) return bad(`reserved byte ${i} is not zero`);

  const updates: AlSlotUpdate[] = [];
  for (let i = 0; i < updateCount; i++) {
    const slot = view.getUint32(F.updates + i * UPDATE_BYTES);
    if (slot >= slotCount) return bad(`update ${i} names slot ${slot} of ${slotCount}`);
    updates.push({ slot, extent: view.getUint32(F.updates + i * UPDATE_BYTES + 4) });
  }
  const context = new Uint32Array(contextCount);
  for (let i = 0; i < contextCount; i++) context[i] = view.getUint32(F.context + i * 4);
  return { ok: true, tx: { number, type: typeCode === AL_TX_TYPE.RESET ? 'reset' : 'update', slotCount, updates, contextStart, context } };
}
