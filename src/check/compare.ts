/**
 * Are two replicas identical? Reads two block sources side by side (NBD
 * exports or disks) and counts the 4 KiB blocks that differ.
 *
 * A node's disk with internal metadata ends in that node's own metadata
 * (node id, bitmaps), which differs between replicas by design; compare the
 * data area only (`dataAreaBytes`, or an explicit length).
 */
import { MirrorError } from '../errors.js';
import { openMd } from '../meta/index.js';
import type { BlockSource } from './block-source.js';
import { looksLikeNbdUri } from './nbd-uri.js';
import { STAMP_BLOCK_BYTES } from './stamp.js';

export interface CompareOptions {
  a: BlockSource;
  b: BlockSource;
  /** First byte compared. Default 0. */
  offset?: number;
  /** Bytes compared; both sources must hold offset + length. Default: up to the end of the smaller one. */
  length?: number;
  /** Differing blocks listed (all are counted). Default 10. */
  maxListed?: number;
}

export interface CompareReport {
  ok: boolean;
  a: { name: string; sizeBytes: number };
  b: { name: string; sizeBytes: number };
  offset: number;
  length: number;
  /** No length was given and the sizes differ: that alone is a difference. */
  sizesDiffer: boolean;
  blocksCompared: number;
  differingBlocks: number;
  /** Byte offsets of the first differing blocks. */
  firstDifferences: number[];
}

/** Bytes read from each side at a time. */
const COMPARE_CHUNK_BYTES = 1024 * 1024;

export async function compareSources(o: CompareOptions): Promise<CompareReport> {
  const { a, b } = o;
  const offset = o.offset ?? 0;
  const maxListed = o.maxListed ?? 10;
  const smaller = Math.min(a.sizeBytes, b.sizeBytes);
  const length = o.length ?? Math.max(0, smaller - offset);
  for (const s of [a, b]) {
    if (offset + length > s.sizeBytes) {
      throw new MirrorError('ERR_IO', `${s.name} has ${s.sizeBytes} bytes, fewer than the ${offset + length} the comparison needs`, { target: s.name });
    }
  }
  const sizesDiffer = o.length === undefined && a.sizeBytes !== b.sizeBytes;
  const chunk = alignDown(Math.min(COMPARE_CHUNK_BYTES, a.maxReadBytes, b.maxReadBytes));
  const firstDifferences: number[] = [];
  let differingBlocks = 0;
  let blocksCompared = 0;

  const readBoth = (at: number): Promise<[Buffer, Buffer]> => {
    const n = Math.min(chunk, offset + length - at);
    return Promise.all([a.read(at, n), b.read(at, n)]);
  };
  // One chunk read ahead while the previous one is compared.
  let at = offset;
  let pending = length > 0 ? readBoth(at) : null;
  while (pending !== null) {
    const [x, y] = await pending;
    const here = at;
    at += x.length;
    pending = at < offset + length ? readBoth(at) : null;
    pending?.catch(() => undefined); // awaited next round; never unhandled meanwhile
    for (let i = 0; i < x.length; i += STAMP_BLOCK_BYTES) {
      blocksCompared++;
      const end = Math.min(i + STAMP_BLOCK_BYTES, x.length);
      if (x.subarray(i, end).equals(y.subarray(i, end))) continue;
      differingBlocks++;
      if (firstDifferences.length < maxListed) firstDifferences.push(here + i);
    }
  }
  return {
    ok: differingBlocks === 0 && !sizesDiffer,
    a: { name: a.name, sizeBytes: a.sizeBytes },
    b: { name: b.name, sizeBytes: b.sizeBytes },
    offset,
    length,
    sizesDiffer,
    blocksCompared,
    differingBlocks,
    firstDifferences,
  };
}

/**
 * The data area of a mirrorbd disk with internal metadata (what its export
 * serves); for a URI, null: the export is the data area already.
 */
export async function dataAreaBytes(target: string): Promise<number | null> {
  if (looksLikeNbdUri(target)) return null;
  const md = await openMd({ diskPath: target, metaDisk: 'internal', readOnly: true });
  try {
    return md.layout.dataSizeBytes;
  } finally {
    await md.close();
  }
}

function alignDown(n: number): number {
  return Math.max(STAMP_BLOCK_BYTES, n - (n % STAMP_BLOCK_BYTES));
}
