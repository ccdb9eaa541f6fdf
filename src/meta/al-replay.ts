/**
 * Rebuilding the active extent set from the activity log ring after a crash
 * (pure: blocks in, extents out).
 *
 * 1. Decode every ring block; a block counts only if it decodes (magic, crc,
 *    fields) and its number belongs at its position (n mod ringBlocks).
 * 2. The newest transaction is the one every other valid block is at most
 *    ringBlocks - 1 behind (modulo 2^32, so the numbers may wrap).
 * 3. Walk back from it over consecutive numbers until a reset transaction
 *    (the log was empty before it) or until the contexts and updates seen
 *    cover every slot, then replay that window oldest first.
 *
 * A torn newest block is just invalid: the walk starts at the one before,
 * whose window is intact because the writer keeps a window one block
 * shorter than the ring. That lost transaction only added extents whose
 * writes had not started (beginWrite had not resolved), or dropped extents
 * whose bits were already saved, so the older set is safe.
 *
 * If the walk cannot cover every slot (corruption in the middle of the ring)
 * the result is `complete: false` with every extent any valid block names:
 * the caller must then treat the whole device as out of sync.
 */
import { AL_EMPTY, AL_TX_BYTES, decodeAlTransaction, type AlTransaction } from './al-transaction.js';

export interface AlRecovery {
  /** Extents that may have had writes in flight, ascending. */
  extents: number[];
  /** False: the ring could not account for every slot; `extents` is a best guess. */
  complete: boolean;
  /** The number the next transaction must carry (continues the ring). */
  nextNumber: number;
  /** The newest transaction emptied the log (a clean shutdown) and nothing followed. */
  clean: boolean;
  /** Transactions replayed. */
  replayed: number;
  /** Ring blocks that were neither valid nor all zero (torn or damaged). */
  damagedBlocks: number;
}

const U32 = 2 ** 32;

/** `a - b` modulo 2^32. */
function behind(a: number, b: number): number {
  return (a - b + U32) % U32;
}

export function replayAlRing(blocks: readonly Uint8Array[]): AlRecovery {
  const ring = blocks.length;
  const valid = new Map<number, AlTransaction>();
  let damagedBlocks = 0;
  blocks.forEach((block, position) => {
    if (block.length !== AL_TX_BYTES) throw new RangeError(`activity log block ${position} is ${block.length} bytes, expected ${AL_TX_BYTES}`);
    const d = decodeAlTransaction(block);
    if (d.ok && d.tx.number % ring === position) valid.set(d.tx.number, d.tx);
    else if (block.some((b) => b !== 0)) damagedBlocks++;
  });

  if (valid.size === 0) {
    // Never written since create-md: nothing can be in flight. Damage with no valid
    // block at all leaves no way to know.
    return { extents: [], complete: damagedBlocks === 0, nextNumber: 0, clean: damagedBlocks === 0, replayed: 0, damagedBlocks };
  }

  const numbers = [...valid.keys()];
  const newest = numbers.find((n) => numbers.every((m) => behind(n, m) < ring));
  if (newest === undefined) return guess(valid, numbers, damagedBlocks);

  const head = valid.get(newest)!;
  const slotCount = head.slotCount;
  const covered = new Uint8Array(slotCount);
  let coveredCount = 0;
  const cover = (slot: number): void => {
    if (covered[slot] === 0) {
      covered[slot] = 1;
      coveredCount++;
    }
  };
  const window: AlTransaction[] = [];
  let base = false;
  for (let n = newest; window.length < ring; n = behind(n, 1)) {
    const tx = valid.get(n);
    if (tx === undefined || tx.slotCount !== slotCount) break;
    window.push(tx);
    if (tx.type === 'reset') {
      base = true;
      break;
    }
    for (let i = 0; i < tx.context.length; i++) cover(tx.contextStart + i);
    for (const u of tx.updates) cover(u.slot);
    if (coveredCount === slotCount) break;
  }
  if (!base && coveredCount < slotCount) return guess(valid, numbers, damagedBlocks, (newest + 1) % U32);

  const table = new Uint32Array(slotCount).fill(AL_EMPTY);
  for (const tx of window.reverse()) {
    if (tx.type === 'reset') table.fill(AL_EMPTY);
    table.set(tx.context, tx.contextStart);
    for (const u of tx.updates) table[u.slot] = u.extent;
  }
  const extents = distinctExtents(table);
  return {
    extents,
    complete: true,
    nextNumber: (newest + 1) % U32,
    clean: head.type === 'reset' && extents.length === 0,
    replayed: window.length,
    damagedBlocks,
  };
}

/** Every extent any valid block names: a superset of the active set if the log was intact before the damage. */
function guess(valid: Map<number, AlTransaction>, numbers: number[], damagedBlocks: number, nextNumber?: number): AlRecovery {
  const all = new Set<number>();
  for (const tx of valid.values()) {
    for (const e of tx.context) if (e !== AL_EMPTY) all.add(e);
    for (const u of tx.updates) if (u.extent !== AL_EMPTY) all.add(u.extent);
  }
  // With no clear newest, continue after the highest number; the next transaction resets the log anyway.
  const next = nextNumber ?? (Math.max(...numbers) + 1) % U32;
  return { extents: [...all].sort((a, b) => a - b), complete: false, nextNumber: next, clean: false, replayed: 0, damagedBlocks };
}

function distinctExtents(table: Uint32Array): number[] {
  const set = new Set<number>();
  for (const e of table) if (e !== AL_EMPTY) set.add(e);
  return [...set].sort((a, b) => a - b);
}
