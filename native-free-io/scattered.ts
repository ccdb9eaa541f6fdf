/**
 * What every store's scattered requests (readRuns, writeRuns) share: the
 * checks that run before any I/O, cutting a payload that arrived in pieces
 * into the pieces of each run, and waiting for every part of a batch.
 */
import { BlockStoreError, type BlockStore, type ByteRange } from './block-store.js';
import { checkRange } from './range-check.js';

/**
 * Throws BlockStoreError unless every run lies within the store, is
 * non-empty, and starts at or after the end of the one before (ascending and
 * disjoint: two parts of one batch never race for the same bytes). Returns
 * the bytes the runs cover together.
 */
export function checkRuns(op: string, runs: readonly ByteRange[], sizeBytes: number, pastEndErrno: 'EINVAL' | 'ENOSPC'): number {
  let end = 0;
  let total = 0;
  for (const r of runs) {
    checkRange(op, r.offset, r.length, sizeBytes, pastEndErrno);
    if (r.length === 0 || r.offset < end) {
      throw new BlockStoreError('EINVAL', op, r.offset, r.length, `${op}: runs must be non-empty, ascending and disjoint (run at ${r.offset}+${r.length})`);
    }
    end = r.offset + r.length;
    total += r.length;
  }
  return total;
}

/**
 * checkRuns for a write, and `data` (its pieces concatenated) must hold
 * exactly the bytes the runs cover (EINVAL otherwise). Returns that count.
 */
export function checkWriteRuns(runs: readonly ByteRange[], data: readonly Buffer[], sizeBytes: number): number {
  const total = checkRuns('write', runs, sizeBytes, 'ENOSPC');
  const given = piecesLength(data);
  if (given !== total) throw new BlockStoreError('EINVAL', 'write', runs[0]?.offset ?? 0, total, `write: ${given} bytes given for runs of ${total}`);
  return total;
}

/**
 * The pieces of `data` (concatenated) that belong to each run: views, never
 * copies. The caller checked that the lengths add up.
 */
export function piecesOfRuns(runs: readonly ByteRange[], data: readonly Buffer[]): Buffer[][] {
  const out: Buffer[][] = [];
  let piece = 0;
  let within = 0;
  for (const r of runs) {
    const mine: Buffer[] = [];
    let need = r.length;
    while (need > 0) {
      const b = data[piece]!;
      const n = Math.min(need, b.length - within);
      mine.push(within === 0 && n === b.length ? b : b.subarray(within, within + n));
      need -= n;
      within += n;
      if (within === b.length) {
        piece++;
        within = 0;
      }
    }
    out.push(mine);
  }
  return out;
}

/**
 * The pieces, in order, as one range from `offset`: as they are where the
 * store has writev (one positional pwritev), else copied into one buffer.
 */
export function writePieces(store: BlockStore, offset: number, parts: readonly Buffer[]): Promise<void> {
  if (parts.length === 1) return store.write(offset, parts[0]!);
  return store.writev !== undefined ? store.writev(offset, parts) : store.write(offset, Buffer.concat(parts, piecesLength(parts)));
}

/** The pieces after their first `skip` bytes (views, never copies). */
export function piecesFrom(parts: readonly Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const p of parts) {
    const end = at + p.length;
    if (end > skip) out.push(at >= skip ? p : p.subarray(skip - at));
    at = end;
  }
  return out;
}

/** The bytes the pieces hold together. */
export function piecesLength(data: readonly Buffer[]): number {
  let n = 0;
  for (const b of data) n += b.length;
  return n;
}

/**
 * Resolves once every promise has settled; rejects with the first failure
 * then, never earlier: the caller's buffers and range locks stay in use
 * until nothing of the batch runs any more.
 */
export function settleAll(parts: ReadonlyArray<Promise<unknown>>): Promise<void> {
  return Promise.allSettled(parts).then((results) => {
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  });
}
