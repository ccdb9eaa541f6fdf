/**
 * The out-of-sync bitmap of one peer, in memory (pure: no I/O).
 *
 * One bit per 4 KiB block of the data area: set means "this block may differ
 * from the peer". The count of set bits is kept up to date by every change,
 * so progress and `status` read it in O(1).
 *
 * On-disk image (what toBuffer() returns and the bitmap area holds): a
 * sequence of big-endian 64-bit words; bit i of the bitmap is bit (i mod 64),
 * counted from the least significant bit, of word floor(i / 64). Bits past
 * the last block are zero. In memory the same bits sit in 32-bit words
 * (JavaScript's bit operators are 32-bit): 32-bit word j holds bits
 * 32j..32j+31, least significant first, so 64-bit word k is
 * (words[2k+1] << 32) | words[2k], stored on disk as words[2k+1] then
 * words[2k], each big-endian.
 *
 * The image is written in 4 KiB pages (32768 bits, 128 MiB of data each); the
 * bitmap remembers which pages changed since they were last taken for
 * writing, so a save writes only those.
 */
import assert from 'node:assert';
import { BITMAP_BYTES_PER_BIT } from './layout.js';

/** Bytes of data one bit stands for. */
export const BITMAP_BLOCK_BYTES = BITMAP_BYTES_PER_BIT;
/** The unit the on-disk image is written in. */
export const BITMAP_PAGE_BYTES = 4096;
/** Bits in one page of the image. */
export const BITMAP_PAGE_BITS = BITMAP_PAGE_BYTES * 8;
/**
 * The largest bitmap we hold in memory: 2^33 bits = 1 GiB of RAM, 32 TiB of
 * data. Checked before allocating so a corrupt size cannot exhaust memory.
 */
export const MAX_BITMAP_BLOCKS = 2 ** 33;

const WORD_BITS = 32;
const WORDS_PER_PAGE = BITMAP_PAGE_BYTES / 4;

/** Bits set in a 32-bit word. */
export function popcount32(x: number): number {
  let v = x >>> 0;
  v = v - ((v >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24) & 0xff;
}

/** Index of the lowest set bit of a non-zero 32-bit word. */
function lowestBit(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/** Bits [lo, hi) of a 32-bit word, 0 <= lo < hi <= 32. */
function maskOf(lo: number, hi: number): number {
  return hi - lo === WORD_BITS ? 0xffffffff : (((1 << (hi - lo)) - 1) << lo) >>> 0;
}

/** A run of set bits: blocks [block, block + count). */
export interface BitRun {
  block: number;
  count: number;
}

export class Bitmap {
  /** The data size this bitmap covers. */
  readonly dataSizeBytes: number;
  /** Number of bits (4 KiB blocks, the last one possibly partial). */
  readonly blocks: number;
  /** Bytes of the on-disk image: whole 64-bit words. */
  readonly byteLength: number;
  /** 4 KiB pages of the on-disk image (the last one possibly partial). */
  readonly pageCount: number;
  readonly #words: Uint32Array;
  #setCount = 0;
  /** 1 per page changed since it was last taken for writing. */
  readonly #dirty: Uint8Array;
  #dirtyCount = 0;

  constructor(dataSizeBytes: number) {
    if (!Number.isSafeInteger(dataSizeBytes) || dataSizeBytes <= 0) throw new RangeError(`a bitmap covers a positive byte count, got ${dataSizeBytes}`);
    const blocks = Math.ceil(dataSizeBytes / BITMAP_BLOCK_BYTES);
    if (blocks > MAX_BITMAP_BLOCKS) throw new RangeError(`${dataSizeBytes} bytes need ${blocks} bitmap bits, more than the ${MAX_BITMAP_BLOCKS} supported`);
    this.dataSizeBytes = dataSizeBytes;
    this.blocks = blocks;
    const words64 = Math.ceil(blocks / 64);
    this.byteLength = words64 * 8;
    this.pageCount = Math.ceil(this.byteLength / BITMAP_PAGE_BYTES);
    this.#words = new Uint32Array(words64 * 2);
    this.#dirty = new Uint8Array(this.pageCount);
  }

  // --- single bits and counts -------------------------------------------

  test(block: number): boolean {
    this.#checkBlock(block);
    return ((this.#words[Math.floor(block / WORD_BITS)]! >>> (block % WORD_BITS)) & 1) === 1;
  }

  /** Set bits, O(1). */
  countSet(): number {
    return this.#setCount;
  }

  /** Bytes of data marked out of sync (the last block counts only its real bytes). */
  bytesOutOfSync(): number {
    let bytes = this.#setCount * BITMAP_BLOCK_BYTES;
    const tail = this.blocks * BITMAP_BLOCK_BYTES - this.dataSizeBytes;
    if (tail > 0 && this.test(this.blocks - 1)) bytes -= tail;
    return bytes;
  }

  // --- ranges of blocks ---------------------------------------------------

  /** Sets blocks [first, first + count); returns how many were newly set. */
  setBlocks(first: number, count: number): number {
    this.#checkBlockRange(first, count);
    let added = 0;
    this.#eachWord(first, count, (w, mask) => {
      const old = this.#words[w]!;
      const fresh = mask & ~old;
      if (fresh !== 0) {
        this.#words[w] = (old | mask) >>> 0;
        added += popcount32(fresh);
        this.#markWordDirty(w);
      }
    });
    this.#setCount += added;
    assert(this.#setCount <= this.blocks, 'bitmap: more bits set than blocks');
    return added;
  }

  /** Clears blocks [first, first + count); returns how many were newly cleared. */
  clearBlocks(first: number, count: number): number {
    this.#checkBlockRange(first, count);
    let removed = 0;
    this.#eachWord(first, count, (w, mask) => {
      const old = this.#words[w]!;
      const gone = mask & old;
      if (gone !== 0) {
        this.#words[w] = (old & ~mask) >>> 0;
        removed += popcount32(gone);
        this.#markWordDirty(w);
      }
    });
    this.#setCount -= removed;
    assert(this.#setCount >= 0, 'bitmap: negative set count');
    return removed;
  }

  // --- ranges of bytes ----------------------------------------------------

  /**
   * Marks the data bytes [offset, offset + length) out of sync. A block the
   * range covers only in part is set too: part of it may differ.
   */
  setRange(offset: number, length: number): number {
    this.#checkByteRange(offset, length);
    if (length === 0) return 0;
    const first = Math.floor(offset / BITMAP_BLOCK_BYTES);
    const end = Math.ceil((offset + length) / BITMAP_BLOCK_BYTES);
    return this.setBlocks(first, end - first);
  }

  /**
   * Marks the data bytes [offset, offset + length) in sync. Only blocks the
   * range covers entirely are cleared: the rest of a partial block may still
   * differ. The last block of a data size that is not a multiple of 4 KiB is
   * entirely covered when the range reaches the end of the data.
   */
  clearRange(offset: number, length: number): number {
    this.#checkByteRange(offset, length);
    if (length === 0) return 0;
    const first = Math.ceil(offset / BITMAP_BLOCK_BYTES);
    const endByte = offset + length;
    const end = endByte === this.dataSizeBytes ? this.blocks : Math.floor(endByte / BITMAP_BLOCK_BYTES);
    return end > first ? this.clearBlocks(first, end - first) : 0;
  }

  setAll(): void {
    this.setBlocks(0, this.blocks);
  }

  clearAll(): void {
    this.clearBlocks(0, this.blocks);
  }

  /** Union with a bitmap of the same size (split-brain recovery, merging a peer's bitmap). */
  or(other: Bitmap): number {
    if (other.blocks !== this.blocks) throw new RangeError(`cannot merge a bitmap of ${other.blocks} blocks into one of ${this.blocks}`);
    const theirs = other.#words;
    let added = 0;
    for (let w = 0; w < this.#words.length; w++) {
      const old = this.#words[w]!;
      const fresh = theirs[w]! & ~old;
      if (fresh !== 0) {
        this.#words[w] = (old | fresh) >>> 0;
        added += popcount32(fresh);
        this.#markWordDirty(w);
      }
    }
    this.#setCount += added;
    assert(this.#setCount <= this.blocks, 'bitmap: more bits set than blocks');
    return added;
  }

  // --- searching ----------------------------------------------------------

  /** The first set block in [from, limit), or -1. */
  nextSet(from: number, limit = this.blocks): number {
    return this.#scan(from, limit, 0);
  }

  /** The first clear block in [from, limit), or `limit` when all are set. */
  nextClear(from: number, limit = this.blocks): number {
    const b = this.#scan(from, limit, 0xffffffff);
    return b < 0 ? limit : b;
  }

  /** The first run of set blocks at or after `fromBlock` (for the resync engine), or null. */
  nextSetRun(fromBlock: number): BitRun | null {
    if (fromBlock >= this.blocks) return null;
    const block = this.nextSet(fromBlock);
    if (block < 0) return null;
    return { block, count: this.nextClear(block) - block };
  }

  // --- the on-disk image ----------------------------------------------------

  /** The whole on-disk image (byteLength bytes); see the file comment for the word layout. */
  toBuffer(): Buffer {
    const buf = Buffer.alloc(this.byteLength);
    this.#encodeWords(buf, 0, this.#words.length);
    return buf;
  }

  /**
   * A bitmap for `dataSizeBytes` read from an on-disk image of at least
   * byteLength bytes (a stored slot may be longer; the rest is ignored).
   * Bits past the last block carry no meaning and are dropped. No page is
   * dirty afterwards: the image is what the disk holds.
   */
  static fromBuffer(dataSizeBytes: number, image: Uint8Array): Bitmap {
    const bm = new Bitmap(dataSizeBytes);
    if (image.length < bm.byteLength) throw new RangeError(`a bitmap of ${bm.blocks} blocks needs ${bm.byteLength} bytes of image, got ${image.length}`);
    bm.loadImage(0, image.subarray(0, bm.byteLength));
    return bm;
  }

  /**
   * Loads part of an on-disk image: `slice` holds the image bytes starting at
   * `byteOffset` (a multiple of 8). Lets a large bitmap be read in pieces
   * without a second full-size buffer. Loaded pages are not dirty.
   */
  loadImage(byteOffset: number, slice: Uint8Array): void {
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset % 8 !== 0 || slice.length % 8 !== 0 || byteOffset + slice.length > this.byteLength) {
      throw new RangeError(`image slice [${byteOffset}, +${slice.length}) is not whole 64-bit words within ${this.byteLength} bytes`);
    }
    const view = new DataView(slice.buffer, slice.byteOffset, slice.length);
    const firstWord = byteOffset / 4;
    for (let i = 0; i < slice.length / 4; i += 2) {
      const w = firstWord + i;
      // Big-endian 64-bit word: the high half (bits 32..63) comes first.
      let hi = view.getUint32(i * 4, false);
      let lo = view.getUint32(i * 4 + 4, false);
      ({ lo, hi } = this.#maskTail(w, lo, hi));
      this.#setCount += popcount32(lo) - popcount32(this.#words[w]!) + popcount32(hi) - popcount32(this.#words[w + 1]!);
      this.#words[w] = lo;
      this.#words[w + 1] = hi;
    }
    assert(this.#setCount >= 0 && this.#setCount <= this.blocks, 'bitmap: set count out of range after load');
  }

  /** Page `page` of the on-disk image, always 4096 bytes (zero past the end of the image). */
  pageImage(page: number): Buffer {
    if (!Number.isInteger(page) || page < 0 || page >= this.pageCount) throw new RangeError(`page ${page} is not 0..${this.pageCount - 1}`);
    const buf = Buffer.alloc(BITMAP_PAGE_BYTES);
    const first = page * WORDS_PER_PAGE;
    this.#encodeWords(buf, first, Math.min(this.#words.length, first + WORDS_PER_PAGE));
    return buf;
  }

  // --- dirty pages ----------------------------------------------------------

  /** Pages changed since they were last taken, ascending. */
  dirtyPages(first = 0, end = this.pageCount): number[] {
    const pages: number[] = [];
    if (this.#dirtyCount === 0) return pages;
    for (let p = Math.max(0, first); p < Math.min(end, this.pageCount); p++) if (this.#dirty[p] === 1) pages.push(p);
    return pages;
  }

  get dirtyPageCount(): number {
    return this.#dirtyCount;
  }

  /**
   * Takes the dirty pages in [first, end) for writing: they count as clean
   * from now on, so a change made while the write is under way dirties them
   * again. A writer that fails gives them back with markPagesDirty().
   */
  takeDirtyPages(first = 0, end = this.pageCount): number[] {
    const pages = this.dirtyPages(first, end);
    for (const p of pages) this.#dirty[p] = 0;
    this.#dirtyCount -= pages.length;
    return pages;
  }

  markPagesDirty(pages: Iterable<number>): void {
    for (const p of pages) {
      if (!Number.isInteger(p) || p < 0 || p >= this.pageCount) throw new RangeError(`page ${p} is not 0..${this.pageCount - 1}`);
      if (this.#dirty[p] === 0) {
        this.#dirty[p] = 1;
        this.#dirtyCount++;
      }
    }
  }

  markAllDirty(): void {
    this.#dirty.fill(1);
    this.#dirtyCount = this.pageCount;
  }

  /** The pages [first, end) holding the bits of data bytes [offset, offset + length). */
  pagesOfRange(offset: number, length: number): { first: number; end: number } {
    this.#checkByteRange(offset, length);
    if (length === 0) return { first: 0, end: 0 };
    const firstBlock = Math.floor(offset / BITMAP_BLOCK_BYTES);
    const endBlock = Math.ceil((offset + length) / BITMAP_BLOCK_BYTES);
    return { first: Math.floor(firstBlock / BITMAP_PAGE_BITS), end: Math.ceil(endBlock / BITMAP_PAGE_BITS) };
  }

  /** Recounts every bit and checks the tail is clear; for tests and debugging (O(n)). */
  checkInvariants(): void {
    let n = 0;
    for (let w = 0; w < this.#words.length; w++) n += popcount32(this.#words[w]!);
    assert.equal(n, this.#setCount, 'bitmap: maintained count differs from the bits');
    for (let b = this.blocks; b < this.#words.length * WORD_BITS; b++) {
      assert.equal((this.#words[Math.floor(b / WORD_BITS)]! >>> (b % WORD_BITS)) & 1, 0, `bitmap: bit ${b} past the end is set`);
    }
    let d = 0;
    for (const flag of this.#dirty) d += flag;
    assert.equal(d, this.#dirtyCount, 'bitmap: dirty page count differs from the flags');
  }

  // --- internals ------------------------------------------------------------

  /** Calls fn(word, mask) for each 32-bit word the block range touches. */
  #eachWord(first: number, count: number, fn: (w: number, mask: number) => void): void {
    const end = first + count;
    let b = first;
    while (b < end) {
      const w = Math.floor(b / WORD_BITS);
      const lo = b % WORD_BITS;
      const hi = Math.min(WORD_BITS, lo + (end - b));
      fn(w, maskOf(lo, hi));
      b += hi - lo;
    }
  }

  /** First block in [from, limit) whose bit differs from `clearPattern` (0: find set, ~0: find clear), or -1. */
  #scan(from: number, limit: number, clearPattern: number): number {
    if (!Number.isSafeInteger(from) || from < 0) throw new RangeError(`block ${from} is not a block number`);
    const stop = Math.min(limit, this.blocks);
    if (from >= stop) return -1;
    let w = Math.floor(from / WORD_BITS);
    // Ignore the bits below `from` in its word.
    let x = ((this.#words[w]! ^ clearPattern) & ~maskOf(0, from % WORD_BITS)) >>> 0;
    const lastWord = Math.floor((stop - 1) / WORD_BITS);
    while (x === 0) {
      if (++w > lastWord) return -1;
      x = (this.#words[w]! ^ clearPattern) >>> 0;
    }
    const b = w * WORD_BITS + lowestBit(x);
    return b < stop ? b : -1;
  }

  #markWordDirty(w: number): void {
    const p = Math.floor(w / WORDS_PER_PAGE);
    if (this.#dirty[p] === 0) {
      this.#dirty[p] = 1;
      this.#dirtyCount++;
    }
  }

  /** Clears the bits of a loaded 64-bit word (lo = words[w], hi = words[w+1]) that lie past the last block. */
  #maskTail(w: number, lo: number, hi: number): { lo: number; hi: number } {
    const keep = (word: number, value: number): number => {
      const firstBit = word * WORD_BITS;
      if (firstBit + WORD_BITS <= this.blocks) return value >>> 0;
      if (firstBit >= this.blocks) return 0;
      return (value & maskOf(0, this.blocks - firstBit)) >>> 0;
    };
    return { lo: keep(w, lo), hi: keep(w + 1, hi) };
  }

  /** Writes 32-bit words [from, to) (from even) into `buf` as big-endian 64-bit words, buf[0] being word `from`. */
  #encodeWords(buf: Buffer, from: number, to: number): void {
    assert(from % 2 === 0 && to % 2 === 0, 'bitmap: 64-bit words are encoded whole');
    for (let w = from; w < to; w += 2) {
      const at = (w - from) * 4;
      buf.writeUInt32BE(this.#words[w + 1]!, at);
      buf.writeUInt32BE(this.#words[w]!, at + 4);
    }
  }

  #checkBlock(block: number): void {
    if (!Number.isSafeInteger(block) || block < 0 || block >= this.blocks) throw new RangeError(`block ${block} is not 0..${this.blocks - 1}`);
  }

  #checkBlockRange(first: number, count: number): void {
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 0 || first + count > this.blocks) {
      throw new RangeError(`blocks [${first}, +${count}) are not within 0..${this.blocks}`);
    }
  }

  #checkByteRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.dataSizeBytes) {
      throw new RangeError(`bytes [${offset}, +${length}) are not within the ${this.dataSizeBytes} bytes of data`);
    }
  }
}
