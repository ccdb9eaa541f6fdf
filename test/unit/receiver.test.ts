import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { BlockStoreError } from '../../native-free-io/block-store.js';
import { RangeLock } from '../../src/replication/range-lock.js';
import { Receiver, WRITE_NOW_MAX_BYTES } from '../../src/replication/receiver.js';
import { WRITE_FLAGS, type Packet } from '../../src/replication/wire/index.js';
import { ControlledStore, turns } from '../helpers/controlled-store.js';

const log = pino({ level: 'silent' });
const KiB = 1024;
const C = WRITE_FLAGS.SEND_WRITE_ACK;
const B = WRITE_FLAGS.SEND_RECV_ACK;

interface Rig {
  store: ControlledStore;
  receiver: Receiver;
  lock: RangeLock;
  sent: Packet[];
  written: Array<[number, number]>;
  failures: Array<{ op: string; error: unknown }>;
  kinds(): string[];
}

/**
 * A store that can write at once (BlockStore.writeNow), as FileStore can:
 * into the same memory, recorded as 'writeNow OFFSET+LENGTH'; `nowFails`
 * makes it throw that errno.
 */
class NowStore extends ControlledStore {
  nowFails: string | undefined;

  writeNow(offset: number, parts: readonly Buffer[]): boolean {
    const data = Buffer.concat(parts);
    if (this.nowFails !== undefined) throw new BlockStoreError(this.nowFails, 'write', offset, data.length);
    // MemoryStore.write does its copy before its first await.
    void this.inner.write(offset, data);
    this.events.push(`writeNow ${offset}+${data.length}`);
    return true;
  }
}

/** Lets the microtasks queued so far run, but no event-loop turn (no I/O, no setImmediate). */
async function microtasks(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

function rig(size = 1024 * KiB, store: ControlledStore = new ControlledStore(size)): Rig {
  const lock = new RangeLock();
  const sent: Packet[] = [];
  const written: Array<[number, number]> = [];
  const failures: Array<{ op: string; error: unknown }> = [];
  const receiver = new Receiver(
    store,
    lock,
    { send: (p) => sent.push(p) },
    { written: (o, l) => written.push([o, l]), diskFailed: (op, error) => failures.push({ op, error }) },
    log,
  );
  return { store, receiver, lock, sent, written, failures, kinds: () => sent.map((p) => p.kind) };
}

function data(seq: number, offset: number, length: number, fill: number, flags = C, epoch = 1): Packet {
  return { kind: 'data', seq, epoch, offset, flags, payload: Buffer.alloc(length, fill) };
}

async function bytesAt(store: ControlledStore, offset: number, length: number): Promise<Buffer> {
  return store.inner.read(offset, length);
}

describe('Receiver: order of overlapping writes', () => {
  it('applies overlapping writes in arrival order even when the first is slow; disjoint ones do not wait', async () => {
    const r = rig();
    const slow = r.store.hold('write', (o) => o === 0);
    r.receiver.handle(data(1, 0, 8 * KiB, 0xaa));
    r.receiver.handle(data(2, 4 * KiB, 8 * KiB, 0xbb)); // overlaps seq 1
    r.receiver.handle(data(3, 64 * KiB, 4 * KiB, 0xcc)); // disjoint
    await slow.reached;
    await turns();
    // seq 3 completed while seq 1 is held; seq 2 waits for seq 1
    expect(r.sent).toEqual([{ kind: 'write-ack', seq: 3 }]);
    expect(r.store.events).toEqual([`write ${64 * KiB}+${4 * KiB}`]);
    slow.release();
    await r.receiver.idle();
    expect(r.store.events).toEqual([`write ${64 * KiB}+${4 * KiB}`, `write 0+${8 * KiB}`, `write ${4 * KiB}+${8 * KiB}`]);
    expect(r.sent).toEqual([
      { kind: 'write-ack', seq: 3 },
      { kind: 'write-ack', seq: 1 },
      { kind: 'write-ack', seq: 2 },
    ]);
    expect((await bytesAt(r.store, 0, 4 * KiB)).every((b) => b === 0xaa)).toBe(true);
    expect((await bytesAt(r.store, 4 * KiB, 8 * KiB)).every((b) => b === 0xbb)).toBe(true);
    expect(r.receiver.writesApplied).toBe(3);
    expect(r.receiver.bytesApplied).toBe(20 * KiB);
    expect(r.lock.size).toBe(0);
  });

  it('orders DATA, ZEROES and TRIM on the same range by arrival', async () => {
    const r = rig();
    const slow = r.store.hold('write');
    r.receiver.handle(data(1, 0, 64 * KiB, 0x11));
    r.receiver.handle({ kind: 'zeroes', seq: 2, epoch: 1, offset: 0, length: 64 * KiB, flags: C | WRITE_FLAGS.NO_HOLE });
    r.receiver.handle(data(3, 4 * KiB, 4 * KiB, 0x33));
    r.receiver.handle({ kind: 'trim', seq: 4, epoch: 1, offset: 8 * KiB, length: 4 * KiB, flags: C });
    await slow.reached;
    slow.release();
    await r.receiver.idle();
    expect(r.store.events.map((e) => e.split(' ')[0])).toEqual(['write', 'writeZeroes', 'write', 'trim']);
    const all = await bytesAt(r.store, 0, 64 * KiB);
    expect(all.subarray(0, 4 * KiB).every((b) => b === 0)).toBe(true);
    expect(all.subarray(4 * KiB, 8 * KiB).every((b) => b === 0x33)).toBe(true);
    expect(all.subarray(8 * KiB).every((b) => b === 0)).toBe(true);
    // NO_HOLE kept the chunk allocated
    expect((await r.store.extents(0, 64 * KiB))[0]!.hole).toBe(false);
    expect(r.written).toEqual([
      [0, 64 * KiB],
      [0, 64 * KiB],
      [4 * KiB, 4 * KiB],
      [8 * KiB, 4 * KiB],
    ]);
  });

  it('a DATA whose payload arrived in pieces is written as one range, in order with overlapping writes, and acknowledged once', async () => {
    const r = rig();
    const slow = r.store.hold('write', (o) => o === 0);
    r.receiver.handle(data(1, 0, 16 * KiB, 0x01));
    const pieces = [Buffer.alloc(1 * KiB, 0xa1), Buffer.alloc(5 * KiB, 0xa2), Buffer.alloc(2 * KiB, 0xa3)];
    r.receiver.handle({ kind: 'data', seq: 2, epoch: 1, offset: 4 * KiB, flags: C, payload: Buffer.alloc(0), parts: pieces });
    await slow.reached;
    await turns();
    expect(r.sent).toEqual([]); // seq 2 overlaps seq 1 and waits for it
    slow.release();
    await r.receiver.idle();
    expect(r.sent).toEqual([
      { kind: 'write-ack', seq: 1 },
      { kind: 'write-ack', seq: 2 },
    ]);
    expect(r.written).toEqual([
      [0, 16 * KiB],
      [4 * KiB, 8 * KiB],
    ]);
    expect((await bytesAt(r.store, 4 * KiB, 8 * KiB)).equals(Buffer.concat(pieces))).toBe(true);
    expect((await bytesAt(r.store, 12 * KiB, 4 * KiB)).every((b) => b === 0x01)).toBe(true);
    expect(r.receiver.bytesApplied).toBe(24 * KiB);
  });

  it('ZEROES without NO_HOLE may punch a hole; TRIM is applied', async () => {
    const r = rig();
    r.receiver.handle(data(1, 0, 128 * KiB, 0x5a));
    r.receiver.handle({ kind: 'zeroes', seq: 2, epoch: 1, offset: 0, length: 64 * KiB, flags: C });
    r.receiver.handle({ kind: 'trim', seq: 3, epoch: 1, offset: 64 * KiB, length: 64 * KiB, flags: C });
    await r.receiver.idle();
    expect(await r.store.extents(0, 128 * KiB)).toEqual([{ offset: 0, length: 128 * KiB, hole: true, zero: true }]);
    expect(r.kinds()).toEqual(['write-ack', 'write-ack', 'write-ack']);
  });
});

describe('Receiver: acknowledgements as the packet asks (G1)', () => {
  it('protocol C: WRITE_ACK only after the write completed', async () => {
    const r = rig();
    const slow = r.store.hold('write');
    r.receiver.handle(data(7, 0, 4 * KiB, 1, C));
    await slow.reached;
    await turns();
    expect(r.sent).toEqual([]);
    expect(r.written).toEqual([]);
    slow.release();
    await r.receiver.idle();
    expect(r.sent).toEqual([{ kind: 'write-ack', seq: 7 }]);
    expect(r.written).toEqual([[0, 4 * KiB]]);
  });

  it('protocol B: RECV_ACK at once, before the write completed, and no WRITE_ACK', async () => {
    const r = rig();
    const slow = r.store.hold('write');
    expect(r.receiver.handle(data(8, 0, 4 * KiB, 1, B))).toBe(true);
    // synchronously, before any I/O
    expect(r.sent).toEqual([{ kind: 'recv-ack', seq: 8 }]);
    await slow.reached;
    slow.release();
    await r.receiver.idle();
    expect(r.sent).toEqual([{ kind: 'recv-ack', seq: 8 }]);
    expect(r.store.count('write')).toBe(1);
  });

  it('protocol A (no ack flags): nothing is sent, the write is still applied', async () => {
    const r = rig();
    r.receiver.handle(data(9, 0, 4 * KiB, 0x42, 0));
    r.receiver.handle({ kind: 'zeroes', seq: 10, epoch: 1, offset: 8 * KiB, length: 4 * KiB, flags: 0 });
    r.receiver.handle({ kind: 'trim', seq: 11, epoch: 1, offset: 16 * KiB, length: 4 * KiB, flags: 0 });
    await r.receiver.idle();
    expect(r.sent).toEqual([]);
    expect((await bytesAt(r.store, 0, 4 * KiB)).every((b) => b === 0x42)).toBe(true);
    expect(r.receiver.writesApplied).toBe(3);
  });

  it('FUA: the store is flushed after the write and before the WRITE_ACK', async () => {
    const r = rig();
    const flush = r.store.hold('flush');
    r.receiver.handle(data(1, 0, 4 * KiB, 1, C | WRITE_FLAGS.FUA));
    await flush.reached;
    await turns();
    expect(r.store.events).toEqual([`write 0+${4 * KiB}`]);
    expect(r.sent).toEqual([]);
    flush.release();
    await r.receiver.idle();
    expect(r.store.events).toEqual([`write 0+${4 * KiB}`, 'flush']);
    expect(r.sent).toEqual([{ kind: 'write-ack', seq: 1 }]);
  });

  it('FUA on ZEROES and TRIM flushes too; without FUA no flush happens', async () => {
    const r = rig();
    r.receiver.handle({ kind: 'zeroes', seq: 1, epoch: 1, offset: 0, length: 4 * KiB, flags: C | WRITE_FLAGS.FUA });
    await r.receiver.idle();
    r.receiver.handle({ kind: 'trim', seq: 2, epoch: 1, offset: 0, length: 4 * KiB, flags: C | WRITE_FLAGS.FUA });
    await r.receiver.idle();
    r.receiver.handle(data(3, 0, 4 * KiB, 1, C));
    await r.receiver.idle();
    expect(r.store.events.map((e) => e.split(' ')[0])).toEqual(['writeZeroes', 'flush', 'trim', 'flush', 'write']);
  });

  it('answers false for packets that are not writes or barriers', () => {
    const r = rig();
    expect(r.receiver.handle({ kind: 'ping' })).toBe(false);
    expect(r.receiver.handle({ kind: 'rs-data-request', id: 1, offset: 0, length: 4096 })).toBe(false);
    expect(r.receiver.handle({ kind: 'write-ack', seq: 1 })).toBe(false);
    expect(r.sent).toEqual([]);
  });
});

describe('Receiver: barriers (G2)', () => {
  it('BARRIER_ACK only after every earlier write completed and the store was flushed', async () => {
    const r = rig();
    const slowWrite = r.store.hold('write', (o) => o === 0);
    r.receiver.handle(data(1, 0, 4 * KiB, 1));
    r.receiver.handle(data(2, 64 * KiB, 4 * KiB, 2));
    r.receiver.handle({ kind: 'barrier', epoch: 1 });
    await slowWrite.reached;
    await turns();
    // seq 2 is done, seq 1 is not: no flush yet, no barrier ack
    expect(r.kinds()).toEqual(['write-ack']);
    expect(r.store.count('flush')).toBe(0);
    const slowFlush = r.store.hold('flush');
    slowWrite.release();
    await slowFlush.reached;
    await turns();
    // every write is done, the flush has not finished: still no ack
    expect(r.kinds()).toEqual(['write-ack', 'write-ack']);
    slowFlush.release();
    await r.receiver.idle();
    await turns();
    expect(r.sent.at(-1)).toEqual({ kind: 'barrier-ack', epoch: 1, writes: 2 });
    // the flush came after both writes
    expect(r.store.events.indexOf('flush')).toBe(2);
  });

  it('a barrier does not wait for writes that arrived after it, nor count them', async () => {
    const r = rig();
    r.receiver.handle(data(1, 0, 4 * KiB, 1, C, 1));
    r.receiver.handle({ kind: 'barrier', epoch: 1 });
    const later = r.store.hold('write', (o) => o === 8 * KiB);
    r.receiver.handle(data(2, 8 * KiB, 4 * KiB, 2, C, 2));
    r.receiver.handle(data(3, 16 * KiB, 4 * KiB, 3, C, 2));
    await later.reached;
    await turns(10);
    // epoch 1 is answered though seq 2 (epoch 2) is still held
    expect(r.sent).toContainEqual({ kind: 'barrier-ack', epoch: 1, writes: 1 });
    r.receiver.handle({ kind: 'barrier', epoch: 2 });
    await turns(10);
    expect(r.sent.filter((p) => p.kind === 'barrier-ack')).toHaveLength(1);
    later.release();
    await r.receiver.idle();
    await turns();
    expect(r.sent.filter((p) => p.kind === 'barrier-ack')).toEqual([
      { kind: 'barrier-ack', epoch: 1, writes: 1 },
      { kind: 'barrier-ack', epoch: 2, writes: 2 },
    ]);
  });

  it('a barrier with no writes before it still flushes and answers with 0 writes', async () => {
    const r = rig();
    r.receiver.handle({ kind: 'barrier', epoch: 5 });
    await turns();
    expect(r.store.events).toEqual(['flush']);
    expect(r.sent).toEqual([{ kind: 'barrier-ack', epoch: 5, writes: 0 }]);
  });

  it('a failing flush sends no BARRIER_ACK and reports the disk', async () => {
    const r = rig();
    r.receiver.handle(data(1, 0, 4 * KiB, 1));
    await r.receiver.idle();
    r.store.inner.failWith('EIO', ['flush']);
    r.receiver.handle({ kind: 'barrier', epoch: 1 });
    await turns();
    expect(r.kinds()).toEqual(['write-ack']);
    expect(r.failures.map((f) => f.op)).toEqual(['flush']);
  });
});

describe('Receiver: failing writes', () => {
  it('a failing write sends NEG_ACK with the errno, calls diskFailed, and neither WRITE_ACK nor written()', async () => {
    const r = rig();
    r.store.inner.failWith('ENOSPC', ['write']);
    r.receiver.handle(data(4, 0, 4 * KiB, 1, C));
    await r.receiver.idle();
    expect(r.sent).toEqual([{ kind: 'neg-ack', seq: 4, errno: 28 }]);
    expect(r.failures).toHaveLength(1);
    expect(r.failures[0]!.op).toBe('write');
    expect(r.failures[0]!.error).toBeInstanceOf(BlockStoreError);
    expect(r.written).toEqual([]);
    expect(r.receiver.writesApplied).toBe(0);
    expect(r.lock.size).toBe(0);
  });

  it('maps EIO to 5 and an unknown error to EIO; protocol A and B writes get a NEG_ACK too', async () => {
    const r = rig();
    r.store.inner.failWith('EIO', ['writeZeroes']);
    r.receiver.handle({ kind: 'zeroes', seq: 1, epoch: 1, offset: 0, length: 4 * KiB, flags: 0 });
    await r.receiver.idle();
    r.store.inner.failWith('EWHATEVER', ['trim']);
    r.receiver.handle({ kind: 'trim', seq: 2, epoch: 1, offset: 0, length: 4 * KiB, flags: B });
    await r.receiver.idle();
    expect(r.sent).toEqual([
      { kind: 'neg-ack', seq: 1, errno: 5 },
      { kind: 'recv-ack', seq: 2 },
      { kind: 'neg-ack', seq: 2, errno: 5 },
    ]);
    expect(r.failures.map((f) => f.op)).toEqual(['write', 'write']);
  });

  it('a write past the end of the disk is refused with a NEG_ACK, the next overlapping write still runs', async () => {
    const r = rig(64 * KiB);
    r.receiver.handle(data(1, 60 * KiB, 8 * KiB, 1));
    r.receiver.handle(data(2, 60 * KiB, 4 * KiB, 2));
    await r.receiver.idle();
    expect(r.sent).toEqual([
      { kind: 'neg-ack', seq: 1, errno: 28 },
      { kind: 'write-ack', seq: 2 },
    ]);
  });

  it('a FUA write whose flush fails is negatively acknowledged', async () => {
    const r = rig();
    r.store.inner.failWith('EIO', ['flush']);
    r.receiver.handle(data(1, 0, 4 * KiB, 1, C | WRITE_FLAGS.FUA));
    await r.receiver.idle();
    expect(r.sent).toEqual([{ kind: 'neg-ack', seq: 1, errno: 5 }]);
    expect(r.failures.map((f) => f.op)).toEqual(['write']);
  });

  it('a failed write still counts in its epoch and does not block the barrier', async () => {
    const r = rig();
    r.store.inner.failWith('EIO', ['write']);
    r.receiver.handle(data(1, 0, 4 * KiB, 1));
    r.receiver.handle({ kind: 'barrier', epoch: 1 });
    await r.receiver.idle();
    await turns();
    expect(r.sent).toEqual([
      { kind: 'neg-ack', seq: 1, errno: 5 },
      { kind: 'barrier-ack', epoch: 1, writes: 1 },
    ]);
  });
});

describe('Receiver: a small write done at once (writeNow)', () => {
  it('a lone DATA is written at once and acknowledged within the same turn, with no pool write', async () => {
    const store = new NowStore(1024 * KiB);
    const r = rig(undefined, store);
    r.receiver.handle(data(1, 8 * KiB, 4 * KiB, 7));
    expect(store.events).toEqual(['writeNow 8192+4096']); // before handle() returned
    await microtasks();
    expect(r.sent).toEqual([{ kind: 'write-ack', seq: 1 }]);
    expect(r.written).toEqual([[8 * KiB, 4 * KiB]]);
    expect(r.receiver.writesApplied).toBe(1);
    expect(await bytesAt(store, 8 * KiB, 4 * KiB)).toEqual(Buffer.alloc(4 * KiB, 7));
    expect(r.lock.size).toBe(0);
  });

  it('goes through the queue when other writes are being applied, when its range is held, with FUA, or when large', async () => {
    const store = new NowStore(1024 * KiB);
    const r = rig(undefined, store);
    // Two in one chunk: the second finds the first still being applied.
    r.receiver.handle(data(1, 0, 4 * KiB, 1));
    r.receiver.handle(data(2, 64 * KiB, 4 * KiB, 2));
    await r.receiver.idle();
    expect(store.events).toEqual(['writeNow 0+4096', 'write 65536+4096']);

    // A range held by someone else (a resync write): it waits its turn, and lands after it.
    const release = await r.lock.acquire(0, 8 * KiB);
    r.receiver.handle(data(3, 4 * KiB, 4 * KiB, 3));
    await turns();
    expect(store.events).toHaveLength(2); // not written while the range is held
    expect(r.sent.map((p) => (p.kind === 'write-ack' ? p.seq : p.kind))).toEqual([1, 2]);
    release();
    await r.receiver.idle();
    expect(store.events.at(-1)).toBe('write 4096+4096');

    // FUA: written through the queue, flushed before the ack.
    r.receiver.handle(data(4, 0, 4 * KiB, 4, C | WRITE_FLAGS.FUA));
    await r.receiver.idle();
    expect(store.events.slice(-2)).toEqual(['write 0+4096', 'flush']);

    // Larger than WRITE_NOW_MAX_BYTES.
    r.receiver.handle(data(5, 0, WRITE_NOW_MAX_BYTES + 4 * KiB, 5));
    await r.receiver.idle();
    expect(store.events.at(-1)).toBe(`write 0+${WRITE_NOW_MAX_BYTES + 4 * KiB}`);

    // Not whole 4 KiB blocks (part of a page the kernel may have to read first).
    r.receiver.handle(data(6, 512, 4 * KiB, 6));
    await r.receiver.idle();
    r.receiver.handle(data(7, 8 * KiB, 1024, 7));
    await r.receiver.idle();
    expect(store.events.slice(-2)).toEqual(['write 512+4096', 'write 8192+1024']);

    // Idle and aligned again: at once.
    r.receiver.handle(data(8, 12 * KiB, 8 * KiB, 8));
    await r.receiver.idle();
    expect(store.events.at(-1)).toBe('writeNow 12288+8192');
    expect(r.sent).toEqual([1, 2, 3, 4, 5, 6, 7, 8].map((seq) => ({ kind: 'write-ack', seq })));
    expect(await bytesAt(store, 4 * KiB, 4 * KiB)).toEqual(Buffer.alloc(4 * KiB, 5).fill(6, 0, 512));
  });

  it('a write that fails at once is answered as a queued one: RECV_ACK first, then NEG_ACK, diskFailed, and the barrier still answers', async () => {
    const store = new NowStore(1024 * KiB);
    store.nowFails = 'EIO';
    const r = rig(undefined, store);
    r.receiver.handle(data(1, 0, 4 * KiB, 1, B | C));
    r.receiver.handle({ kind: 'barrier', epoch: 1 });
    await r.receiver.idle();
    await turns();
    expect(r.sent).toEqual([
      { kind: 'recv-ack', seq: 1 },
      { kind: 'neg-ack', seq: 1, errno: 5 },
      { kind: 'barrier-ack', epoch: 1, writes: 1 },
    ]);
    expect(r.failures.map((f) => [f.op, (f.error as BlockStoreError).errno])).toEqual([['write', 'EIO']]);
    expect(r.written).toEqual([]);
    expect(r.receiver.writesApplied).toBe(0);
  });
});
