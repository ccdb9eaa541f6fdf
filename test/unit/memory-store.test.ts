import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BlockStoreError, MEMORY_CHUNK_BYTES, MemoryStore, type Extent } from '../../native-free-io/index.js';

const CHUNK = MEMORY_CHUNK_BYTES;
const KiB = 1024;

async function rejection(p: Promise<unknown>): Promise<BlockStoreError> {
  const outcome = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(outcome).toBeInstanceOf(BlockStoreError);
  return outcome as BlockStoreError;
}

const data = (offset: number, length: number): Extent => ({ offset, length, hole: false, zero: false });
const hole = (offset: number, length: number): Extent => ({ offset, length, hole: true, zero: true });

describe('MemoryStore', () => {
  it('starts as one hole that reads as zeroes and costs no memory', async () => {
    const store = new MemoryStore(1024 * CHUNK);
    expect(store.capabilities).toEqual({ canTrim: true, canFastZero: true, knowsAllocation: true, rotational: false });
    expect(await store.extents(0, store.size)).toEqual([hole(0, store.size)]);
    expect((await store.read(5 * CHUNK - 3, 10)).every((b) => b === 0)).toBe(true);
    expect(store.allocatedBytes).toBe(0);
  });

  it('round-trips data across chunk boundaries and allocates only the chunks written', async () => {
    const store = new MemoryStore(10 * CHUNK + 100); // last chunk is partial
    const expected = Buffer.alloc(store.size);
    const writes: Array<[number, number]> = [
      [CHUNK - 1, 2],
      [3 * CHUNK + 17, CHUNK + 5],
      [store.size - 7, 7],
    ];
    for (const [offset, length] of writes) {
      const bytes = randomBytes(length);
      await store.write(offset, bytes);
      bytes.copy(expected, offset);
    }
    expect((await store.read(0, store.size)).equals(expected)).toBe(true);
    const into = Buffer.alloc(CHUNK + 5, 0xff);
    expect(await store.read(3 * CHUNK + 17, CHUNK + 5, into)).toBe(into);
    expect(into.equals(expected.subarray(3 * CHUNK + 17, 4 * CHUNK + 22))).toBe(true);

    expect(await store.extents(0, store.size)).toEqual([
      data(0, 2 * CHUNK),
      hole(2 * CHUNK, CHUNK),
      data(3 * CHUNK, 2 * CHUNK),
      hole(5 * CHUNK, 5 * CHUNK),
      data(10 * CHUNK, 100),
    ]);
    expect(store.allocatedBytes).toBe(4 * CHUNK + 100);
  });

  it('returns copies: changing what read returned or what was written does not change the store', async () => {
    const store = new MemoryStore(CHUNK);
    const written = Buffer.alloc(16, 1);
    await store.write(0, written);
    written.fill(9);
    const got = await store.read(0, 16);
    got.fill(7);
    expect((await store.read(0, 16)).every((b) => b === 1)).toBe(true);
  });

  it('trim drops the chunks it covers whole and zeroes the edges of the others', async () => {
    const store = new MemoryStore(8 * CHUNK);
    await store.write(0, Buffer.alloc(8 * CHUNK, 0xee));
    await store.trim(CHUNK + 10, 3 * CHUNK); // whole chunks 2 and 3; parts of 1 and 4
    expect(await store.extents(0, store.size)).toEqual([data(0, 2 * CHUNK), hole(2 * CHUNK, 2 * CHUNK), data(4 * CHUNK, 4 * CHUNK)]);
    const all = await store.read(0, store.size);
    expect(all.subarray(0, CHUNK + 10).every((b) => b === 0xee)).toBe(true);
    expect(all.subarray(CHUNK + 10, 4 * CHUNK + 10).every((b) => b === 0)).toBe(true);
    expect(all.subarray(4 * CHUNK + 10).every((b) => b === 0xee)).toBe(true);
    expect(store.allocatedBytes).toBe(6 * CHUNK);
  });

  it('writeZeroes punches holes unless noHole asks for allocation', async () => {
    const store = new MemoryStore(6 * CHUNK);
    await store.write(0, Buffer.alloc(4 * CHUNK, 0x42));
    await store.writeZeroes(0, 2 * CHUNK);
    expect(await store.extents(0, 4 * CHUNK)).toEqual([hole(0, 2 * CHUNK), data(2 * CHUNK, 2 * CHUNK)]);

    await store.writeZeroes(2 * CHUNK, CHUNK, { noHole: true });
    await store.writeZeroes(5 * CHUNK, CHUNK, { noHole: true }); // allocates a chunk that was a hole
    expect(await store.extents(0, store.size)).toEqual([hole(0, 2 * CHUNK), data(2 * CHUNK, 2 * CHUNK), hole(4 * CHUNK, CHUNK), data(5 * CHUNK, CHUNK)]);
    const all = await store.read(0, store.size);
    expect(all.subarray(0, 3 * CHUNK).every((b) => b === 0)).toBe(true);
    expect(all.subarray(3 * CHUNK, 4 * CHUNK).every((b) => b === 0x42)).toBe(true);
    expect(all.subarray(4 * CHUNK).every((b) => b === 0)).toBe(true);
  });

  it('reports extents of a sub-range clipped to it, also on a huge sparse store', async () => {
    const store = new MemoryStore(2 ** 40); // 1 TiB, sparse
    await store.write(2 ** 39, Buffer.from('middle'));
    expect(await store.extents(2 ** 39 - 5, 10 + CHUNK)).toEqual([hole(2 ** 39 - 5, 5), data(2 ** 39, CHUNK), hole(2 ** 39 + CHUNK, 5)]);
    expect(await store.extents(0, store.size)).toEqual([hole(0, 2 ** 39), data(2 ** 39, CHUNK), hole(2 ** 39 + CHUNK, 2 ** 39 - CHUNK)]);
    expect(await store.extents(2 ** 39 + 3, 2)).toEqual([data(2 ** 39 + 3, 2)]);
    expect(await store.extents(7, 0)).toEqual([]);
    expect((await store.read(2 ** 39, 6)).toString()).toBe('middle');
  });

  it('rejects out-of-range requests with EINVAL, or ENOSPC for writes', async () => {
    const store = new MemoryStore(4 * KiB);
    const cases: Array<[Promise<unknown>, string, string]> = [
      [store.read(4 * KiB - 1, 2), 'read', 'EINVAL'],
      [store.write(4 * KiB, Buffer.alloc(1)), 'write', 'ENOSPC'],
      [store.writeZeroes(1, 4 * KiB), 'writeZeroes', 'ENOSPC'],
      [store.trim(4 * KiB + 1, 0), 'trim', 'EINVAL'],
      [store.extents(0, 4 * KiB + 1), 'extents', 'EINVAL'],
      [store.read(-4, 1), 'read', 'EINVAL'],
      [store.read(0, 8, Buffer.alloc(7)), 'read', 'EINVAL'],
    ];
    for (const [p, op, errno] of cases) {
      const err = await rejection(p);
      expect({ op: err.op, errno: err.errno }).toEqual({ op, errno });
    }
    expect(store.allocatedBytes).toBe(0);
    expect(() => new MemoryStore(-1)).toThrow(BlockStoreError);
  });

  it('fails the chosen operations with an injected errno until cleared', async () => {
    const store = new MemoryStore(CHUNK);
    store.failWith('EIO', ['write', 'flush']);
    const err = await rejection(store.write(10, Buffer.from('x')));
    expect({ errno: err.errno, op: err.op, offset: err.offset, length: err.length }).toEqual({ errno: 'EIO', op: 'write', offset: 10, length: 1 });
    expect((await rejection(store.flush())).errno).toBe('EIO');
    expect((await store.read(10, 1))[0]).toBe(0);
    store.failWith(undefined);
    await store.write(10, Buffer.from('x'));
    await store.flush();
    expect((await store.read(10, 1)).toString()).toBe('x');
  });

  it('reads and writes scattered runs in order, refusing a bad batch before touching anything', async () => {
    const s = new MemoryStore(4 * CHUNK);
    const runs = [
      { offset: 10, length: 100 },
      { offset: CHUNK - 50, length: 100 }, // across a chunk boundary
      { offset: 3 * CHUNK, length: 7 },
    ];
    const data = randomBytes(207);
    await s.writeRuns(runs, [data.subarray(0, 60), data.subarray(60, 61), data.subarray(61)]);
    expect((await s.readRuns(runs)).equals(data)).toBe(true);
    expect((await s.read(CHUNK - 50, 100)).equals(data.subarray(100, 200))).toBe(true);
    expect((await rejection(s.writeRuns([{ offset: 0, length: 1 }, { offset: 4 * CHUNK - 1, length: 2 }], [Buffer.alloc(3)]))).errno).toBe('ENOSPC');
    expect((await rejection(s.writeRuns([{ offset: 100, length: 1 }, { offset: 0, length: 1 }], [Buffer.alloc(2)]))).errno).toBe('EINVAL');
    expect((await rejection(s.writeRuns(runs, [Buffer.alloc(206)]))).errno).toBe('EINVAL');
    s.failWith('EIO', ['write']);
    expect((await rejection(s.writeRuns(runs, [Buffer.alloc(207)]))).errno).toBe('EIO');
    s.failWith(undefined);
    expect((await s.readRuns(runs)).equals(data)).toBe(true);
  });

  it('refuses every operation after close with EBADF', async () => {
    const store = new MemoryStore(CHUNK);
    await store.write(0, Buffer.from('gone'));
    await store.close();
    for (const p of [store.read(0, 1), store.write(0, Buffer.alloc(1)), store.trim(0, 1), store.flush(), store.extents(0, 1)]) {
      expect((await rejection(p)).errno).toBe('EBADF');
    }
    expect(store.allocatedBytes).toBe(0);
  });
});
