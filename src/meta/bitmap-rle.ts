/**
 * Run-length codec for sending a bitmap to a peer at connect (pure).
 *
 * A bitmap is sent as chunks of at most `maxChunkBytes` each. A chunk is
 * self-describing, so chunks may be decoded in any order:
 *
 *   varint firstBlock   the first block the chunk describes
 *   varint blockCount   how many blocks it describes (at least 1)
 *   varint run ...      alternating run lengths, clear first, then set, ...
 *
 * The runs add up to exactly blockCount. Only the first run (clear) may be
 * 0, for a chunk that starts on a set block; every other run is at least 1,
 * so each bitmap has exactly one encoding. A varint is unsigned LEB128: 7
 * bits per byte, least significant group first, high bit = more follows; at
 * most 8 bytes (56 bits, more than any block count needs) and never above
 * 2^53 - 1.
 *
 * A mostly clean bitmap shrinks a lot: 1 % of bits set at random costs about
 * 2.5 bytes per set bit instead of 12.5. The worst case (alternating bits)
 * costs one byte per bit; a sender may compare the size with the plain image.
 *
 * The decoder checks a whole chunk before it changes a single bit, and every
 * problem is a BitmapRleError with a reason and the byte offset in the chunk.
 * It allocates nothing: a chunk cannot make it build anything larger than the
 * bitmap it decodes into.
 */
import assert from 'node:assert';
import type { Bitmap } from './bitmap.js';

export const RLE_DEFAULT_CHUNK_BYTES = 64 * 1024;
/** Room for a worst-case header (2 × 8 bytes) and at least two runs. */
export const RLE_MIN_CHUNK_BYTES = 32;
/** Longest varint accepted. */
export const RLE_MAX_VARINT_BYTES = 8;

export type BitmapRleErrorReason =
  | 'chunk-too-large' //   the chunk is longer than the agreed maximum
  | 'truncated-varint' //  the chunk ends inside a varint
  | 'varint-too-long' //   more than 8 bytes, or a value above 2^53 - 1
  | 'start-beyond-end' //  firstBlock is not a block of the bitmap
  | 'empty-chunk' //       blockCount is 0
  | 'count-beyond-end' //  firstBlock + blockCount passes the end of the bitmap
  | 'zero-run' //          a run other than the first is 0
  | 'run-past-end' //      the runs describe more bits than blockCount
  | 'runs-short'; //       the chunk ends before its runs reach blockCount

/** A chunk that cannot be decoded. The wire layer maps it to "drop that peer". */
export class BitmapRleError extends Error {
  readonly code = 'ERR_BITMAP_RLE' as const;
  readonly reason: BitmapRleErrorReason;
  /** Byte offset in the chunk where the problem was found. */
  readonly offset: number;

  constructor(reason: BitmapRleErrorReason, offset: number, message: string) {
    super(`malformed bitmap chunk at byte ${offset}: ${message}`);
    this.name = 'BitmapRleError';
    this.reason = reason;
    this.offset = offset;
  }
}

export interface RleChunkHeader {
  firstBlock: number;
  blockCount: number;
}

export interface RleEncodeOptions {
  /** First block to encode (default 0). */
  fromBlock?: number;
  /** One past the last block to encode (default: the whole bitmap). */
  toBlock?: number;
  maxChunkBytes?: number;
}

// --- varints -----------------------------------------------------------------

export function varintLength(value: number): number {
  assert(Number.isSafeInteger(value) && value >= 0, 'varint: not a natural number');
  let n = 1;
  for (let v = value; v >= 0x80; v = Math.floor(v / 0x80)) n++;
  return n;
}

/** Writes `value` at `at`; returns the offset after it. The caller has checked the room. */
function writeVarint(buf: Buffer, at: number, value: number): number {
  let v = value;
  let i = at;
  while (v >= 0x80) {
    buf[i++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  buf[i++] = v;
  return i;
}

/** Reads a varint at `at`; the value and the offset after it. */
function readVarint(chunk: Uint8Array, at: number): { value: number; next: number } {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < RLE_MAX_VARINT_BYTES; i++) {
    if (at + i >= chunk.length) throw new BitmapRleError('truncated-varint', at, 'the chunk ends inside a number');
    const byte = chunk[at + i]!;
    value += (byte & 0x7f) * scale;
    if (value > Number.MAX_SAFE_INTEGER) throw new BitmapRleError('varint-too-long', at, 'a number above 2^53 - 1');
    if ((byte & 0x80) === 0) return { value, next: at + i + 1 };
    scale *= 0x80;
  }
  throw new BitmapRleError('varint-too-long', at, `a number longer than ${RLE_MAX_VARINT_BYTES} bytes`);
}

// --- encode ------------------------------------------------------------------

/**
 * Encodes blocks [fromBlock, toBlock) of `bitmap` as chunks, lazily: each
 * chunk is a fresh Buffer owned by the caller. An empty range yields nothing.
 */
export function* encodeBitmapRle(bitmap: Bitmap, options: RleEncodeOptions = {}): Generator<Buffer, void, undefined> {
  const from = options.fromBlock ?? 0;
  const to = options.toBlock ?? bitmap.blocks;
  const maxChunk = options.maxChunkBytes ?? RLE_DEFAULT_CHUNK_BYTES;
  if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 0 || to < from || to > bitmap.blocks) {
    throw new RangeError(`blocks [${from}, ${to}) are not within 0..${bitmap.blocks}`);
  }
  if (!Number.isSafeInteger(maxChunk) || maxChunk < RLE_MIN_CHUNK_BYTES) throw new RangeError(`chunks must allow at least ${RLE_MIN_CHUNK_BYTES} bytes, got ${maxChunk}`);

  // One scratch buffer for the runs; each finished chunk is copied out of it.
  const runs = Buffer.alloc(maxChunk);
  let pos = from;
  while (pos < to) {
    // blockCount is not known until the chunk is full; (to - pos) bounds it and so its length.
    const budget = maxChunk - varintLength(pos) - varintLength(to - pos);
    let used = 0;
    let cur = pos;
    let setRun = false;
    while (cur < to) {
      const next = setRun ? bitmap.nextClear(cur, to) : nextSetOrEnd(bitmap, cur, to);
      const len = varintLength(next - cur);
      if (used + len > budget) break;
      used = writeVarint(runs, used, next - cur);
      cur = next;
      setRun = !setRun;
    }
    // The budget always holds a header and two runs, so each chunk advances.
    assert(cur > pos, 'rle: a chunk made no progress');
    const header = Buffer.alloc(varintLength(pos) + varintLength(cur - pos));
    writeVarint(header, writeVarint(header, 0, pos), cur - pos);
    const chunk = Buffer.concat([header, runs.subarray(0, used)]);
    assert(chunk.length <= maxChunk, 'rle: chunk over its limit');
    yield chunk;
    pos = cur;
  }
}

function nextSetOrEnd(bitmap: Bitmap, from: number, to: number): number {
  const b = bitmap.nextSet(from, to);
  return b < 0 ? to : b;
}

// --- decode ------------------------------------------------------------------

/**
 * Checks a chunk against a bitmap of `blocks` blocks without applying it;
 * returns its header or throws BitmapRleError.
 */
export function checkBitmapRleChunk(chunk: Uint8Array, blocks: number, maxChunkBytes = RLE_DEFAULT_CHUNK_BYTES): RleChunkHeader {
  return walkChunk(chunk, blocks, maxChunkBytes, null);
}

/**
 * Decodes one chunk into `into`: the blocks it describes become exactly as
 * the chunk says (set runs set, clear runs cleared). Nothing changes unless
 * the whole chunk is valid.
 */
export function decodeBitmapRleChunk(chunk: Uint8Array, into: Bitmap, maxChunkBytes = RLE_DEFAULT_CHUNK_BYTES): RleChunkHeader {
  walkChunk(chunk, into.blocks, maxChunkBytes, null);
  return walkChunk(chunk, into.blocks, maxChunkBytes, into);
}

/** Parses `chunk`; applies the runs to `apply` when given (only after a checking pass). */
function walkChunk(chunk: Uint8Array, blocks: number, maxChunkBytes: number, apply: Bitmap | null): RleChunkHeader {
  if (chunk.length > maxChunkBytes) throw new BitmapRleError('chunk-too-large', maxChunkBytes, `${chunk.length} bytes, at most ${maxChunkBytes} allowed`);
  const first = readVarint(chunk, 0);
  if (first.value >= blocks) throw new BitmapRleError('start-beyond-end', 0, `first block ${first.value}, the bitmap has ${blocks}`);
  const count = readVarint(chunk, first.next);
  if (count.value === 0) throw new BitmapRleError('empty-chunk', first.next, 'a chunk describing 0 blocks');
  if (count.value > blocks - first.value) {
    throw new BitmapRleError('count-beyond-end', first.next, `${count.value} blocks from ${first.value} pass the end of the bitmap (${blocks} blocks)`);
  }
  const firstBlock = first.value;
  const blockCount = count.value;
  let at = count.next;
  let done = 0;
  let setRun = false;
  let index = 0;
  while (done < blockCount) {
    if (at >= chunk.length) throw new BitmapRleError('runs-short', at, `the runs cover ${done} of ${blockCount} blocks`);
    const run = readVarint(chunk, at);
    if (run.value === 0 && index > 0) throw new BitmapRleError('zero-run', at, `run ${index} is empty`);
    if (run.value > blockCount - done) throw new BitmapRleError('run-past-end', at, `run ${index} of ${run.value} blocks passes the ${blockCount} the chunk describes`);
    if (apply !== null && run.value > 0) {
      if (setRun) apply.setBlocks(firstBlock + done, run.value);
      else apply.clearBlocks(firstBlock + done, run.value);
    }
    done += run.value;
    at = run.next;
    setRun = !setRun;
    index++;
  }
  if (at !== chunk.length) throw new BitmapRleError('run-past-end', at, `${chunk.length - at} bytes after the runs reached ${blockCount} blocks`);
  return { firstBlock, blockCount };
}
