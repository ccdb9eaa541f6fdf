/**
 * Fuzz target: the bitmap run-length chunk decoder (src/meta/bitmap-rle.ts,
 * decodeBitmapRleChunk), which reads what a peer sends at connect.
 *
 * Chunks come from the encoder over random bitmaps (sizes from one block to
 * a million, runs of every length, chunk limits from the minimum up), then
 * are edited: header varints replaced by boundary values, over-long and
 * non-minimal varints, runs split, zero runs, bytes appended or cut, and
 * byte-level mutations. Oracles:
 * - only BitmapRleError is thrown, with a known reason and an offset within
 *   the chunk (or the limit, for chunk-too-large);
 * - a refused chunk leaves the target bitmap exactly as it was;
 * - an accepted chunk changes exactly what a reference decoder written here
 *   says (the described blocks as the runs say, nothing else), and
 *   checkBitmapRleChunk agrees on the header;
 * - unmutated chunks decode back to the source bitmap.
 */
import { Bitmap } from '../../src/meta/bitmap.js';
import { BitmapRleError, RLE_MIN_CHUNK_BYTES, checkBitmapRleChunk, decodeBitmapRleChunk, encodeBitmapRle } from '../../src/meta/bitmap-rle.js';
import { InvariantError, check, mutateBytes, runInputs, showBytes, type FuzzBudget, type FuzzCounts, type Rng } from './fuzz-kit.js';

const REASONS = new Set(['chunk-too-large', 'truncated-varint', 'varint-too-long', 'start-beyond-end', 'empty-chunk', 'count-beyond-end', 'zero-run', 'run-past-end', 'runs-short']);

function varint(value: number, minBytes = 1): Buffer {
  const out: number[] = [];
  let v = value;
  do {
    out.push(v % 0x80);
    v = Math.floor(v / 0x80);
  } while (v > 0 || out.length < minBytes);
  for (let i = 0; i < out.length - 1; i++) out[i]! |= 0x80;
  return Buffer.from(out);
}

function randomBitmap(rng: Rng): Bitmap {
  const blocks = rng.pick([1, 2, 63, 64, 65, 1000, 32768, rng.range(1, 5000), 1_000_000]);
  const bm = new Bitmap(blocks * 4096 - (rng.chance(0.3) ? rng.int(4096) : 0));
  const runs = rng.length(200);
  for (let r = 0; r < runs; r++) {
    const first = rng.int(bm.blocks);
    const count = 1 + rng.int(Math.min(bm.blocks - first, rng.pick([1, 3, 64, 1000, bm.blocks])));
    if (rng.chance(0.7)) bm.setBlocks(first, count);
    else bm.clearBlocks(first, count);
  }
  if (rng.chance(0.05)) bm.setAll();
  return bm;
}

/** Structure-aware edits: re-encode the chunk's varints with lies in them. */
function editChunk(rng: Rng, chunk: Buffer, blocks: number): Buffer {
  // Split the chunk into its varints (it came from the encoder, so they parse).
  const values: number[] = [];
  for (let at = 0; at < chunk.length; ) {
    let v = 0;
    let scale = 1;
    let i = at;
    for (;;) {
      const byte = chunk[i++]!;
      v += (byte & 0x7f) * scale;
      scale *= 0x80;
      if ((byte & 0x80) === 0 || i >= chunk.length) break;
    }
    values.push(v);
    at = i;
  }
  const boundary = [0, 1, blocks - 1, blocks, blocks + 1, 2 ** 32, 2 ** 53 - 1, 2 ** 53, 2 ** 56 - 1];
  const i = rng.int(values.length);
  switch (rng.int(5)) {
    case 0:
      values[i] = rng.pick(boundary);
      break;
    case 1:
      if (values.length > 2) values.splice(2 + rng.int(values.length - 2), 0, 0);
      break;
    case 2:
      if (i >= 2 && values[i]! > 1) values.splice(i, 1, 1, values[i]! - 1); // one run split in two
      break;
    case 3:
      values.push(rng.pick([0, 1, 5]));
      break;
    default:
      values.splice(i, 1);
  }
  const widths = values.map(() => (rng.chance(0.1) ? rng.range(1, 9) : 1)); // non-minimal and over-long varints
  return Buffer.concat(values.map((v, k) => varint(Math.max(0, v), widths[k]!)));
}

/** The reference decoder: what the chunk says, or null when it is malformed. */
function reference(chunk: Buffer, blocks: number, maxChunk: number): { first: number; count: number; runs: number[] } | null {
  if (chunk.length > maxChunk) return null;
  let at = 0;
  const read = (): number | null => {
    let v = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      if (at >= chunk.length) return null;
      const byte = chunk[at++]!;
      v += (byte & 0x7f) * scale;
      if (v > Number.MAX_SAFE_INTEGER) return null;
      if ((byte & 0x80) === 0) return v;
      scale *= 0x80;
    }
    return null;
  };
  const first = read();
  if (first === null || first >= blocks) return null;
  const count = read();
  if (count === null || count === 0 || first + count > blocks) return null;
  const runs: number[] = [];
  let done = 0;
  while (done < count) {
    const run = read();
    if (run === null || (run === 0 && runs.length > 0) || done + run > count) return null;
    runs.push(run);
    done += run;
  }
  return at === chunk.length ? { first, count, runs } : null;
}

export function fuzzBitmapRle(seed: number, budget: FuzzBudget): FuzzCounts {
  return runInputs('meta-bitmap-rle', seed, budget, (rng, _i, record) => {
    const source = randomBitmap(rng);
    const maxChunk = rng.pick([RLE_MIN_CHUNK_BYTES, 64, 1024, 65536, rng.range(RLE_MIN_CHUNK_BYTES, 4096)]);
    const from = rng.chance(0.5) ? 0 : rng.int(source.blocks);
    const to = rng.chance(0.5) ? source.blocks : from + rng.int(source.blocks - from + 1);
    const chunks = [...encodeBitmapRle(source, { fromBlock: from, toBlock: to, maxChunkBytes: maxChunk })];
    const target = rng.chance(0.5) ? new Bitmap(source.dataSizeBytes) : randomBitmap(rng);
    const mutateIt = rng.chance(0.85) && chunks.length > 0;
    if (!mutateIt) {
      // Unmutated: the chunks rebuild the source range in any order.
      const into = new Bitmap(source.dataSizeBytes);
      if (rng.chance(0.5)) chunks.reverse();
      record(() => `${chunks.length} unmutated chunks of ${source.blocks} blocks, limit ${maxChunk}`);
      for (const c of chunks) decodeBitmapRleChunk(c, into, maxChunk);
      const expect = new Bitmap(source.dataSizeBytes);
      for (let b = from; b < to; ) {
        const set = source.nextSet(b, to);
        if (set < 0) break;
        const end = source.nextClear(set, to);
        expect.setBlocks(set, end - set);
        b = end;
      }
      check(into.toBuffer().equals(expect.toBuffer()), 'unmutated chunks do not rebuild the source range');
      return 'accepted';
    }
    let chunk = chunks[rng.int(chunks.length)]!;
    const r = rng.int(3);
    if (r === 0) chunk = editChunk(rng, chunk, target.blocks);
    else if (r === 1) chunk = mutateBytes(rng, chunk, 3);
    else chunk = mutateBytes(rng, editChunk(rng, chunk, target.blocks), 1);
    const decodeInto = target.blocks === source.blocks || rng.chance(0.5) ? target : new Bitmap(source.dataSizeBytes);
    const limit = rng.chance(0.9) ? maxChunk : rng.range(1, maxChunk);
    record(() => `chunk (limit ${limit}) into ${decodeInto.blocks} blocks: ${showBytes(chunk)}`);
    const before = decodeInto.toBuffer();
    const want = reference(chunk, decodeInto.blocks, limit);
    let header;
    try {
      header = decodeBitmapRleChunk(chunk, decodeInto, limit);
    } catch (e) {
      if (e instanceof InvariantError) throw e;
      check(e instanceof BitmapRleError && REASONS.has(e.reason), () => `threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
      check(e.reason === 'chunk-too-large' ? e.offset === limit : e.offset >= 0 && e.offset <= chunk.length, `error offset ${e.offset} outside the chunk of ${chunk.length}`);
      check(decodeInto.toBuffer().equals(before), `refused chunk (${e.reason}) changed the bitmap`);
      check(want === null, () => `refused (${e.reason}) a chunk the reference accepts`);
      return 'rejected';
    }
    check(want !== null, 'accepted a chunk the reference refuses');
    check(header.firstBlock === want.first && header.blockCount === want.count, 'header differs from the reference');
    const h2 = checkBitmapRleChunk(chunk, decodeInto.blocks, limit);
    check(h2.firstBlock === header.firstBlock && h2.blockCount === header.blockCount, 'checkBitmapRleChunk disagrees with decode');
    const expect = Bitmap.fromBuffer(decodeInto.dataSizeBytes, before);
    let at = want.first;
    want.runs.forEach((run, k) => {
      if (run > 0) {
        if (k % 2 === 1) expect.setBlocks(at, run);
        else expect.clearBlocks(at, run);
      }
      at += run;
    });
    check(decodeInto.toBuffer().equals(expect.toBuffer()), 'decoded bits differ from the reference');
    decodeInto.checkInvariants();
    return 'accepted';
  });
}
