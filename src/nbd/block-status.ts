/**
 * Turns an export's extents into what one BLOCK_STATUS chunk for
 * base:allocation may carry. Pure.
 *
 * Rules applied: extents are clipped to [offset, offset + length) (the
 * compact reply holds 32-bit lengths, and REQ_ONE forbids running past the
 * request); neighbours with the same status are merged; a gap in what the
 * export reported ends the list (the client asks again from there); at most
 * `maxCount` descriptors; REQ_ONE keeps only the first.
 */
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from './constants.js';
import type { Extent } from './export.js';

export interface BlockStatusDescriptors {
  lengths: number[];
  statuses: number[];
}

export function blockStatusDescriptors(
  extents: readonly Extent[],
  offset: number,
  length: number,
  reqOne: boolean,
  maxCount: number,
): BlockStatusDescriptors {
  const end = offset + length;
  const limit = reqOne ? 1 : maxCount;
  const lengths: number[] = [];
  const statuses: number[] = [];
  let cursor = offset;
  for (const e of extents) {
    if (cursor >= end) break;
    const s = Math.max(e.offset, cursor);
    const stop = Math.min(e.offset + e.length, end);
    if (stop <= s) continue;
    if (s !== cursor) break;
    const status = (e.hole ? NBD_STATE_HOLE : 0) | (e.zero ? NBD_STATE_ZERO : 0);
    const last = lengths.length - 1;
    if (last >= 0 && statuses[last] === status) {
      lengths[last]! += stop - s;
    } else {
      if (lengths.length >= limit) break;
      lengths.push(stop - s);
      statuses.push(status);
    }
    cursor = stop;
  }
  return { lengths, statuses };
}
