import { describe, expect, test } from 'vitest';
import { BITMAP_BLOCK_BYTES, BITMAP_PAGE_BITS, Bitmap, popcount32 } from '../../src/meta/bitmap.js';
import { seededRandom as rng } from '../helpers/seeded-random.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const B = BITMAP_BLOCK_BYTES;


function setBits(bm: Bitmap): number[] {
  const out: number[] = [];
  for (let b = 0; b < bm.blocks; b++) if (bm.test(b)) out.push(b);
  return out;
}

describe('sizes', () => {
  test('1 bit per 4 KiB; a partial last block counts; the image is whole 64-bit words', () => {
    const bm = new Bitmap(MiB + 1);
    expect(bm.blocks).toBe(257);
    expect(bm.byteLength).toBe(5 * 8);
    expect(bm.pageCount).toBe(1);
    const big = new Bitmap(129 * 4096 * 8 * B); // 129 pages of image
    expect(big.pageCount).toBe(129);
  });

  test('refuses impossible sizes before allocating', () => {
    expect(() => new Bitmap(0)).toThrow(RangeError);
    expect(() => new Bitmap(-1)).toThrow(RangeError);
    expect(() => new Bitmap(1.5)).toThrow(RangeError);
    expect(() => new Bitmap(2 ** 53)).toThrow(RangeError);
    expect(() => new Bitmap(Number.MAX_SAFE_INTEGER)).toThrow(/more than/);
  });

  test('popcount32', () => {
    expect(popcount32(0)).toBe(0);
    expect(popcount32(0xffffffff)).toBe(32);
    expect(popcount32(0x80000001)).toBe(2);
    expect(popcount32(-1)).toBe(32);
  });
});

describe('byte ranges at the boundaries', () => {
  test('first and last block', () => {
    const bm = new Bitmap(MiB);
    expect(bm.setRange(0, 1)).toBe(1);
    expect(bm.setRange(MiB - 1, 1)).toBe(1);
    expect(setBits(bm)).toEqual([0, 255]);
    expect(bm.countSet()).toBe(2);
    expect(bm.bytesOutOfSync()).toBe(2 * B);
    expect(() => bm.setRange(MiB, 1)).toThrow(RangeError);
    expect(() => bm.setRange(MiB - 1, 2)).toThrow(RangeError);
    expect(() => bm.test(256)).toThrow(RangeError);
    expect(bm.setRange(MiB, 0)).toBe(0);
  });

  test('setRange sets partially covered blocks; clearRange clears only whole blocks', () => {
    const bm = new Bitmap(MiB);
    bm.setRange(B - 1, 2); // the last byte of block 0 and the first of block 1
    expect(setBits(bm)).toEqual([0, 1]);
    expect(bm.clearRange(1, 2 * B - 1)).toBe(1); // covers block 1 fully, block 0 only in part
    expect(setBits(bm)).toEqual([0]);
    expect(bm.clearRange(0, B - 1)).toBe(0);
    expect(bm.clearRange(0, B)).toBe(1);
    expect(bm.countSet()).toBe(0);
    bm.setRange(10 * B, 3 * B);
    expect(bm.clearRange(10 * B + 1, 2 * B)).toBe(1); // [10B+1, 12B+1) covers only block 11 fully
    expect(setBits(bm)).toEqual([10, 12]);
  });

  test('clearRange inside one block clears nothing', () => {
    const bm = new Bitmap(MiB);
    bm.setAll();
    expect(bm.clearRange(5, 100)).toBe(0);
    expect(bm.countSet()).toBe(256);
  });

  test('a data size that is not a multiple of 4 KiB: the partial last block', () => {
    const size = 64 * B * 3 + 100; // 193 blocks, the last one 100 bytes
    const bm = new Bitmap(size);
    expect(bm.blocks).toBe(193);
    bm.setRange(size - 1, 1);
    expect(bm.test(192)).toBe(true);
    expect(bm.bytesOutOfSync()).toBe(100);
    // Reaching the end of the data covers the short block entirely.
    expect(bm.clearRange(size - 100, 100)).toBe(1);
    bm.setAll();
    expect(bm.countSet()).toBe(193);
    expect(bm.bytesOutOfSync()).toBe(size);
    expect(bm.clearRange(0, size)).toBe(193);
    bm.checkInvariants();
  });

  test('a range across 32- and 64-bit word edges', () => {
    const bm = new Bitmap(MiB);
    expect(bm.setBlocks(30, 40)).toBe(40);
    expect(setBits(bm)).toEqual(Array.from({ length: 40 }, (_, i) => 30 + i));
    expect(bm.setBlocks(0, 256)).toBe(216);
    expect(bm.clearBlocks(63, 2)).toBe(2);
    expect(bm.countSet()).toBe(254);
    bm.checkInvariants();
  });
});

describe('runs', () => {
  test('nextSetRun walks the runs in order', () => {
    const bm = new Bitmap(MiB);
    bm.setBlocks(3, 2);
    bm.setBlocks(31, 2);
    bm.setBlocks(63, 70);
    bm.setBlocks(255, 1);
    const runs: Array<{ block: number; count: number }> = [];
    for (let r = bm.nextSetRun(0); r !== null; r = bm.nextSetRun(r.block + r.count)) runs.push(r);
    expect(runs).toEqual([
      { block: 3, count: 2 },
      { block: 31, count: 2 },
      { block: 63, count: 70 },
      { block: 255, count: 1 },
    ]);
    expect(bm.nextSetRun(256)).toBeNull();
    expect(bm.nextSetRun(4)).toEqual({ block: 4, count: 1 });
    expect(new Bitmap(MiB).nextSetRun(0)).toBeNull();
  });

  test('nextSet / nextClear honour the limit', () => {
    const bm = new Bitmap(MiB);
    bm.setBlocks(100, 10);
    expect(bm.nextSet(0, 100)).toBe(-1);
    expect(bm.nextSet(0, 101)).toBe(100);
    expect(bm.nextClear(100, 105)).toBe(105);
    expect(bm.nextClear(100)).toBe(110);
    bm.setAll();
    expect(bm.nextClear(0)).toBe(256);
  });
});

describe('union, setAll, clearAll', () => {
  test('or merges and counts only new bits', () => {
    const a = new Bitmap(MiB);
    const b = new Bitmap(MiB);
    a.setBlocks(0, 10);
    b.setBlocks(5, 10);
    expect(a.or(b)).toBe(5);
    expect(a.countSet()).toBe(15);
    expect(() => a.or(new Bitmap(2 * MiB))).toThrow(RangeError);
    a.setAll();
    expect(a.countSet()).toBe(256);
    a.clearAll();
    expect(a.countSet()).toBe(0);
    a.checkInvariants();
  });
});

describe('on-disk image', () => {
  test('big-endian 64-bit words, bit i = bit (i % 64) from the least significant of word i / 64', () => {
    const bm = new Bitmap(MiB); // 256 bits = 4 words
    bm.setBlocks(0, 1);
    bm.setBlocks(63, 1);
    bm.setBlocks(64 + 8, 1);
    const img = bm.toBuffer();
    expect(img.length).toBe(32);
    expect(img.readBigUInt64BE(0)).toBe((1n << 63n) | 1n);
    expect(img.readBigUInt64BE(8)).toBe(1n << 8n);
    expect(img.subarray(0, 8).toString('hex')).toBe('8000000000000001');
    expect(img.subarray(8, 16).toString('hex')).toBe('0000000000000100');
  });

  test('round trip; bits past the end are dropped; short images refused', () => {
    const r = rng(7);
    const size = 1000 * B + 17;
    const bm = new Bitmap(size);
    for (let i = 0; i < 300; i++) bm.setBlocks(Math.floor(r() * bm.blocks), 1);
    const back = Bitmap.fromBuffer(size, bm.toBuffer());
    expect(setBits(back)).toEqual(setBits(bm));
    expect(back.countSet()).toBe(bm.countSet());
    expect(back.dirtyPageCount).toBe(0);
    const img = Buffer.concat([bm.toBuffer(), Buffer.alloc(4096)]);
    img.fill(0xff, bm.byteLength - 8, bm.byteLength); // tail bits of the last word
    const masked = Bitmap.fromBuffer(size, img);
    masked.checkInvariants();
    expect(masked.test(bm.blocks - 1)).toBe(true);
    expect(() => Bitmap.fromBuffer(size, Buffer.alloc(8))).toThrow(RangeError);
  });

  test('pageImage matches the whole image, zero padded to 4 KiB', () => {
    const bm = new Bitmap(3 * BITMAP_PAGE_BITS * B - 5 * B); // 3 pages, the last partial
    bm.setBlocks(0, 1);
    bm.setBlocks(BITMAP_PAGE_BITS * 2 + 7, 3);
    const whole = bm.toBuffer();
    const pages = Buffer.concat([0, 1, 2].map((p) => bm.pageImage(p)));
    expect(pages.length).toBe(3 * 4096);
    expect(pages.subarray(0, whole.length).equals(whole)).toBe(true);
    expect(pages.subarray(whole.length).every((x) => x === 0)).toBe(true);
    expect(() => bm.pageImage(3)).toThrow(RangeError);
  });
});

describe('dirty pages', () => {
  test('changes dirty only their pages; no-op changes dirty nothing', () => {
    const bm = new Bitmap(4 * BITMAP_PAGE_BITS * B);
    expect(bm.pageCount).toBe(4);
    bm.setBlocks(BITMAP_PAGE_BITS + 5, 1);
    bm.setBlocks(3 * BITMAP_PAGE_BITS - 1, 2); // the last bit of page 2 and the first of page 3
    expect(bm.dirtyPages()).toEqual([1, 2, 3]);
    expect(bm.takeDirtyPages(0, 2)).toEqual([1]);
    expect(bm.dirtyPages()).toEqual([2, 3]);
    expect(bm.takeDirtyPages()).toEqual([2, 3]);
    bm.setBlocks(BITMAP_PAGE_BITS + 5, 1); // already set
    bm.clearBlocks(0, 10); // already clear
    expect(bm.dirtyPageCount).toBe(0);
    bm.markPagesDirty([0]);
    expect(bm.dirtyPages()).toEqual([0]);
    expect(bm.pagesOfRange(BITMAP_PAGE_BITS * B - 1, 2)).toEqual({ first: 0, end: 2 });
    bm.checkInvariants();
  });
});

describe('against a naive model (seeded)', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    test(`seed ${seed}`, () => {
      const r = rng(seed);
      const size = Math.floor(r() * 300 * B) + 1 + (seed % 2 === 0 ? 64 * B : 0);
      const bm = new Bitmap(size);
      const model = new Uint8Array(bm.blocks);
      const other = new Bitmap(size);
      const otherModel = new Uint8Array(bm.blocks);
      for (let step = 0; step < 400; step++) {
        const offset = Math.floor(r() * size);
        const length = Math.floor(r() * Math.min(size - offset, 40 * B + 1));
        const op = r();
        if (op < 0.4) {
          bm.setRange(offset, length);
          if (length > 0) for (let b = Math.floor(offset / B); b < Math.ceil((offset + length) / B); b++) model[b] = 1;
        } else if (op < 0.8) {
          bm.clearRange(offset, length);
          const end = offset + length === size ? bm.blocks : Math.floor((offset + length) / B);
          if (length > 0) for (let b = Math.ceil(offset / B); b < end; b++) model[b] = 0;
        } else if (op < 0.9) {
          other.setRange(offset, length);
          if (length > 0) for (let b = Math.floor(offset / B); b < Math.ceil((offset + length) / B); b++) otherModel[b] = 1;
        } else if (op < 0.95) {
          bm.or(other);
          for (let b = 0; b < model.length; b++) model[b] = model[b]! | otherModel[b]!;
        } else {
          const back = Bitmap.fromBuffer(size, bm.toBuffer());
          expect(back.countSet()).toBe(bm.countSet());
        }
        expect(bm.countSet()).toBe(model.reduce((a, x) => a + x, 0));
      }
      bm.checkInvariants();
      expect(setBits(bm)).toEqual([...model.keys()].filter((b) => model[b] === 1));
      // Runs cover exactly the set bits.
      const fromRuns: number[] = [];
      for (let run = bm.nextSetRun(0); run !== null; run = bm.nextSetRun(run.block + run.count)) {
        for (let i = 0; i < run.count; i++) fromRuns.push(run.block + i);
        if (run.block + run.count < bm.blocks) expect(bm.test(run.block + run.count)).toBe(false);
      }
      expect(fromRuns).toEqual(setBits(bm));
    });
  }
});
