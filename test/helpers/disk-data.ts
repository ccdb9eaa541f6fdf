/**
 * Comparing the data areas of disk files (with internal metadata the data
 * area is the start of the file): a hash for a quick check, the differing
 * 4 KiB blocks for a readable failure.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';

/** Read in 1 MiB pieces: a 64 MiB disk is never held whole. */
const CHUNK_BYTES = 1024 * 1024;
const BLOCK = 4096;

/** sha256 of the first `bytes` of a file. */
export async function hashPrefix(file: string, bytes: number): Promise<string> {
  const fh = await fsp.open(file, 'r');
  try {
    const h = createHash('sha256');
    const buf = Buffer.alloc(CHUNK_BYTES);
    for (let at = 0; at < bytes; at += buf.length) {
      const n = Math.min(buf.length, bytes - at);
      const { bytesRead } = await fh.read(buf, 0, n, at);
      h.update(buf.subarray(0, bytesRead));
    }
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}

/** 4 KiB blocks (block numbers) whose contents differ between the first `bytes` of two files. */
export async function differingBlocks(a: string, b: string, bytes: number, limit = 20): Promise<number[]> {
  const [fa, fb] = [await fsp.open(a, 'r'), await fsp.open(b, 'r')];
  try {
    const out: number[] = [];
    const ba = Buffer.alloc(CHUNK_BYTES);
    const bb = Buffer.alloc(CHUNK_BYTES);
    for (let at = 0; at < bytes && out.length < limit; at += ba.length) {
      const n = Math.min(ba.length, bytes - at);
      await fa.read(ba, 0, n, at);
      await fb.read(bb, 0, n, at);
      for (let o = 0; o < n && out.length < limit; o += BLOCK) {
        if (!ba.subarray(o, o + BLOCK).equals(bb.subarray(o, o + BLOCK))) out.push((at + o) / BLOCK);
      }
    }
    return out;
  } finally {
    await fa.close();
    await fb.close();
  }
}

/** Fails unless the first `bytes` of every node's disk equal the first node's, naming the blocks that differ. */
export async function expectSameData(nodes: ReadonlyArray<{ name: string; diskPath: string | null }>, bytes: number): Promise<void> {
  const [first, ...rest] = nodes.map((n) => {
    if (n.diskPath === null) throw new Error(`${n.name} has no disk`);
    return { name: n.name, diskPath: n.diskPath };
  });
  const want = await hashPrefix(first!.diskPath, bytes);
  for (const n of rest) {
    const got = await hashPrefix(n.diskPath, bytes);
    if (got !== want) {
      const blocks = await differingBlocks(first!.diskPath, n.diskPath, bytes);
      throw new Error(`the data of ${n.name} differs from ${first!.name}'s, first differing 4 KiB blocks: ${blocks.join(', ')}`);
    }
  }
}
