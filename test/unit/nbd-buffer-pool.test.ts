import { describe, expect, it } from 'vitest';
import { BufferPool, MIN_CLASS_BYTES } from '../../src/nbd/buffer-pool.js';

const MiB = 1024 * 1024;

describe('BufferPool', () => {
  it('hands out exactly the length asked, and reuses a released buffer', () => {
    const pool = new BufferPool(MiB, 16 * MiB);
    const a = pool.acquire(4096);
    expect(a.length).toBe(4096);
    expect(pool.outstanding).toBe(1);
    pool.release(a);
    expect(pool.outstanding).toBe(0);
    expect(pool.acquire(4096)).toBe(a);
  });

  it('a length between classes gets a view of the class buffer, whose memory comes back', () => {
    const pool = new BufferPool(MiB, 16 * MiB);
    const v = pool.acquire(5000);
    expect(v.length).toBe(5000);
    expect(v.buffer.byteLength).toBe(8192);
    const backing = v.buffer;
    pool.release(v);
    const again = pool.acquire(8192);
    expect(again.buffer).toBe(backing);
    expect(pool.acquire(100).buffer.byteLength).toBe(MIN_CLASS_BYTES);
  });

  it('never hands one buffer to two holders', () => {
    const pool = new BufferPool(MiB, 16 * MiB);
    const held = new Set<ArrayBufferLike>();
    for (let round = 0; round < 3; round++) {
      const bufs = Array.from({ length: 40 }, () => pool.acquire(4096));
      for (const b of bufs) {
        expect(held.has(b.buffer)).toBe(false);
        held.add(b.buffer);
      }
      for (const b of bufs) {
        held.delete(b.buffer);
        pool.release(b);
      }
    }
    expect(pool.outstanding).toBe(0);
  });

  it('keeps at most retainBytes free per class, and at least two buffers', () => {
    const pool = new BufferPool(MiB, 4 * MiB);
    const big = Array.from({ length: 10 }, () => pool.acquire(MiB));
    for (const b of big) pool.release(b);
    expect(pool.retained()).toBe(4 * MiB);
    const tiny = new BufferPool(MiB, 1024);
    const two = [tiny.acquire(MiB), tiny.acquire(MiB), tiny.acquire(MiB)];
    for (const b of two) tiny.release(b);
    expect(tiny.retained()).toBe(2 * MiB);
    pool.clear();
    expect(pool.retained()).toBe(0);
  });

  it('a request beyond the largest class gets a one-off buffer that is not pooled', () => {
    const pool = new BufferPool(64 * 1024, MiB);
    const big = pool.acquire(MiB);
    expect(big.length).toBe(MiB);
    expect(pool.outstanding).toBe(0);
    pool.release(big);
    expect(pool.outstanding).toBe(0);
    expect(pool.retained()).toBe(0);
    // A view that does not start at its memory's first byte is ignored as well.
    pool.release(Buffer.allocUnsafeSlow(8192).subarray(4096));
    expect(pool.retained()).toBe(0);
  });
});
