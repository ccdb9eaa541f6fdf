/** Image files for the benchmarks: filled with data, not sparse, and synced. */

import { randomFill } from 'node:crypto';
import { open } from 'node:fs/promises';

const MiB = 1024 * 1024;
function randomFillAsync(buf: Buffer): Promise<void> {
  return new Promise((resolve, reject) => randomFill(buf, (err) => (err ? reject(err) : resolve())));
}

/**
 * Writes `bytes` of data to `path`: random bytes throughout when
 * `fill` is 'random' (nothing repeats, so a copy is a real copy), zeros
 * written out block by block when 'zero' (allocated, not a hole). Synced.
 */
export async function createImage(path: string, bytes: number, fill: 'random' | 'zero'): Promise<void> {
  const fh = await open(path, 'w');
  try {
    const chunk = Buffer.alloc(MiB);
    for (let off = 0; off < bytes; off += MiB) {
      const n = Math.min(MiB, bytes - off);
      if (fill === 'random') await randomFillAsync(chunk);
      await fh.write(chunk, 0, n, off);
    }
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/** fdatasync of a file, so the next server does not inherit its dirty pages. */
export async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/**
 * `count` distinct indices in [0, n), in a pseudo-random order that depends
 * only on `seed` (the same blocks for every repetition and every run).
 */
export function scatteredIndices(n: number, count: number, seed: number): number[] {
  if (count > n) throw new Error(`cannot pick ${count} distinct indices of ${n}`);
  let x = seed >>> 0 || 0x9e3779b9;
  const next = (): number => {
    // xorshift32
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  const picked = new Set<number>();
  const out: number[] = [];
  while (out.length < count) {
    const i = next() % n; // n is far below 2^32: the bias is negligible
    if (!picked.has(i)) {
      picked.add(i);
      out.push(i);
    }
  }
  return out;
}
