import { describe, expect, test } from 'vitest';
import { BITMAP_BLOCK_BYTES, Bitmap } from '../../src/meta/bitmap.js';
import {
  BitmapRleError,
  RLE_MIN_CHUNK_BYTES,
  checkBitmapRleChunk,
  decodeBitmapRleChunk,
  encodeBitmapRle,
  varintLength,
  type BitmapRleErrorReason,
} from '../../src/meta/bitmap-rle.js';
import { seededRandom as rng } from '../helpers/seeded-random.js';

const B = BITMAP_BLOCK_BYTES;
const MiB = 1024 * 1024;


/** Encodes and decodes into a bitmap filled with the opposite of what is expected, so every bit must be written. */
function roundTrip(bm: Bitmap, maxChunkBytes?: number): { back: Bitmap; chunks: Buffer[] } {
  const chunks = [...encodeBitmapRle(bm, { maxChunkBytes })];
  const back = new Bitmap(bm.dataSizeBytes);
  back.setAll();
  for (const c of chunks) {
    expect(c.length).toBeLessThanOrEqual(maxChunkBytes ?? 64 * 1024);
    decodeBitmapRleChunk(c, back, maxChunkBytes);
  }
  return { back, chunks };
}

function sameBits(a: Bitmap, b: Bitmap): void {
  expect(b.countSet()).toBe(a.countSet());
  expect(b.toBuffer().equals(a.toBuffer())).toBe(true);
  b.checkInvariants();
}

function varint(n: number): number[] {
  const out: number[] = [];
  let v = n;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}

function chunkOf(...values: number[]): Buffer {
  return Buffer.from(values.flatMap(varint));
}

function reasonOf(fn: () => unknown): BitmapRleErrorReason {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BitmapRleError);
    expect((e as BitmapRleError).code).toBe('ERR_BITMAP_RLE');
    return (e as BitmapRleError).reason;
  }
  throw new Error('expected a BitmapRleError');
}

describe('round trips', () => {
  const size = 8 * MiB + 3 * B + 1; // 2052 blocks, a partial last block
  const cases: Array<[string, (bm: Bitmap, r: () => number) => void]> = [
    ['all clear', () => undefined],
    ['all set', (bm) => bm.setAll()],
    ['alternating', (bm) => { for (let b = 0; b < bm.blocks; b += 2) bm.setBlocks(b, 1); }],
    ['alternating from 1', (bm) => { for (let b = 1; b < bm.blocks; b += 2) bm.setBlocks(b, 1); }],
    ['sparse 1 %', (bm, r) => { for (let b = 0; b < bm.blocks; b++) if (r() < 0.01) bm.setBlocks(b, 1); }],
    ['dense 99 %', (bm, r) => { for (let b = 0; b < bm.blocks; b++) if (r() < 0.99) bm.setBlocks(b, 1); }],
    ['first and last', (bm) => { bm.setBlocks(0, 1); bm.setBlocks(bm.blocks - 1, 1); }],
    ['long runs', (bm, r) => { for (let b = 0; b < bm.blocks; b += 1 + Math.floor(r() * 300)) bm.setBlocks(b, Math.min(bm.blocks - b, Math.floor(r() * 200))); }],
  ];
  for (const [name, fill] of cases) {
    for (const maxChunk of [RLE_MIN_CHUNK_BYTES, 100, 64 * 1024]) {
      test(`${name}, chunks of ${maxChunk} bytes`, () => {
        const bm = new Bitmap(size);
        fill(bm, rng(name.length * 31 + maxChunk));
        const { back, chunks } = roundTrip(bm, maxChunk);
        sameBits(bm, back);
        // The chunks cover the bitmap exactly once, in order.
        let next = 0;
        for (const c of chunks) {
          const h = checkBitmapRleChunk(c, bm.blocks, maxChunk);
          expect(h.firstBlock).toBe(next);
          next += h.blockCount;
        }
        expect(next).toBe(bm.blocks);
      });
    }
  }

  test('a range of blocks', () => {
    const bm = new Bitmap(4 * MiB);
    bm.setBlocks(100, 50);
    bm.setBlocks(500, 1);
    const chunks = [...encodeBitmapRle(bm, { fromBlock: 120, toBlock: 600 })];
    const back = new Bitmap(4 * MiB);
    for (const c of chunks) decodeBitmapRleChunk(c, back);
    expect(back.countSet()).toBe(31);
    expect(back.nextSetRun(0)).toEqual({ block: 120, count: 30 });
    expect([...encodeBitmapRle(bm, { fromBlock: 7, toBlock: 7 })]).toEqual([]);
    expect(() => [...encodeBitmapRle(bm, { fromBlock: 0, toBlock: bm.blocks + 1 })]).toThrow(RangeError);
    expect(() => [...encodeBitmapRle(bm, { maxChunkBytes: RLE_MIN_CHUNK_BYTES - 1 })]).toThrow(RangeError);
  });

  test('the encoding is canonical: all clear is one tiny chunk', () => {
    const bm = new Bitmap(1024 * MiB);
    const chunks = [...encodeBitmapRle(bm)];
    expect(chunks).toHaveLength(1);
    expect([...chunks[0]!]).toEqual([0, ...varint(bm.blocks), ...varint(bm.blocks)]);
    bm.setAll();
    expect([...[...encodeBitmapRle(bm)][0]!]).toEqual([0, ...varint(bm.blocks), 0, ...varint(bm.blocks)]);
  });

  test('sparse maps are much smaller than the plain image', () => {
    const r = rng(99);
    const bm = new Bitmap(1024 * MiB); // 262144 blocks, 32 KiB plain
    for (let b = 0; b < bm.blocks; b++) if (r() < 0.01) bm.setBlocks(b, 1);
    const rle = [...encodeBitmapRle(bm)].reduce((n, c) => n + c.length, 0);
    expect(rle).toBeLessThan(bm.byteLength / 3);
    const sparse = new Bitmap(1024 * MiB);
    for (let b = 0; b < sparse.blocks; b += 5000) sparse.setBlocks(b, 3);
    expect([...encodeBitmapRle(sparse)].reduce((n, c) => n + c.length, 0)).toBeLessThan(300);
  });

  test('varint lengths', () => {
    expect(varintLength(0)).toBe(1);
    expect(varintLength(127)).toBe(1);
    expect(varintLength(128)).toBe(2);
    expect(varintLength(2 ** 49)).toBe(8);
  });
});

describe('malformed chunks', () => {
  const blocks = 256;
  const bm = (): Bitmap => new Bitmap(blocks * B);
  const cases: Array<[string, Buffer, BitmapRleErrorReason]> = [
    ['empty buffer', Buffer.alloc(0), 'truncated-varint'],
    ['truncated first varint', Buffer.from([0x80]), 'truncated-varint'],
    ['truncated count', Buffer.from([0x00, 0x81]), 'truncated-varint'],
    ['truncated run', Buffer.from([0x00, 0x10, 0x85]), 'truncated-varint'],
    ['varint of 9 bytes', Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]), 'varint-too-long'],
    ['varint above 2^53', Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), 'varint-too-long'],
    ['start past the end', chunkOf(256, 1, 1), 'start-beyond-end'],
    ['huge start', chunkOf(2 ** 40, 1, 1), 'start-beyond-end'],
    ['empty chunk', chunkOf(0, 0), 'empty-chunk'],
    ['count past the end', chunkOf(200, 57, 57), 'count-beyond-end'],
    ['huge count', chunkOf(0, 2 ** 50, 1), 'count-beyond-end'],
    ['run past the count', chunkOf(0, 10, 11), 'run-past-end'],
    ['runs add up past the count', chunkOf(0, 10, 4, 4, 4), 'run-past-end'],
    ['bytes after the last run', chunkOf(0, 10, 10, 1), 'run-past-end'],
    ['no runs', chunkOf(0, 10), 'runs-short'],
    ['runs short', chunkOf(0, 10, 3, 3), 'runs-short'],
    ['zero run in the middle', chunkOf(0, 10, 3, 0, 7), 'zero-run'],
    ['zero set run after a zero clear run', chunkOf(0, 10, 0, 0, 10), 'zero-run'],
  ];
  for (const [name, chunk, reason] of cases) {
    test(`${name}: ${reason}, nothing changed`, () => {
      const target = bm();
      target.setBlocks(3, 5);
      const before = target.toBuffer();
      expect(reasonOf(() => decodeBitmapRleChunk(chunk, target))).toBe(reason);
      expect(target.toBuffer().equals(before)).toBe(true);
      expect(target.countSet()).toBe(5);
    });
  }

  test('a chunk over the agreed size', () => {
    expect(reasonOf(() => decodeBitmapRleChunk(Buffer.alloc(65), bm(), 64))).toBe('chunk-too-large');
  });

  test('the error names the byte offset', () => {
    try {
      decodeBitmapRleChunk(chunkOf(0, 10, 3, 0, 7), bm());
    } catch (e) {
      expect((e as BitmapRleError).offset).toBe(3);
      expect((e as Error).message).toMatch(/at byte 3/);
    }
  });

  test('seeded fuzz: random and mutated chunks decode or raise BitmapRleError, never anything else', () => {
    const r = rng(2024);
    const source = bm();
    for (let b = 0; b < blocks; b++) if (r() < 0.3) source.setBlocks(b, 1);
    const good = [...encodeBitmapRle(source, { maxChunkBytes: 40 })];
    let decoded = 0;
    let refused = 0;
    for (let i = 0; i < 20000; i++) {
      let chunk: Buffer;
      if (i % 3 === 0) {
        chunk = Buffer.from(Array.from({ length: Math.floor(r() * 24) }, () => Math.floor(r() * 256)));
      } else if (i % 3 === 1) {
        chunk = good[Math.floor(r() * good.length)]!;
      } else {
        chunk = Buffer.from(good[Math.floor(r() * good.length)]!);
        const flips = 1 + Math.floor(r() * 3);
        for (let f = 0; f < flips && chunk.length > 0; f++) chunk[Math.floor(r() * chunk.length)] = Math.floor(r() * 256);
        if (r() < 0.2) chunk = chunk.subarray(0, Math.floor(r() * chunk.length));
      }
      const target = bm();
      try {
        const h = decodeBitmapRleChunk(chunk, target, 40);
        expect(h.firstBlock + h.blockCount).toBeLessThanOrEqual(blocks);
        target.checkInvariants();
        decoded++;
      } catch (e) {
        if (!(e instanceof BitmapRleError)) throw e;
        expect(target.countSet()).toBe(0);
        refused++;
      }
    }
    expect(decoded).toBeGreaterThan(6000);
    expect(refused).toBeGreaterThan(6000);
  });
});
