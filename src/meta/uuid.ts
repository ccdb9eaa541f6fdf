/**
 * Generation UUIDs: 64-bit random identifiers of data generations, kept as
 * bigint. The rules follow DRBD's generation identifiers:
 *
 * - current: the generation this node's data belongs to. 0 means "no data
 *   generation yet" (fresh metadata); such a disk is Inconsistent until it is
 *   synced from a peer or a generation is started on it (`primary --force`,
 *   `new-current-uuid`).
 * - bitmap (one per peer slot): the current UUID at the moment this node
 *   started tracking, in that slot's bitmap, the writes the peer missed. 0
 *   while the slot's bitmap is clean (connected and in sync).
 * - history (two): earlier generations, newest first. They let a reconnect
 *   tell "the peer is an older state of my data" (full sync one way) from
 *   "unrelated data".
 *
 * A new generation starts when data changes while a peer is away (a Primary
 * losing a peer, a disconnected node being promoted). The old current becomes
 * the bitmap UUID of every away peer whose bitmap UUID is still 0; if none
 * takes it, it goes to history. When a resync ends, the slot's bitmap UUID
 * moves to history and becomes 0; the sync target takes the source's current.
 * Pure except for newUuid's randomness.
 */
import { randomBytes } from 'node:crypto';

export const UUID_HEX_DIGITS = 16;
const UUID_MASK = (1n << 64n) - 1n;

/** A fresh random generation UUID, never 0 (0 means "none"). */
export function newUuid(): bigint {
  for (;;) {
    const u = randomBytes(8).readBigUInt64BE(0);
    if (u !== 0n) return u;
  }
}

/** 16 upper-case hex digits, as DRBD prints them. */
export function formatUuid(u: bigint): string {
  if (u < 0n || u > UUID_MASK) throw new RangeError(`not a 64-bit UUID: ${u}`);
  return u.toString(16).toUpperCase().padStart(UUID_HEX_DIGITS, '0');
}

/** The inverse of formatUuid (any case); throws RangeError on anything else. */
export function parseUuid(text: string): bigint {
  if (!/^[0-9a-fA-F]{16}$/.test(text)) throw new RangeError(`not a UUID of 16 hex digits: ${text}`);
  return BigInt(`0x${text}`);
}

export type HistoryUuids = readonly [bigint, bigint];

/** `retired` becomes the newest history entry and the oldest falls off; 0 retires nothing. */
export function rotateHistory(history: HistoryUuids, retired: bigint): [bigint, bigint] {
  if (retired === 0n) return [history[0], history[1]];
  return [retired, history[0]];
}

export interface UuidSet {
  current: bigint;
  /** Bitmap UUID per peer slot. */
  bitmap: readonly bigint[];
  history: HistoryUuids;
}

/**
 * Starts a new data generation while the peers in `awaySlots` miss the
 * writes. Returns a new set; `fresh` is for tests (default: random).
 */
export function newGeneration(set: UuidSet, awaySlots: readonly number[], fresh: bigint = newUuid()): UuidSet {
  const bitmap = set.bitmap.map((b, slot) => (b === 0n && awaySlots.includes(slot) && set.current !== 0n ? set.current : b));
  // The old generation goes to history even when a bitmap slot took it: a
  // peer that left later, under a generation in between, must still find
  // the ones before it here to be recognised as related.
  return { current: fresh, bitmap, history: set.current === 0n ? set.history : rotateHistory(set.history, set.current) };
}

/** A slot's bitmap is clean again (resync done): its bitmap UUID retires to history. */
export function clearBitmapUuid(set: UuidSet, slot: number): UuidSet {
  const retired = set.bitmap[slot] ?? 0n;
  return {
    current: set.current,
    bitmap: set.bitmap.map((b, i) => (i === slot ? 0n : b)),
    history: rotateHistory(set.history, retired),
  };
}
