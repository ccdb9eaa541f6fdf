import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { BITMAP_BLOCK_BYTES, Bitmap } from '../../src/meta/index.js';
import type { Peer, ReplicatedWrite } from '../../src/replication/peer.js';
import { RangeLock } from '../../src/replication/range-lock.js';
import { Receiver } from '../../src/replication/receiver.js';
import { Replicator } from '../../src/replication/replicator.js';
import {
  DEFAULT_RESYNC_BATCH_WINDOW_BYTES,
  DEFAULT_RESYNC_REQUEST_BYTES,
  RATE_TICK_MS,
  ResyncSource,
  ResyncTarget,
  type ResyncTargetOptions,
} from '../../src/replication/resync.js';
import type { PeerOutcome } from '../../src/replication/transfer-log.js';
import { MAX_BATCH_RUNS, WRITE_FLAGS, runsProblem, type Packet, type ResyncRun } from '../../src/replication/wire/index.js';
import { ControlledStore, Wire, deferred, randomBuffer, seededRandom, sleep, turns, until } from '../helpers/controlled-store.js';

const log = pino({ level: 'silent' });
const KiB = 1024;
const BLOCK = BITMAP_BLOCK_BYTES;

interface RigOptions {
  size?: number;
  targetSize?: number;
  /** [first block, count] marked in both bitmaps before the resync starts. */
  marks?: Array<[number, number]>;
  all?: boolean;
  target?: Partial<ResyncTargetOptions>;
  sourceCsums?: boolean;
  /** Fill the stores: by default both random and different everywhere. */
  sameOutsideMarks?: boolean;
  seed?: number;
}

/**
 * Two nodes in one process: the SyncSource (which is also the Primary, with
 * a real Replicator) and the SyncTarget (a Receiver and a ResyncTarget
 * sharing one apply lock, as the peer session wires them). The network is
 * two ordered wires delivering asynchronously.
 */
async function rig(o: RigOptions = {}) {
  const size = o.size ?? 1024 * KiB;
  const src = new ControlledStore(size);
  const dst = new ControlledStore(o.targetSize ?? size);
  const rand = seededRandom(o.seed ?? 1);
  const srcImage = randomBuffer(rand, size);
  await src.inner.write(0, srcImage);
  const dstImage = o.sameOutsideMarks ? Buffer.from(srcImage) : randomBuffer(rand, dst.size);
  const srcBitmap = new Bitmap(size);
  const dstBitmap = new Bitmap(dst.size);
  for (const [first, count] of o.marks ?? []) {
    srcBitmap.setBlocks(first, count);
    dstBitmap.setBlocks(first, count);
    if (o.sameOutsideMarks) {
      // the marked blocks differ
      randomBuffer(rand, count * BLOCK).copy(dstImage, first * BLOCK);
    }
  }
  if (o.all) {
    srcBitmap.setAll();
    dstBitmap.setAll();
  }
  await dst.inner.write(0, dstImage.subarray(0, dst.size));
  const originalTarget = Buffer.from(dstImage.subarray(0, dst.size));

  const toSource = new Wire<Packet>();
  const toTarget = new Wire<Packet>();
  const srcLock = new RangeLock(); // the Primary's application write lock
  const dstLock = new RangeLock(); // the Secondary's apply lock
  const targetDone = deferred();
  const sourceDone = deferred();
  const failures: string[] = [];

  const receiver = new Receiver(
    dst,
    dstLock,
    { send: (p) => toSource.send(p) },
    { written: (offset, length) => dstBitmap.clearRange(offset, length), diskFailed: () => undefined },
    log,
  );
  const target = new ResyncTarget(
    dst,
    dstBitmap,
    dstLock,
    { send: (p) => toSource.send(p) },
    { rate: { kind: 'fixed', bytesPerSec: 0 }, ...o.target },
    { done: () => targetDone.resolve(), failed: (reason) => failures.push(reason) },
    log,
  );
  const source = new ResyncSource(
    src,
    srcBitmap,
    srcLock,
    { send: (p) => toTarget.send(p) },
    { done: () => sourceDone.resolve() },
    log,
    o.sourceCsums ? (o.target?.csumsAlg ?? null) : null,
  );

  // The Primary's write path towards this peer (protocol C).
  const acks = new Map<number, (o: PeerOutcome) => void>();
  const barriers = new Map<number, (o: PeerOutcome) => void>();
  const peer = {
    nodeId: 1,
    replicate(w: ReplicatedWrite): Promise<PeerOutcome> | null {
      const done = new Promise<PeerOutcome>((resolve) => acks.set(w.seq, resolve));
      toTarget.send({ kind: 'data', seq: w.seq, epoch: w.epoch, offset: w.offset, flags: WRITE_FLAGS.SEND_WRITE_ACK, payload: w.payload! });
      // as Peer.replicate does while it is SyncSource
      return done.then((outcome) => {
        if (outcome === 'ok') source.replicatedWriteAcked(w.offset, w.length);
        return outcome;
      });
    },
    barrier(epoch: number): Promise<PeerOutcome> | null {
      toTarget.send({ kind: 'barrier', epoch });
      return new Promise<PeerOutcome>((resolve) => barriers.set(epoch, resolve));
    },
  } as unknown as Peer;
  const replicator = new Replicator({
    store: () => src,
    peers: () => [peer],
    bitmapFor: () => srcBitmap,
    writeLock: srcLock,
    flushLocal: () => src.flush(),
    intent: null,
    log,
  });

  toTarget.deliver = (p) => {
    if (receiver.handle(p)) return;
    if (target.handle(p)) return;
    throw new Error(`target got an unexpected ${p.kind}`);
  };
  toSource.deliver = (p) => {
    switch (p.kind) {
      case 'write-ack':
        acks.get(p.seq)?.('ok');
        return;
      case 'neg-ack':
        acks.get(p.seq)?.('failed');
        return;
      case 'barrier-ack':
        for (const [e, r] of barriers) if (e <= p.epoch) r('ok');
        return;
      default:
        if (!source.handle(p)) throw new Error(`source got an unexpected ${p.kind}`);
    }
  };

  const stop = (): void => {
    target.stop();
    source.stop();
    replicator.stop();
    toSource.cut();
    toTarget.cut();
  };
  rigs.push(stop);

  const markedBytes = srcBitmap.bytesOutOfSync();
  return {
    src,
    dst,
    srcBitmap,
    dstBitmap,
    target,
    source,
    replicator,
    toSource,
    toTarget,
    targetDone: targetDone.promise,
    sourceDone: sourceDone.promise,
    failures,
    originalTarget,
    markedBytes,
    stop,
    kinds: (w: Wire<Packet>, kind: Packet['kind']) => w.sent.filter((p) => p.kind === kind),
  };
}

const rigs: Array<() => void> = [];
afterEach(() => {
  for (const stop of rigs.splice(0)) stop();
});

async function image(s: ControlledStore): Promise<Buffer> {
  return s.inner.read(0, s.size);
}

function blockOf(b: Buffer, block: number): Buffer {
  return b.subarray(block * BLOCK, Math.min(b.length, (block + 1) * BLOCK));
}

type Rig = Awaited<ReturnType<typeof rig>>;

/** The target holds the source's data in every marked block and its own old data in every other; the marked blocks. */
async function expectOnlyMarkedCopied(r: Rig, marks: ReadonlyArray<[number, number]>): Promise<Set<number>> {
  const srcImg = await image(r.src);
  const dstImg = await image(r.dst);
  const marked = new Set<number>();
  for (const [first, count] of marks) for (let b = first; b < first + count; b++) marked.add(b);
  for (let b = 0; b < r.srcBitmap.blocks; b++) {
    const want = marked.has(b) ? blockOf(srcImg, b) : blockOf(r.originalTarget, b);
    expect(blockOf(dstImg, b).equals(want), `block ${b}`).toBe(true);
  }
  return marked;
}

/** A resync that ended well: both bitmaps clean, both sides counted every marked byte, nothing failed, the source only read. */
function expectCleanEnd(r: Rig): void {
  expect(r.srcBitmap.countSet()).toBe(0);
  expect(r.dstBitmap.countSet()).toBe(0);
  expect(r.target.progress.doneBytes).toBe(r.markedBytes);
  expect(r.source.progress.doneBytes).toBe(r.markedBytes);
  expect(r.failures).toEqual([]);
  expect(r.src.count('write')).toBe(0);
}

describe('resync: bitmap-based copy (G6)', () => {
  it('copies exactly the marked blocks, clears both bitmaps and reports progress', async () => {
    const size = 3 * 256 * KiB + 1000; // the last block is partial
    const marks: Array<[number, number]> = [
      [0, 3],
      [17, 1],
      [60, 70], // longer than one request (64 blocks)
      [192, 1], // the partial last block
    ];
    const r = await rig({ size, marks });
    expect(r.markedBytes).toBe((3 + 1 + 70) * BLOCK + 1000);
    expect(r.target.progress.totalBytes).toBe(r.markedBytes);
    r.target.start();
    await Promise.all([r.targetDone, r.sourceDone]);

    const marked = await expectOnlyMarkedCopied(r, marks);
    // only marked blocks were asked for, each once, in requests of at most 256 KiB
    const requests = r.kinds(r.toSource, 'rs-data-request') as Array<{ offset: number; length: number }>;
    let asked = 0;
    for (const q of requests) {
      expect(q.length).toBeLessThanOrEqual(DEFAULT_RESYNC_REQUEST_BYTES);
      for (let at = q.offset; at < q.offset + q.length; at += BLOCK) expect(marked.has(at / BLOCK), `requested block ${at / BLOCK}`).toBe(true);
      asked += q.length;
    }
    expect(asked).toBe(r.markedBytes);
    expect(r.kinds(r.toSource, 'sync-done')).toHaveLength(1);
    // both bitmaps clean, and nothing but resync reads touched the source
    expectCleanEnd(r);
  });

  it('an empty bitmap finishes at once and moves nothing', async () => {
    const r = await rig({ size: 256 * KiB });
    r.target.start();
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.kinds(r.toSource, 'rs-data-request')).toEqual([]);
    expect((await image(r.dst)).equals(r.originalTarget)).toBe(true);
  });

  it('blocks marked behind the cursor during the resync are copied too', async () => {
    const r = await rig({ size: 256 * KiB, marks: [[40, 2]] });
    const held = r.src.hold('read');
    r.target.start();
    await held.reached;
    // a block behind the first request becomes out of sync on both sides
    r.srcBitmap.setBlocks(3, 1);
    r.dstBitmap.setBlocks(3, 1);
    held.release();
    await Promise.all([r.targetDone, r.sourceDone]);
    const srcImg = await image(r.src);
    const dstImg = await image(r.dst);
    expect(blockOf(dstImg, 3).equals(blockOf(srcImg, 3))).toBe(true);
    expect(blockOf(dstImg, 40).equals(blockOf(srcImg, 40))).toBe(true);
    expect(r.dstBitmap.countSet()).toBe(0);
  });
});

describe('resync racing application writes: never the older data', () => {
  const X = 5 * BLOCK;
  const fill = (v: number): Buffer => Buffer.alloc(BLOCK, v);

  async function seed(r: Awaited<ReturnType<typeof rig>>): Promise<void> {
    await r.src.inner.write(X, fill(0x01)); // old
    await r.dst.inner.write(X, fill(0xee)); // stale
  }

  it('an application write arriving while the source reads the block for the resync', async () => {
    const r = await rig({ size: 64 * KiB, marks: [[5, 1]] });
    await seed(r);
    const read = r.src.hold('read', (o) => o === X);
    r.target.start();
    await read.reached;
    const w = r.replicator.write(X, fill(0x02), false);
    await turns();
    // the write waits for the resync read's lock: nothing sent yet
    expect(r.kinds(r.toTarget, 'data')).toEqual([]);
    read.release();
    await w;
    await Promise.all([r.targetDone, r.sourceDone]);
    // the reply (old) went out before the write (new)
    expect(r.toTarget.sent.map((p) => p.kind).filter((k) => k === 'rs-data-reply' || k === 'data')).toEqual(['rs-data-reply', 'data']);
    expect((await r.dst.inner.read(X, BLOCK)).equals(fill(0x02))).toBe(true);
    expect((await r.src.inner.read(X, BLOCK)).equals(fill(0x02))).toBe(true);
  });

  it('a resync request arriving while the application write holds the block', async () => {
    const r = await rig({ size: 64 * KiB, marks: [[5, 1]] });
    await seed(r);
    const local = r.src.hold('write', (o) => o === X);
    const w = r.replicator.write(X, fill(0x02), false);
    await local.reached;
    r.target.start();
    await turns(10);
    // the source waits for the write lock before reading
    expect(r.kinds(r.toTarget, 'rs-data-reply')).toEqual([]);
    local.release();
    await w;
    await Promise.all([r.targetDone, r.sourceDone]);
    const reply = r.kinds(r.toTarget, 'rs-data-reply')[0] as { payload: Buffer };
    expect(reply.payload.equals(fill(0x02))).toBe(true);
    expect((await r.dst.inner.read(X, BLOCK)).equals(fill(0x02))).toBe(true);
  });

  it('the target is still writing the resync copy when the newer application write arrives', async () => {
    const r = await rig({ size: 64 * KiB, marks: [[5, 1]] });
    await seed(r);
    const slowReply = r.dst.hold('write', (o) => o === X);
    r.target.start();
    await slowReply.reached;
    const w = r.replicator.write(X, fill(0x02), false);
    await turns(10);
    slowReply.release();
    await w;
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.dst.events.filter((e) => e.startsWith('write'))).toEqual([`write ${X}+${BLOCK}`, `write ${X}+${BLOCK}`]);
    expect((await r.dst.inner.read(X, BLOCK)).equals(fill(0x02))).toBe(true);
    expect(r.dstBitmap.countSet()).toBe(0);
  });

  it('seeded: application writes throughout a resync, random disk latency on both nodes; the replicas end identical', async () => {
    for (const [seedValue, batch] of [[7, false], [8, false], [9, false], [7, true], [8, true], [9, true]] as const) {
      const rand = seededRandom(seedValue);
      const size = 512 * KiB;
      const marks: Array<[number, number]> = [];
      for (let i = 0; i < 24; i++) marks.push([Math.floor(rand() * 126), 1 + Math.floor(rand() * 2)]);
      const r = await rig({ size, marks, sameOutsideMarks: true, seed: seedValue, target: { requestBytes: 16 * KiB, maxInFlightBytes: 64 * KiB, batch, batchWindowBytes: 128 * KiB } });
      const latency = (): number => (rand() < 0.3 ? 1 + Math.floor(rand() * 2) : 0);
      r.src.latency = latency;
      r.dst.latency = latency;
      r.target.start();
      const writes: Array<Promise<void>> = [];
      for (let i = 0; i < 120; i++) {
        const length = 512 * (1 + Math.floor(rand() * 24));
        const offset = 512 * Math.floor(rand() * ((size - length) / 512));
        writes.push(r.replicator.write(offset, randomBuffer(rand, length), false));
        if (rand() < 0.5) await turns(1 + Math.floor(rand() * 3));
      }
      await Promise.all(writes);
      await Promise.all([r.targetDone, r.sourceDone]);
      const srcImg = await image(r.src);
      const dstImg = await image(r.dst);
      for (let b = 0; b < size / BLOCK; b++) expect(blockOf(dstImg, b).equals(blockOf(srcImg, b)), `seed ${seedValue}${batch ? ' batched' : ''} block ${b}`).toBe(true);
      if (batch) expect(r.kinds(r.toSource, 'rs-batch-request').length).toBeGreaterThan(0);
      expect(r.dstBitmap.countSet()).toBe(0);
      // (the source's bitmap is checked by the test below)
      r.stop();
    }
  });
});

describe('resync: the source bitmap after the end', () => {
  it('holds no bit for a block that an application write brought over in full during the resync', async () => {
    const r = await rig({ size: 64 * KiB, sameOutsideMarks: true, marks: [[5, 1], [9, 1]], target: { requestBytes: BLOCK, maxInFlightBytes: BLOCK } });
    const read = r.src.hold('read', (o) => o === 5 * BLOCK);
    r.target.start();
    await read.reached;
    // block 9 is written whole by the application and replicated before the
    // target gets to ask for it: the target's receiver clears its bit 9
    await r.replicator.write(9 * BLOCK, Buffer.alloc(BLOCK, 0x99), false);
    expect(r.dstBitmap.test(9)).toBe(false);
    read.release();
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.kinds(r.toSource, 'rs-data-request')).toEqual([{ kind: 'rs-data-request', id: 1, offset: 5 * BLOCK, length: BLOCK }]);
    expect((await image(r.dst)).equals(await image(r.src))).toBe(true);
    expect(r.dstBitmap.countSet()).toBe(0);
    // both replicas are identical and the resync ended: nothing may stay marked
    expect(r.srcBitmap.countSet()).toBe(0);
    expect(r.source.progress.doneBytes).toBe(r.source.progress.totalBytes);
  });
});

describe('resync: rate, pause, stop', () => {
  it('honours the rate limit (roughly) and still makes progress', async () => {
    const requestBytes = 64 * KiB;
    const rate = 512 * KiB; // bytes per second
    const r = await rig({ size: 1024 * KiB, all: true, target: { rate: { kind: 'fixed', bytesPerSec: rate }, requestBytes } });
    const burst = Math.max(requestBytes, rate / 10);
    const started = Date.now();
    r.target.start();
    await sleep(200);
    const elapsed = Date.now() - started;
    const requested = (r.kinds(r.toSource, 'rs-data-request') as Array<{ length: number }>).reduce((n, q) => n + q.length, 0);
    // rate × time, plus the initial burst, plus the one request that may overdraw
    expect(requested).toBeLessThanOrEqual((rate * Math.max(elapsed, 200)) / 1000 + burst + requestBytes);
    expect(requested).toBeGreaterThan(requestBytes); // the refill ran
    expect(r.target.progress.doneBytes).toBeLessThanOrEqual(requested);
    expect(r.target.progress.doneBytes).toBeGreaterThan(0);
    expect(r.dstBitmap.countSet()).toBeGreaterThan(0);
    expect(RATE_TICK_MS).toBeLessThan(200);
  });

  it('without a rate limit, it is bounded only by the bytes in flight', async () => {
    const r = await rig({ size: 1024 * KiB, all: true, target: { requestBytes: 64 * KiB, maxInFlightBytes: 128 * KiB } });
    const held = r.src.hold('read');
    r.target.start();
    await held.reached;
    expect(r.kinds(r.toSource, 'rs-data-request')).toHaveLength(2);
    held.release();
    await Promise.all([r.targetDone, r.sourceDone]);
    expect((await image(r.dst)).equals(await image(r.src))).toBe(true);
  });

  it('pause stops new requests; resume continues to the end', async () => {
    const r = await rig({ size: 512 * KiB, all: true, target: { requestBytes: 64 * KiB, maxInFlightBytes: 64 * KiB } });
    const held = r.src.hold('read');
    r.target.start();
    await held.reached;
    expect(r.kinds(r.toSource, 'rs-data-request')).toHaveLength(1);
    r.target.pause();
    expect(r.target.progress.paused).toBe(true);
    held.release();
    await until(() => r.target.progress.doneBytes === 64 * KiB, 2000, 'the request in flight to complete');
    await sleep(20);
    // the request in flight completed; no new one went out
    expect(r.kinds(r.toSource, 'rs-data-request')).toHaveLength(1);
    expect(r.dstBitmap.countSet()).toBe(128 - 16);
    let finished = false;
    void r.targetDone.then(() => (finished = true));
    await turns();
    expect(finished).toBe(false);
    r.target.resume();
    expect(r.target.progress.paused).toBe(false);
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.kinds(r.toSource, 'rs-data-request')).toHaveLength(8);
    expect((await image(r.dst)).equals(await image(r.src))).toBe(true);
    expect(r.target.progress.doneBytes).toBe(512 * KiB);
  });

  it('stop: what was not copied stays marked and nothing more is asked', async () => {
    const r = await rig({ size: 512 * KiB, all: true, target: { requestBytes: 64 * KiB, maxInFlightBytes: 64 * KiB } });
    const held = r.src.hold('read');
    r.target.start();
    await held.reached;
    // the connection goes away: both ends stop, the network drops what is in flight
    r.stop();
    held.release();
    await sleep(20);
    expect(r.kinds(r.toSource, 'rs-data-request')).toHaveLength(1);
    expect(r.dstBitmap.countSet()).toBe(128);
    expect(r.srcBitmap.countSet()).toBe(128);
    expect((await image(r.dst)).equals(r.originalTarget)).toBe(true);
  });
});

describe('resync: checksum mode (csums-alg)', () => {
  it('sends no data for equal blocks and copies the differing ones', async () => {
    const size = 64 * KiB;
    const r = await rig({
      size,
      all: true,
      sameOutsideMarks: true,
      sourceCsums: true,
      target: { csumsAlg: 'sha256', requestBytes: BLOCK },
    });
    // make the target equal everywhere except blocks 3, 7 and 15
    const srcImg = await image(r.src);
    const dstImg = Buffer.from(srcImg);
    for (const b of [3, 7, 15]) dstImg.fill(b, b * BLOCK, (b + 1) * BLOCK);
    await r.dst.inner.write(0, dstImg);
    r.target.start();
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.kinds(r.toSource, 'rs-data-request')).toEqual([]);
    expect(r.kinds(r.toSource, 'csum-rs-request')).toHaveLength(16);
    const replies = r.kinds(r.toTarget, 'rs-data-reply') as Array<{ offset: number }>;
    expect(replies.map((p) => p.offset / BLOCK).sort((a, b) => a - b)).toEqual([3, 7, 15]);
    expect(r.kinds(r.toTarget, 'rs-is-in-sync')).toHaveLength(13);
    expect(r.source.sameBytes).toBe(13 * BLOCK);
    expect((await image(r.dst)).equals(srcImg)).toBe(true);
    expect(r.srcBitmap.countSet()).toBe(0);
    expect(r.dstBitmap.countSet()).toBe(0);
    expect(r.target.progress.doneBytes).toBe(size);
    expect(r.source.progress.doneBytes).toBe(size);
  });

  it('a block the target cannot read is sent in full', async () => {
    const r = await rig({ size: 32 * KiB, all: true, sameOutsideMarks: true, sourceCsums: true, target: { csumsAlg: 'crc32c', requestBytes: BLOCK } });
    const srcImg = await image(r.src);
    await r.dst.inner.write(0, srcImg); // identical, but unreadable
    r.dst.inner.failWith('EIO', ['read']);
    r.target.start();
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.kinds(r.toTarget, 'rs-data-reply')).toHaveLength(8);
    expect(r.kinds(r.toTarget, 'rs-is-in-sync')).toHaveLength(0);
    r.dst.inner.failWith(undefined);
    expect((await image(r.dst)).equals(srcImg)).toBe(true);
  });
});

describe('resync: failures', () => {
  it('a NEG_RS_REPLY (the source cannot read) fails the resync with a reason; the bits stay', async () => {
    const r = await rig({ size: 64 * KiB, marks: [[2, 1]] });
    r.src.inner.failWith('EIO', ['read']);
    let finished = false;
    void r.targetDone.then(() => (finished = true));
    r.target.start();
    await until(() => r.failures.length > 0, 2000, 'the failure');
    expect(r.kinds(r.toTarget, 'neg-rs-reply')).toEqual([{ kind: 'neg-rs-reply', id: 1, errno: 5 }]);
    expect(r.failures[0]).toMatch(/could not read.*errno 5/);
    expect(finished).toBe(false);
    expect(r.dstBitmap.test(2)).toBe(true);
    expect(r.srcBitmap.test(2)).toBe(true);
  });

  it('a request beyond the source disk is refused with EINVAL', async () => {
    const r = await rig({ size: 64 * KiB, targetSize: 128 * KiB, marks: [] });
    r.dstBitmap.setBlocks(20, 1);
    r.target.start();
    await until(() => r.failures.length > 0, 2000, 'the failure');
    expect(r.kinds(r.toTarget, 'neg-rs-reply')).toEqual([{ kind: 'neg-rs-reply', id: 1, errno: 22 }]);
    expect(r.failures[0]).toMatch(/errno 22/);
  });

  it('a target disk that fails the resync write fails the resync and keeps the bit', async () => {
    const r = await rig({ size: 64 * KiB, marks: [[2, 1]] });
    r.dst.inner.failWith('EIO', ['write']);
    r.target.start();
    await until(() => r.failures.length > 0, 2000, 'the failure');
    expect(r.failures[0]).toMatch(/writing resync data at 8192/);
    expect(r.dstBitmap.test(2)).toBe(true);
    expect(r.kinds(r.toSource, 'rs-write-ack')).toEqual([]);
  });

  it('a reply the target did not ask for fails the resync', async () => {
    const r = await rig({ size: 64 * KiB, marks: [] });
    r.target.handle({ kind: 'rs-data-reply', id: 99, offset: 0, payload: Buffer.alloc(BLOCK) });
    expect(r.failures[0]).toMatch(/unexpected RS_DATA_REPLY id 99/);
    expect(r.dst.count('write')).toBe(0);
  });
});

describe('resync: bounded work in flight and pooled source buffers', () => {
  it('scattered blocks: never more requests in flight than the cap, and every block arrives', async () => {
    const marks: Array<[number, number]> = [];
    for (let b = 3; b < 250; b += 7) marks.push([b, 1]);
    const r = await rig({ size: 1024 * KiB, marks, sameOutsideMarks: true, target: { maxInFlightRequests: 4 } });
    let inFlight = 0;
    let most = 0;
    const send = r.toSource.send.bind(r.toSource);
    r.toSource.send = (p: Packet) => {
      if (p.kind === 'rs-data-request') most = Math.max(most, ++inFlight);
      if (p.kind === 'rs-write-ack') inFlight--;
      send(p);
    };
    r.target.start();
    await r.targetDone;
    expect(most).toBe(4);
    expect(r.kinds(r.toSource, 'rs-data-request')).toHaveLength(marks.length);
    expect((await image(r.dst)).equals(await image(r.src))).toBe(true);
    expect(r.dstBitmap.countSet()).toBe(0);
  });

  it('a read buffer is used again only after the link says it wrote it', async () => {
    const size = 1024 * KiB;
    const store = new ControlledStore(size);
    const content = randomBuffer(seededRandom(7), size);
    await store.inner.write(0, content);
    const bitmap = new Bitmap(size);
    bitmap.setAll();
    const replies: Array<Extract<Packet, { kind: 'rs-data-reply' }>> = [];
    const source = new ResyncSource(store, bitmap, new RangeLock(), {
      send: (p) => {
        if (p.kind === 'rs-data-reply') replies.push(p);
      },
    }, { done: () => undefined }, log);
    const ask = async (id: number, offset: number): Promise<Extract<Packet, { kind: 'rs-data-reply' }>> => {
      source.handle({ kind: 'rs-data-request', id, offset, length: 256 * KiB });
      await until(() => replies.some((p) => p.id === id), 2000, `reply ${id}`);
      return replies.find((p) => p.id === id)!;
    };
    const first = await ask(1, 0);
    const second = await ask(2, 256 * KiB);
    // not yet written: a different buffer, both intact
    expect(second.payload.buffer).not.toBe(first.payload.buffer);
    expect(first.payload.equals(content.subarray(0, 256 * KiB))).toBe(true);
    expect(first.whenWritten).toBeTypeOf('function');
    first.whenWritten!();
    const third = await ask(3, 512 * KiB);
    expect(third.payload.buffer).toBe(first.payload.buffer);
    expect(third.payload.equals(content.subarray(512 * KiB, 768 * KiB))).toBe(true);
    expect(second.payload.equals(content.subarray(256 * KiB, 512 * KiB))).toBe(true);
    // small reads are not pooled: nothing to give back
    source.handle({ kind: 'rs-data-request', id: 4, offset: 0, length: BLOCK });
    await until(() => replies.some((p) => p.id === 4), 2000, 'reply 4');
    expect(replies.find((p) => p.id === 4)!.whenWritten).toBeUndefined();
    source.stop();
  });
});

describe('resync: data that arrived in pieces', () => {
  it('a reply whose payload is pieces is written as one range (writev) and acknowledged', async () => {
    const r = await rig({ size: 256 * KiB, marks: [[4, 8]] });
    const deliver = r.toTarget.deliver;
    r.toTarget.deliver = (p) => {
      if (p.kind === 'rs-data-reply' && p.payload.length > 1) {
        const b = p.payload;
        deliver({ ...p, payload: Buffer.alloc(0), parts: [b.subarray(0, 1), b.subarray(1, 5000), b.subarray(5000)] });
        return;
      }
      deliver(p);
    };
    r.target.start();
    await r.targetDone;
    expect(r.failures).toEqual([]);
    expect(blockOf(await image(r.dst), 4).equals(blockOf(await image(r.src), 4))).toBe(true);
    expect((await image(r.dst)).subarray(4 * BLOCK, 12 * BLOCK).equals((await image(r.src)).subarray(4 * BLOCK, 12 * BLOCK))).toBe(true);
    expect(r.dstBitmap.countSet()).toBe(0);
  });

  it('pieces that do not add up to the request fail the resync', async () => {
    const r = await rig({ size: 64 * KiB, marks: [] });
    r.dstBitmap.setBlocks(1, 1);
    r.toSource.deliver = () => undefined; // the test answers instead of the source
    r.target.start();
    r.target.handle({ kind: 'rs-data-reply', id: 1, offset: BLOCK, payload: Buffer.alloc(0), parts: [Buffer.alloc(100), Buffer.alloc(100)] });
    expect(r.failures[0]).toMatch(/unexpected RS_DATA_REPLY id 1/);
    expect(r.dst.count('write')).toBe(0);
  });
});

describe('resync: batched requests (RS_BATCH)', () => {
  type BatchRequest = Extract<Packet, { kind: 'rs-batch-request' }>;

  /** Every 7th block from 3 on, plus a run of 5: scattered, with one longer run. */
  const scattered = (): Array<[number, number]> => {
    const marks: Array<[number, number]> = [];
    for (let b = 3; b < 200; b += 7) marks.push([b, 1]);
    marks.push([230, 5]);
    return marks;
  };

  it('copies exactly the marked blocks in a few requests of many runs, each within the window, and confirms once per request', async () => {
    const marks = scattered();
    const window = 64 * BLOCK;
    const r = await rig({ size: 1024 * KiB, marks, target: { batch: true, batchWindowBytes: window } });
    r.target.start();
    await Promise.all([r.targetDone, r.sourceDone]);
    const marked = await expectOnlyMarkedCopied(r, marks);
    const batches = r.kinds(r.toSource, 'rs-batch-request') as BatchRequest[];
    const singles = r.kinds(r.toSource, 'rs-data-request') as Array<{ offset: number; length: number }>;
    const asked: ResyncRun[] = [...batches.flatMap((q) => q.runs), ...singles.map((q) => ({ offset: q.offset, length: q.length }))];
    // each marked block asked for exactly once
    const askedBlocks = asked.flatMap((run) => Array.from({ length: run.length / BLOCK }, (_, i) => run.offset / BLOCK + i)).sort((a, b) => a - b);
    expect(askedBlocks).toEqual([...marked].sort((a, b) => a - b));
    for (const q of batches) {
      expect(runsProblem(q.runs)).toBeNull();
      expect(q.runs.length).toBeGreaterThan(1);
      const last = q.runs[q.runs.length - 1]!;
      expect(last.offset + last.length - q.runs[0]!.offset).toBeLessThanOrEqual(window);
    }
    // 29 scattered blocks and one run: a handful of requests, not 30
    expect(batches.length + singles.length).toBeLessThanOrEqual(6);
    expect(r.kinds(r.toTarget, 'rs-batch-reply')).toHaveLength(batches.length);
    expect(r.kinds(r.toSource, 'rs-write-ack')).toHaveLength(batches.length + singles.length);
    expectCleanEnd(r);
  });

  it('a batch holds at most MAX_BATCH_RUNS runs and the request size; a lone run goes as RS_DATA_REQUEST', async () => {
    const marks: Array<[number, number]> = [];
    for (let b = 0; b < 2 * MAX_BATCH_RUNS + 10; b += 2) marks.push([b, 1]);
    marks.push([2000, 1]); // alone in its window
    const r = await rig({ size: 2048 * BLOCK, marks, target: { batch: true, requestBytes: 300 * BLOCK, batchWindowBytes: 1024 * BLOCK } });
    expect(DEFAULT_RESYNC_BATCH_WINDOW_BYTES).toBeGreaterThan(1024 * BLOCK);
    r.target.start();
    await Promise.all([r.targetDone, r.sourceDone]);
    const batches = r.kinds(r.toSource, 'rs-batch-request') as BatchRequest[];
    // 261 scattered blocks: 256, then the 5 left in the next window
    expect(batches.map((q) => q.runs.length)).toEqual([MAX_BATCH_RUNS, 5]);
    expect(r.kinds(r.toSource, 'rs-data-request')).toEqual([{ kind: 'rs-data-request', id: 3, offset: 2000 * BLOCK, length: BLOCK }]);
    expect(r.dstBitmap.countSet()).toBe(0);
    const small = await rig({ size: 256 * BLOCK, marks: [[0, 3], [5, 3], [10, 3]], sameOutsideMarks: true, target: { batch: true, requestBytes: 4 * BLOCK } });
    small.target.start();
    await Promise.all([small.targetDone, small.sourceDone]);
    // 4 blocks per request at most: the second run is cut where the room ends
    const runsAsked = (small.kinds(small.toSource, 'rs-batch-request') as BatchRequest[]).map((q) => q.runs.map((x) => [x.offset / BLOCK, x.length / BLOCK]));
    expect(runsAsked).toEqual([[[0, 3], [5, 1]], [[6, 2], [10, 2]]]);
    expect((await image(small.dst)).equals(await image(small.src))).toBe(true);
  });

  it('an application write waits for the batch read holding its window, and reaches the target after the batch', async () => {
    const r = await rig({ size: 64 * BLOCK, marks: [[5, 1], [9, 1]], sameOutsideMarks: true, target: { batch: true } });
    const X = 7 * BLOCK; // between the runs, unmarked: the window still covers it
    const read = r.src.hold('read', (o) => o === 9 * BLOCK);
    r.target.start();
    await read.reached;
    const w = r.replicator.write(X, Buffer.alloc(BLOCK, 0x42), false);
    await turns();
    expect(r.kinds(r.toTarget, 'data')).toEqual([]);
    read.release();
    await w;
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.toTarget.sent.map((p) => p.kind).filter((k) => k === 'rs-batch-reply' || k === 'data')).toEqual(['rs-batch-reply', 'data']);
    expect((await image(r.dst)).equals(await image(r.src))).toBe(true);
  });

  it('the target is still writing a batch when a newer application write to one of its runs arrives: the newer data wins', async () => {
    const r = await rig({ size: 64 * BLOCK, marks: [[5, 1], [9, 1]], sameOutsideMarks: true, target: { batch: true } });
    const X = 9 * BLOCK;
    await r.src.inner.write(X, Buffer.alloc(BLOCK, 0x01));
    const slow = r.dst.hold('write', (o) => o === X);
    r.target.start();
    await slow.reached;
    const w = r.replicator.write(X, Buffer.alloc(BLOCK, 0x02), false);
    await turns(10);
    slow.release();
    await w;
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.dst.events.filter((e) => e === `write ${X}+${BLOCK}`)).toHaveLength(2);
    expect((await r.dst.inner.read(X, BLOCK)).equals(Buffer.alloc(BLOCK, 0x02))).toBe(true);
    expect((await image(r.dst)).equals(await image(r.src))).toBe(true);
  });

  it('a Primary resyncing its own disk: a batch overlapping its local write is not written and its runs are asked for again', async () => {
    const r = await rig({ size: 64 * BLOCK, marks: [[5, 1], [9, 1]], sameOutsideMarks: true, target: { batch: true } });
    const read = r.src.hold('read', (o) => o === 9 * BLOCK);
    r.target.start();
    await read.reached;
    // this node wrote block 5 itself (and the source got it too) after asking
    const fresh = Buffer.alloc(BLOCK, 0x77);
    await r.dst.inner.write(5 * BLOCK, fresh);
    await r.src.inner.write(5 * BLOCK, fresh);
    r.target.localWriteApplied(5 * BLOCK, BLOCK);
    read.release();
    await Promise.all([r.targetDone, r.sourceDone]);
    // the stale answer was not written; its runs were asked for again (read
    // after the local write reached the source: the same data)
    const both = [{ offset: 5 * BLOCK, length: BLOCK }, { offset: 9 * BLOCK, length: BLOCK }];
    expect((r.kinds(r.toSource, 'rs-batch-request') as BatchRequest[]).map((q) => q.runs)).toEqual([both, both]);
    expect(r.dst.events.filter((e) => e.startsWith('write'))).toEqual([`write ${5 * BLOCK}+${BLOCK}`, `write ${9 * BLOCK}+${BLOCK}`]);
    expect((await r.dst.inner.read(5 * BLOCK, BLOCK)).equals(fresh)).toBe(true);
    expect((await image(r.dst)).equals(await image(r.src))).toBe(true);
    expect(r.dstBitmap.countSet()).toBe(0);
  });

  it('stop in the middle of a batch: every run stays marked on both sides', async () => {
    const r = await rig({ size: 64 * BLOCK, marks: [[5, 1], [9, 2]], target: { batch: true } });
    const read = r.src.hold('read', (o) => o === 9 * BLOCK);
    r.target.start();
    await read.reached;
    r.stop();
    read.release();
    await sleep(20);
    expect(r.dstBitmap.countSet()).toBe(3);
    expect(r.srcBitmap.countSet()).toBe(3);
    expect((await image(r.dst)).equals(r.originalTarget)).toBe(true);
  });

  it('a source that cannot read one run answers NEG_RS_REPLY for the batch; the resync fails and every bit stays', async () => {
    const r = await rig({ size: 64 * BLOCK, marks: [[2, 1], [6, 1]], target: { batch: true } });
    r.src.inner.failWith('EIO', ['read']);
    r.target.start();
    await until(() => r.failures.length > 0, 2000, 'the failure');
    expect(r.kinds(r.toTarget, 'neg-rs-reply')).toEqual([{ kind: 'neg-rs-reply', id: 1, errno: 5 }]);
    expect(r.dstBitmap.countSet()).toBe(2);
    expect(r.srcBitmap.countSet()).toBe(2);
  });

  it('a batch the source cannot serve (beyond its disk, or too large) is refused with EINVAL', async () => {
    const r = await rig({ size: 64 * BLOCK, targetSize: 128 * BLOCK, marks: [] });
    r.dstBitmap.setBlocks(3, 1);
    r.dstBitmap.setBlocks(100, 1);
    r.target.stop(); // the test asks instead
    const replies: Packet[] = [];
    r.toTarget.deliver = (p) => replies.push(p);
    r.source.handle({ kind: 'rs-batch-request', id: 1, runs: [{ offset: 3 * BLOCK, length: BLOCK }, { offset: 100 * BLOCK, length: BLOCK }] });
    r.source.handle({ kind: 'rs-batch-request', id: 2, runs: [{ offset: 0, length: BLOCK }, { offset: BLOCK, length: 0xffff_f000 }] });
    await until(() => replies.length === 2, 2000, 'two answers');
    expect(replies).toEqual([{ kind: 'neg-rs-reply', id: 1, errno: 22 }, { kind: 'neg-rs-reply', id: 2, errno: 22 }]);
  });

  it('a reply whose runs differ from the request fails the resync, nothing is written', async () => {
    const r = await rig({ size: 64 * BLOCK, marks: [[2, 1], [6, 1]], target: { batch: true } });
    r.toSource.deliver = () => undefined; // the test answers instead of the source
    r.target.start();
    r.target.handle({ kind: 'rs-batch-reply', id: 1, runs: [{ offset: 2 * BLOCK, length: BLOCK }, { offset: 7 * BLOCK, length: BLOCK }], payload: Buffer.alloc(2 * BLOCK) });
    expect(r.failures[0]).toMatch(/unexpected RS_BATCH_REPLY id 1 of 2 runs/);
    // nor may a batch be answered with RS_DATA_REPLY
    r.target.handle({ kind: 'rs-data-reply', id: 1, offset: 2 * BLOCK, payload: Buffer.alloc(2 * BLOCK) });
    expect(r.failures[1]).toMatch(/unexpected RS_DATA_REPLY id 1/);
    await turns();
    expect(r.dst.count('write')).toBe(0);
  });

  it('a batch reply in pieces is cut at the runs and each run written where it belongs', async () => {
    const r = await rig({ size: 64 * BLOCK, marks: [[2, 2], [6, 1], [9, 3]], target: { batch: true } });
    const deliver = r.toTarget.deliver;
    r.toTarget.deliver = (p) => {
      if (p.kind === 'rs-batch-reply') {
        const b = p.payload;
        // cuts inside the first run, at the second's start, inside the third
        deliver({ ...p, payload: Buffer.alloc(0), parts: [b.subarray(0, 100), b.subarray(100, 2 * BLOCK), b.subarray(2 * BLOCK, 4 * BLOCK + 7), b.subarray(4 * BLOCK + 7)] });
        return;
      }
      deliver(p);
    };
    r.target.start();
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.failures).toEqual([]);
    for (const b of [2, 3, 6, 9, 10, 11]) expect(blockOf(await image(r.dst), b).equals(blockOf(await image(r.src), b)), `block ${b}`).toBe(true);
    for (const b of [4, 5, 7, 8]) expect(blockOf(await image(r.dst), b).equals(blockOf(r.originalTarget, b)), `block ${b}`).toBe(true);
  });

  it('the rate limit counts a batch by its bytes; pause holds new batches back until resume', async () => {
    const marks: Array<[number, number]> = [];
    for (let b = 0; b < 256; b += 2) marks.push([b, 1]);
    const rate = 128 * BLOCK; // bytes per second
    const r = await rig({ size: 1024 * KiB, marks, target: { batch: true, requestBytes: 16 * BLOCK, rate: { kind: 'fixed', bytesPerSec: rate } } });
    const started = Date.now();
    r.target.start();
    await sleep(150);
    const requested = (r.kinds(r.toSource, 'rs-batch-request') as BatchRequest[]).reduce((n, q) => n + q.runs.reduce((m, x) => m + x.length, 0), 0);
    expect(requested).toBeLessThanOrEqual((rate * (Date.now() - started)) / 1000 + Math.max(16 * BLOCK, rate / 10) + 16 * BLOCK);
    expect(requested).toBeGreaterThan(0);
    r.target.pause();
    await sleep(60);
    const whilePaused = r.kinds(r.toSource, 'rs-batch-request').length;
    await sleep(120);
    expect(r.kinds(r.toSource, 'rs-batch-request')).toHaveLength(whilePaused);
    r.target.resume();
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.dstBitmap.countSet()).toBe(0);
    expect(r.srcBitmap.countSet()).toBe(0);
  });

  it('csums-alg keeps one range per request, even with RS_BATCH agreed', async () => {
    const r = await rig({ size: 64 * KiB, all: true, sameOutsideMarks: true, sourceCsums: true, target: { csumsAlg: 'sha256', requestBytes: BLOCK, batch: true } });
    r.target.start();
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.kinds(r.toSource, 'rs-batch-request')).toEqual([]);
    expect(r.kinds(r.toSource, 'csum-rs-request')).toHaveLength(16);
  });
});

describe('resync: the target flushes before it says it is done', () => {
  it('a flush comes after the last resync write and before SYNC_DONE', async () => {
    const r = await rig({ size: 256 * KiB, marks: [[2, 3], [40, 1]] });
    let flushesAtDone = -1;
    const send = r.toSource.send.bind(r.toSource);
    r.toSource.send = (p: Packet) => {
      if (p.kind === 'sync-done') flushesAtDone = r.dst.count('flush');
      send(p);
    };
    r.target.start();
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(flushesAtDone).toBe(1);
    const events = r.dst.events;
    expect(events.lastIndexOf('flush')).toBeGreaterThan(Math.max(...events.map((e, i) => (e.startsWith('write') ? i : -1))));
  });

  it('flushes on the way every flushEveryBytes, without waiting for them', async () => {
    const r = await rig({ size: 1024 * KiB, all: true, target: { requestBytes: 64 * KiB, flushEveryBytes: 256 * KiB } });
    const held = r.dst.hold('flush');
    r.target.start();
    await held.reached;
    // the copy goes on while the first flush is held
    await until(() => r.dst.count('write') >= 8, 2000, 'writes past the held flush');
    held.release();
    await Promise.all([r.targetDone, r.sourceDone]);
    // 1 MiB in 256 KiB steps (one at a time), then the last
    expect(r.dst.count('flush')).toBeGreaterThanOrEqual(2);
    expect(r.dst.count('flush')).toBeLessThanOrEqual(5);
    expect((await image(r.dst)).equals(await image(r.src))).toBe(true);
  });

  it('a failed flush fails the resync: no SYNC_DONE', async () => {
    const r = await rig({ size: 64 * KiB, marks: [[1, 1]] });
    r.dst.inner.failWith('EIO', ['flush']);
    r.target.start();
    await until(() => r.failures.length > 0, 2000, 'the failure');
    expect(r.failures[0]).toMatch(/flushing resync data failed/);
    await turns();
    expect(r.kinds(r.toSource, 'sync-done')).toEqual([]);
  });

  it('a block marked again while the last flush runs is copied before the end', async () => {
    const r = await rig({ size: 64 * KiB, marks: [[1, 1]], sameOutsideMarks: true });
    const held = r.dst.hold('flush');
    r.target.start();
    await held.reached;
    // the source reported block 4 out of sync meanwhile (its write failed there)
    r.dstBitmap.setBlocks(4, 1);
    r.srcBitmap.setBlocks(4, 1);
    await r.src.inner.write(4 * BLOCK, Buffer.alloc(BLOCK, 0x44));
    held.release();
    await Promise.all([r.targetDone, r.sourceDone]);
    expect(r.kinds(r.toSource, 'rs-data-request').map((q) => (q as { offset: number }).offset / BLOCK)).toEqual([1, 4]);
    expect((await image(r.dst)).equals(await image(r.src))).toBe(true);
    expect(r.dstBitmap.countSet()).toBe(0);
  });

  it('a session that ends before its copies are flushed marks them again; copies a finished flush covered stay clear', async () => {
    // 16 blocks, one request of 2 blocks at a time, a flush started after every 4 blocks copied
    const r = await rig({ size: 16 * BLOCK, all: true, target: { requestBytes: 2 * BLOCK, maxInFlightBytes: 2 * BLOCK, flushEveryBytes: 4 * BLOCK } });
    const first = r.dst.hold('flush');
    const second = r.dst.hold('flush');
    r.target.start();
    await first.reached; // covers blocks 0-3
    await until(() => r.dstBitmap.countSet() <= 8, 2000, 'copies past the held flush');
    first.release();
    await second.reached; // covers what was copied while the first one ran
    await until(() => r.dstBitmap.countSet() <= 4, 2000, 'copies past the second flush');
    // the link goes away while the second flush is still running
    r.stop();
    second.release();
    await turns();
    for (let b = 0; b < 4; b++) expect(r.dstBitmap.test(b)).toBe(false);
    expect(r.dstBitmap.countSet()).toBe(12);
    expect(r.kinds(r.toSource, 'sync-done')).toEqual([]);
  });
});
