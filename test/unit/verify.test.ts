import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { BITMAP_BLOCK_BYTES, Bitmap } from '../../src/meta/index.js';
import { VERIFY_IN_FLIGHT, VERIFY_RANGE_BYTES, VerifySource, answerVerify, digest, type DigestAlg, type VerifyProgress } from '../../src/replication/verify.js';
import type { Packet } from '../../src/replication/wire/index.js';
import { ControlledStore, Wire, deferred, randomBuffer, seededRandom } from '../helpers/controlled-store.js';

const log = pino({ level: 'silent' });
const KiB = 1024;
const BLOCK = BITMAP_BLOCK_BYTES;

/**
 * VerifyS (with the bitmap for the peer) and VerifyT (answerVerify) wired by
 * two ordered asynchronous wires.
 */
async function run(
  local: ControlledStore,
  remote: ControlledStore,
  alg: DigestAlg = 'sha256',
): Promise<{ progress: VerifyProgress; bitmap: Bitmap; toTarget: Wire<Packet>; doneCalls: number }> {
  const bitmap = new Bitmap(local.size);
  const toTarget = new Wire<Packet>();
  const toSource = new Wire<Packet>();
  const done = deferred<VerifyProgress>();
  let doneCalls = 0;
  const source = new VerifySource(local, local.size, bitmap, alg, { send: (p) => toTarget.send(p) }, (p) => {
    doneCalls++;
    done.resolve(p);
  }, log);
  toTarget.deliver = (p) => {
    if (p.kind !== 'ov-request') throw new Error(`unexpected ${p.kind}`);
    void answerVerify(remote, alg, p, { send: (x) => toSource.send(x) });
  };
  toSource.deliver = (p) => {
    if (!source.handle(p)) throw new Error(`unexpected ${p.kind}`);
  };
  source.start();
  const progress = await done.promise;
  // let anything still in flight arrive: the result must not change after done
  await new Promise((r) => setTimeout(r, 20));
  return { progress, bitmap, toTarget, doneCalls };
}

async function twins(size: number, seed = 1): Promise<[ControlledStore, ControlledStore]> {
  const a = new ControlledStore(size);
  const b = new ControlledStore(size);
  const img = randomBuffer(seededRandom(seed), size);
  await a.inner.write(0, img);
  await b.inner.write(0, img);
  return [a, b];
}

function setBlocks(bm: Bitmap): number[] {
  const out: number[] = [];
  for (let b = bm.nextSet(0); b >= 0; b = bm.nextSet(b + 1)) out.push(b);
  return out;
}

describe('online verify', () => {
  it('equal stores: 0 blocks out of sync, nothing marked, every byte covered', async () => {
    const [a, b] = await twins(2048 * KiB);
    const { progress, bitmap, toTarget, doneCalls } = await run(a, b);
    expect(progress.outOfSyncBlocks).toBe(0);
    expect(progress.finished).toBe(true);
    expect(progress.doneBytes).toBe(2048 * KiB);
    expect(progress.totalBytes).toBe(2048 * KiB);
    expect(bitmap.countSet()).toBe(0);
    expect(doneCalls).toBe(1);
    // only coarse ranges went out
    const reqs = toTarget.sent as Array<{ offset: number; length: number }>;
    expect(reqs.map((q) => q.offset)).toEqual(Array.from({ length: 8 }, (_, i) => i * VERIFY_RANGE_BYTES));
  });

  it('k differing 4 KiB blocks in different ranges: exactly those blocks are marked', async () => {
    const size = 2048 * KiB + 1000; // a partial last block
    const [a, b] = await twins(size, 2);
    const lastBlock = Math.ceil(size / BLOCK) - 1;
    const differing = [0, 63, 64, 65, 200, 511, lastBlock];
    for (const blk of differing) {
      const at = blk * BLOCK;
      const len = Math.min(BLOCK, size - at);
      const cur = await b.inner.read(at, len);
      cur[len - 1] ^= 0x01; // one bit is enough
      await b.inner.write(at, cur);
    }
    const { progress, bitmap, doneCalls } = await run(a, b);
    expect(setBlocks(bitmap)).toEqual(differing);
    expect(progress.outOfSyncBlocks).toBe(differing.length);
    expect(progress.doneBytes).toBe(size);
    expect(doneCalls).toBe(1);
  });

  for (const alg of ['crc32c', 'md5', 'sha1', 'sha256'] as const) {
    it(`finds a differing block with ${alg}`, async () => {
      const [a, b] = await twins(512 * KiB, 3);
      await b.inner.write(300 * KiB, Buffer.alloc(10, 0xff));
      const { bitmap } = await run(a, b, alg);
      expect(setBlocks(bitmap)).toEqual([Math.floor((300 * KiB) / BLOCK), Math.floor((300 * KiB + 9) / BLOCK)].filter((v, i, s) => s.indexOf(v) === i));
    });
  }

  it('a range the peer cannot read is marked block by block, not skipped', async () => {
    const [a, b] = await twins(256 * KiB, 4);
    b.inner.failWith('EIO', ['read']);
    const { progress, bitmap } = await run(a, b);
    expect(bitmap.countSet()).toBe(64);
    expect(progress.outOfSyncBlocks).toBe(64);
  });

  it('leaves bits already set alone (verify only adds marks)', async () => {
    const [a, b] = await twins(256 * KiB, 5);
    const bitmap = new Bitmap(a.size);
    bitmap.setBlocks(10, 1);
    const toSource = new Wire<Packet>();
    const done = deferred();
    const source = new VerifySource(a, a.size, bitmap, 'sha256', { send: (p) => void answerVerify(b, 'sha256', p as { id: number; offset: number; length: number }, { send: (x) => toSource.send(x) }) }, () => done.resolve(), log);
    toSource.deliver = (p) => void source.handle(p);
    source.start();
    await done.promise;
    expect(setBlocks(bitmap)).toEqual([10]);
  });

  it('does not finish before every differing range was narrowed down, when local reads complete out of order', async () => {
    // The first range's local read is slow (a busy disk); the second
    // range's answer is compared first. The differing block in the first
    // range must still be found and marked, and done reported once, after it.
    const [a, b] = await twins(2 * VERIFY_RANGE_BYTES, 6);
    await b.inner.write(8 * KiB, Buffer.alloc(BLOCK, 0x5a)); // block 2, in the first range
    a.latency = (op, offset, length) => (op === 'read' && offset === 0 && length === VERIFY_RANGE_BYTES ? 30 : 0);
    const { progress, bitmap, doneCalls } = await run(a, b);
    expect(setBlocks(bitmap)).toEqual([2]);
    expect(progress.outOfSyncBlocks).toBe(1);
    expect(doneCalls).toBe(1);
  });

  it(`keeps at most VERIFY_IN_FLIGHT (${VERIFY_IN_FLIGHT}) requests outstanding`, async () => {
    const [a] = await twins(4096 * KiB, 7);
    const bitmap = new Bitmap(a.size);
    const sent: Packet[] = [];
    const source = new VerifySource(a, a.size, bitmap, 'crc32c', { send: (p) => sent.push(p) }, () => undefined, log);
    source.start();
    expect(sent).toHaveLength(VERIFY_IN_FLIGHT);
    source.stop();
  });

  it('answerVerify: the digest of the local range; an empty digest for a range beyond the disk', async () => {
    const [a] = await twins(64 * KiB, 8);
    const out: Packet[] = [];
    await answerVerify(a, 'sha1', { id: 3, offset: 4096, length: 8192 }, { send: (p) => out.push(p) });
    await answerVerify(a, 'sha1', { id: 4, offset: 60 * KiB, length: 8192 }, { send: (p) => out.push(p) });
    const want = digest('sha1', await a.inner.read(4096, 8192));
    expect(out[0]).toEqual({ kind: 'ov-reply', id: 3, offset: 4096, length: 8192, digest: want });
    expect(out[1]).toEqual({ kind: 'ov-reply', id: 4, offset: 60 * KiB, length: 8192, digest: Buffer.alloc(0) });
  });
});
