/**
 * Argument checks shared by every store. They run before any allocation or
 * I/O, so a bad request costs nothing and touches nothing.
 */
import { constants as bufferConstants } from 'node:buffer';
import { BlockStoreError } from './block-store.js';

/** A byte count or offset a store accepts: an integer in [0, 2^53). */
export function isByteCount(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}

/**
 * Throws BlockStoreError unless [offset, offset+length) lies within
 * [0, sizeBytes). Malformed numbers are EINVAL; a well-formed range that runs
 * past the end gets `pastEndErrno` (ENOSPC for writes, as a full disk would
 * say; EINVAL for everything else).
 */
export function checkRange(
  op: string,
  offset: number,
  length: number,
  sizeBytes: number,
  pastEndErrno: 'EINVAL' | 'ENOSPC',
): void {
  if (!isByteCount(offset) || !isByteCount(length)) {
    throw new BlockStoreError('EINVAL', op, offset, length, `${op}: offset and length must be non-negative integers`);
  }
  // offset and length are each < 2^53 and sizeBytes <= 2^53, so comparing
  // length against the room left never rounds.
  if (offset > sizeBytes || length > sizeBytes - offset) {
    throw new BlockStoreError(
      pastEndErrno,
      op,
      offset,
      length,
      `${op} at ${offset}+${length} is beyond the end of the store (${sizeBytes} bytes)`,
    );
  }
}

/**
 * Throws BlockStoreError (EINVAL) unless a read of `length` bytes at
 * `offset` has somewhere to go: `into` holds at least that many bytes, or,
 * without `into`, one Buffer can hold them.
 */
export function checkReadBuffer(offset: number, length: number, into: Buffer | undefined): void {
  if (into !== undefined && !(into instanceof Uint8Array && into.length >= length)) {
    throw new BlockStoreError('EINVAL', 'read', offset, length, `read: the buffer given holds fewer than ${length} bytes`);
  }
  if (into === undefined && length > bufferConstants.MAX_LENGTH) {
    throw new BlockStoreError('EINVAL', 'read', offset, length, `read: ${length} bytes is more than one Buffer can hold`);
  }
}
