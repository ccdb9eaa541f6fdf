import { describe, expect, it } from 'vitest';
import { RangeLock } from '../../src/replication/range-lock.js';

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('range lock', () => {
  it('disjoint ranges are granted at once, together', async () => {
    const lock = new RangeLock();
    const a = await lock.acquire(0, 4096);
    const b = await lock.acquire(4096, 4096);
    expect(lock.size).toBe(2);
    a();
    b();
    expect(lock.size).toBe(0);
  });

  it('overlapping ranges run in the order they were queued', async () => {
    const lock = new RangeLock();
    const order: string[] = [];
    const first = await lock.acquire(0, 8192);
    const second = lock.acquire(4096, 4096).then((r) => {
      order.push('second');
      return r;
    });
    const third = lock.acquire(0, 1).then((r) => {
      order.push('third');
      return r;
    });
    await tick();
    expect(order).toEqual([]);
    first();
    const r2 = await second;
    await tick();
    // third overlaps first only, so it may go as soon as first is released
    expect(order).toEqual(['second', 'third']);
    r2();
    (await third)();
    expect(lock.size).toBe(0);
  });

  it('a later range waits for every earlier overlapping one, not only the first', async () => {
    const lock = new RangeLock();
    const a = await lock.acquire(0, 4096);
    const b = await lock.acquire(8192, 4096);
    let granted = false;
    const c = lock.acquire(0, 12288).then((r) => {
      granted = true;
      return r;
    });
    a();
    await tick();
    expect(granted).toBe(false);
    b();
    (await c)();
    expect(granted).toBe(true);
  });

  it('zero-length ranges conflict with nothing; releasing twice is harmless', async () => {
    const lock = new RangeLock();
    const a = await lock.acquire(0, 4096);
    const z = await lock.acquire(0, 0);
    z();
    z();
    a();
    expect(lock.size).toBe(0);
  });

  it('holds the same-order guarantee under a random load (seeded)', async () => {
    let seed = 42;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const lock = new RangeLock();
    const applied: number[][] = Array.from({ length: 16 }, () => []);
    const ops: Promise<void>[] = [];
    for (let i = 0; i < 500; i++) {
      const start = rand(16);
      const len = 1 + rand(4);
      const end = Math.min(16, start + len);
      ops.push(
        lock.acquire(start, end - start).then(async (release) => {
          for (let b = start; b < end; b++) applied[b].push(i);
          if (rand(2) === 0) await tick();
          release();
        }),
      );
    }
    await Promise.all(ops);
    for (const seq of applied) expect(seq).toEqual([...seq].sort((x, y) => x - y));
    expect(lock.size).toBe(0);
  });

  it('isFree: true only while nothing overlapping is held or waiting; it queues nothing', async () => {
    const lock = new RangeLock();
    expect(lock.isFree(0, 4096)).toBe(true);
    const held = await lock.acquire(4096, 4096);
    const waiting = lock.acquire(8000, 4096); // overlaps the held range: it waits
    expect(lock.isFree(0, 4096)).toBe(true); // touches 4096 without overlapping it
    expect(lock.isFree(4095, 2)).toBe(false);
    expect(lock.isFree(12000, 100)).toBe(false); // only the waiting entry covers it
    expect(lock.isFree(16384, 4096)).toBe(true);
    expect(lock.isFree(5000, 0)).toBe(true); // an empty range conflicts with nothing
    expect(lock.size).toBe(2);
    held();
    (await waiting)();
    expect(lock.isFree(4096, 8192)).toBe(true);
    expect(lock.size).toBe(0);
  });
});
