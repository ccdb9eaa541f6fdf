import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MemoryStore } from '../../native-free-io/memory-store.js';
import { Bitmap } from '../../src/meta/index.js';
import type { Peer, ReplicatedWrite } from '../../src/replication/peer.js';
import { RangeLock } from '../../src/replication/range-lock.js';
import { EPOCH_IDLE_MS, MAX_EPOCH_WRITES, Replicator, type WriteIntent } from '../../src/replication/replicator.js';
import type { PeerOutcome } from '../../src/replication/transfer-log.js';
import { ControlledStore, deferred, randomBuffer, seededRandom, turns, type Deferred } from '../helpers/controlled-store.js';

const log = pino({ level: 'silent' });
const KiB = 1024;
const SIZE = 1024 * KiB;

/**
 * The part of a Peer the Replicator uses. 'auto' answers every write 'ok'
 * once it has been applied to `mirror` (in the order the writes were
 * handed over, as a peer applies in wire order); 'manual' leaves the answer
 * to the test.
 */
class FakePeer {
  readonly writes: ReplicatedWrite[] = [];
  readonly barriers: number[] = [];
  /** Ranges we told the peer differ (our local write of them failed). */
  readonly outOfSync: Array<[number, number]> = [];
  replicating = true;
  manual = false;
  manualBarriers = false;
  readonly mirror = new MemoryStore(SIZE);
  private chain: Promise<void> = Promise.resolve();
  private readonly pending = new Map<number, Deferred<PeerOutcome>>();
  private readonly pendingBarriers = new Map<number, Deferred<PeerOutcome>>();

  constructor(readonly nodeId: number) {}

  replicate(w: ReplicatedWrite): Promise<PeerOutcome> | null {
    if (!this.replicating) return null;
    this.writes.push(w);
    const d = deferred<PeerOutcome>();
    this.pending.set(w.seq, d);
    const payload = w.payload === undefined ? undefined : Buffer.from(w.payload);
    this.chain = this.chain.then(async () => {
      if (w.kind === 'data') await this.mirror.write(w.offset, payload!);
      else if (w.kind === 'zeroes') await this.mirror.writeZeroes(w.offset, w.length, { noHole: w.noHole === true });
      else await this.mirror.trim(w.offset, w.length);
      if (!this.manual) d.resolve('ok');
    });
    return d.promise;
  }

  barrier(epoch: number): Promise<PeerOutcome> | null {
    if (!this.replicating) return null;
    this.barriers.push(epoch);
    const d = deferred<PeerOutcome>();
    this.pendingBarriers.set(epoch, d);
    if (!this.manualBarriers) void this.chain.then(() => d.resolve('ok'));
    return d.promise;
  }

  markOutOfSync(offset: number, length: number): void {
    this.outOfSync.push([offset, length]);
  }

  readonly peerIsWitness = false;
  readonly inSync: number[] = [];

  peersInSync(epoch: number): void {
    this.inSync.push(epoch);
  }

  answer(seq: number, outcome: PeerOutcome = 'ok'): void {
    this.pending.get(seq)!.resolve(outcome);
  }

  answerBarrier(epoch: number): void {
    this.pendingBarriers.get(epoch)!.resolve('ok');
  }

  asPeer(): Peer {
    return this as unknown as Peer;
  }
}

interface Rig {
  store: ControlledStore;
  peers: FakePeer[];
  bitmaps: Map<number, Bitmap>;
  replicator: Replicator;
  flushes: { count: number; hold: Deferred | null };
}

function rig(peerCount = 1, intent: WriteIntent | null = null, diskless = false, degradedGate?: () => Promise<void> | null): Rig {
  const store = new ControlledStore(SIZE);
  const peers = Array.from({ length: peerCount }, (_, i) => new FakePeer(i + 1));
  const bitmaps = new Map(peers.map((p) => [p.nodeId, new Bitmap(SIZE)]));
  const flushes: Rig['flushes'] = { count: 0, hold: null };
  const replicator = new Replicator({
    store: () => (diskless ? null : store),
    peers: () => peers.map((p) => p.asPeer()),
    bitmapFor: (id) => bitmaps.get(id)!,
    writeLock: new RangeLock(),
    flushLocal: async () => {
      if (flushes.hold) await flushes.hold.promise;
      await store.flush();
      flushes.count++;
    },
    intent,
    degradedGate,
    log,
  });
  stops.push(() => replicator.stop());
  return { store, peers, bitmaps, replicator, flushes };
}

const stops: Array<() => void> = [];
afterEach(() => {
  for (const s of stops.splice(0)) s();
  vi.useRealTimers();
});

/** Tracks whether a promise has settled. */
function watch<T>(p: Promise<T>): { readonly settled: boolean; promise: Promise<T> } {
  const s = { settled: false, promise: p };
  p.then(
    () => (s.settled = true),
    () => (s.settled = true),
  );
  return s;
}

describe('Replicator: peers that do not take replication (G1, G3)', () => {
  it('marks the range in that peer bitmap before the write is acknowledged; the replicating peer gets the write', async () => {
    const r = rig(2);
    r.peers[1]!.replicating = false;
    const local = r.store.hold('write');
    const w = watch(r.replicator.write(1000, Buffer.alloc(5000, 7), false));
    await local.reached;
    // marked already, before the local write even completed
    expect(r.bitmaps.get(2)!.nextSetRun(0)).toEqual({ block: 0, count: 2 });
    expect(r.bitmaps.get(1)!.countSet()).toBe(0);
    expect(r.peers[0]!.writes.map((x) => [x.kind, x.offset, x.length])).toEqual([['data', 1000, 5000]]);
    expect(w.settled).toBe(false);
    local.release();
    await w.promise;
    expect(r.replicator.counters.degradedWrites).toBe(1);
    expect(r.replicator.counters.writes).toBe(1);
  });

  it('marks ZEROES and TRIM ranges too, and writes locally', async () => {
    const r = rig(1);
    r.peers[0]!.replicating = false;
    await r.replicator.writeZeroes(64 * KiB, 8 * KiB, true, false);
    await r.replicator.trim(128 * KiB, 4 * KiB, false);
    const bm = r.bitmaps.get(1)!;
    expect(bm.nextSetRun(0)).toEqual({ block: 16, count: 2 });
    expect(bm.nextSetRun(18)).toEqual({ block: 32, count: 1 });
    expect(r.store.events).toEqual([`writeZeroes ${64 * KiB}+${8 * KiB}`, `trim ${128 * KiB}+${4 * KiB}`]);
    expect(r.replicator.counters.degradedWrites).toBe(2);
  });

  // A write that reached the replicator before quorum was lost (past the
  // export's suspension) but finds no peer taking replication any more:
  // only the gate may let it be acknowledged (G4).
  it('a write no data peer takes is acknowledged only through the degraded gate', async () => {
    let gate: Promise<void> | null = null;
    const r = rig(2, null, false, () => gate);
    for (const p of r.peers) p.replicating = false;
    await r.replicator.write(0, Buffer.alloc(4096, 1), false); // quorum held: the gate lets it go
    let open!: () => void;
    gate = new Promise<void>((resolve) => (open = resolve));
    const held = watch(r.replicator.write(4096, Buffer.alloc(4096, 2), false));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(r.store.count('write')).toBe(2); // written and marked for both peers...
    expect(r.bitmaps.get(1)!.countSet()).toBe(2);
    expect(held.settled).toBe(false); // ...but not acknowledged while the gate holds it
    open();
    await held.promise;
    gate = Promise.reject(Object.assign(new Error('no quorum'), { errno: 'EIO' }));
    gate.catch(() => undefined);
    await expect(r.replicator.write(8192, Buffer.alloc(4096, 3), false)).rejects.toThrow('no quorum');
    expect(r.replicator.counters.degradedWrites).toBe(3);
  });

  it('with no peers at all, a write completes on the local write alone', async () => {
    const r = rig(0);
    await r.replicator.write(0, Buffer.alloc(4096, 1), false);
    expect(r.store.count('write')).toBe(1);
    expect(r.replicator.counters.degradedWrites).toBe(0);
  });
});

describe('Replicator: a diskless node', () => {
  it('sends writes to the peers only and flushes only the peers', async () => {
    const r = rig(1, null, true);
    await r.replicator.write(0, Buffer.alloc(4096, 3), true);
    expect(r.peers[0]!.writes).toHaveLength(1);
    expect(r.store.events).toEqual([]);
    await r.replicator.flush();
    expect(r.flushes.count).toBe(0);
    expect(r.peers[0]!.barriers).toEqual([1]);
    expect((await r.peers[0]!.mirror.read(0, 4096)).every((b) => b === 3)).toBe(true);
  });

  it('refuses a write that nobody takes, with EIO', async () => {
    const r = rig(1, null, true);
    r.peers[0]!.replicating = false;
    await expect(r.replicator.write(0, Buffer.alloc(4096), false)).rejects.toMatchObject({ errno: 'EIO' });
    r.peers[0]!.replicating = true;
    await r.replicator.write(0, Buffer.alloc(4096), false); // the range was released
  });
});

describe('Replicator: completion (G1)', () => {
  it('resolves only after the local write and the peer outcome: peer first', async () => {
    const r = rig(1);
    r.peers[0]!.manual = true;
    const local = r.store.hold('write');
    const w = watch(r.replicator.write(0, Buffer.alloc(4096, 1), false));
    await local.reached;
    await turns();
    r.peers[0]!.answer(1);
    await turns();
    expect(w.settled).toBe(false);
    local.release();
    await w.promise;
  });

  it('resolves only after the local write and the peer outcome: local first', async () => {
    const r = rig(2);
    r.peers[0]!.manual = true;
    r.peers[1]!.manual = true;
    const w = watch(r.replicator.write(0, Buffer.alloc(4096, 1), false));
    await turns();
    expect(r.store.count('write')).toBe(1);
    expect(w.settled).toBe(false);
    r.peers[0]!.answer(1);
    await turns();
    expect(w.settled).toBe(false); // one peer is still out
    r.peers[1]!.answer(1);
    await w.promise;
  });

  it('a peer that failed or was lost (it marked the range itself) does not fail the write, but counts as degraded', async () => {
    const r = rig(2);
    r.peers[0]!.manual = true;
    r.peers[1]!.manual = true;
    const w = r.replicator.write(0, Buffer.alloc(4096, 1), false);
    await turns();
    r.peers[0]!.answer(1, 'failed');
    r.peers[1]!.answer(1, 'lost');
    await w;
    expect(r.replicator.counters.degradedWrites).toBe(1);
  });

  it('FUA: the local store is flushed before the write resolves, and the peer is asked for FUA', async () => {
    const r = rig(1);
    r.flushes.hold = deferred();
    const w = watch(r.replicator.write(0, Buffer.alloc(4096, 1), true));
    await turns();
    expect(r.store.count('write')).toBe(1);
    expect(w.settled).toBe(false);
    r.flushes.hold.resolve();
    await w.promise;
    expect(r.flushes.count).toBe(1);
    expect(r.peers[0]!.writes[0]!.fua).toBe(true);
    await r.replicator.write(0, Buffer.alloc(4096, 1), false);
    expect(r.flushes.count).toBe(1);
    expect(r.peers[0]!.writes[1]!.fua).toBe(false);
  });

  it('a failing local write rejects, tells the peers the range differs, releases its range and leaves nothing in flight', async () => {
    const r = rig(2);
    r.store.inner.failWith('EIO', ['write']);
    await expect(r.replicator.write(4096, Buffer.alloc(4096, 1), false)).rejects.toThrow(/EIO/);
    // the peers have the write, our disk may not
    expect(r.peers.map((p) => p.outOfSync)).toEqual([[[4096, 4096]], [[4096, 4096]]]);
    r.store.inner.failWith(undefined);
    await r.replicator.write(0, Buffer.alloc(4096, 2), false);
    const thaw = await r.replicator.freeze(); // would hang if the failed write still counted
    thaw();
  });

  it('G3: the write intent is recorded before the data goes anywhere and ended after the local write', async () => {
    const order: string[] = [];
    const gate = deferred();
    const intent: WriteIntent = {
      beginWrite: async (o, l) => {
        order.push(`begin ${o}+${l}`);
        await gate.promise;
      },
      endWrite: (o, l) => order.push(`end ${o}+${l}`),
    };
    const r = rig(1, intent);
    const w = r.replicator.write(8192, Buffer.alloc(4096, 1), false);
    await turns();
    expect(order).toEqual(['begin 8192+4096']);
    expect(r.peers[0]!.writes).toEqual([]);
    expect(r.store.count('write')).toBe(0);
    gate.resolve();
    await w;
    expect(order).toEqual(['begin 8192+4096', 'end 8192+4096']);
    expect(r.peers[0]!.writes).toHaveLength(1);
  });
});

describe('Replicator: flush (G2)', () => {
  it('closes the epoch and waits for the local flush and every replicating peer barrier', async () => {
    const r = rig(3);
    r.peers[2]!.replicating = false;
    r.peers[0]!.manualBarriers = true;
    r.peers[1]!.manualBarriers = true;
    await r.replicator.write(0, Buffer.alloc(4096, 1), false);
    r.flushes.hold = deferred();
    const f = watch(r.replicator.flush());
    expect(r.peers[0]!.barriers).toEqual([1]);
    expect(r.peers[1]!.barriers).toEqual([1]);
    expect(r.peers[2]!.barriers).toEqual([]);
    r.peers[0]!.answerBarrier(1);
    r.peers[1]!.answerBarrier(1);
    await turns();
    expect(f.settled).toBe(false); // the local flush is still out
    r.flushes.hold.resolve();
    r.flushes.hold = null;
    await f.promise;
    // a second flush: local done at once, one barrier out
    const g = watch(r.replicator.flush());
    expect(r.peers[0]!.barriers).toEqual([1, 2]);
    r.peers[0]!.answerBarrier(2);
    await turns();
    expect(g.settled).toBe(false);
    r.peers[1]!.answerBarrier(2);
    await g.promise;
    // writes after the flush belong to the next epoch
    await r.replicator.write(0, Buffer.alloc(4096, 1), false);
    expect(r.peers[0]!.writes.map((w) => w.epoch)).toEqual([1, 3]);
  });
});

describe('Replicator: freeze', () => {
  it('holds new writes and waits for the ones in flight; thaw lets them go', async () => {
    const r = rig(1);
    r.peers[0]!.manual = true;
    const a = r.replicator.write(0, Buffer.alloc(4096, 1), false);
    await turns();
    const frozen = watch(r.replicator.freeze());
    await turns();
    expect(frozen.settled).toBe(false); // A's peer answer is out
    const b = watch(r.replicator.write(64 * KiB, Buffer.alloc(4096, 2), false));
    await turns();
    expect(r.peers[0]!.writes.map((w) => w.seq)).toEqual([1]); // B not started
    r.peers[0]!.answer(1);
    await a;
    const thaw = await frozen.promise;
    await turns();
    expect(b.settled).toBe(false);
    expect(r.store.count('write')).toBe(1);
    expect(r.peers[0]!.writes).toHaveLength(1);
    thaw();
    thaw(); // idempotent
    await turns();
    expect(r.peers[0]!.writes.map((w) => w.offset)).toEqual([0, 64 * KiB]);
    r.peers[0]!.answer(2);
    await b.promise;
  });

  it('resolves at once when idle; a second freeze waits for the first thaw', async () => {
    const r = rig(1);
    const thaw1 = await r.replicator.freeze();
    const second = watch(r.replicator.freeze());
    const w = watch(r.replicator.write(0, Buffer.alloc(4096, 1), false));
    await turns();
    expect(second.settled).toBe(false);
    thaw1();
    const thaw2 = await second.promise;
    await turns();
    // the write came after the second freeze: it waits for the second thaw
    expect(w.settled).toBe(false);
    expect(r.store.count('write')).toBe(0);
    thaw2();
    await w.promise;
    expect(r.store.count('write')).toBe(1);
  });
});

describe('Replicator: order of overlapping writes', () => {
  it('issues overlapping writes to peers in arrival order; a disjoint write does not wait', async () => {
    const r = rig(1);
    const slow = r.store.hold('write', (o) => o === 0);
    const a = r.replicator.write(0, Buffer.alloc(8 * KiB, 0xaa), false);
    await slow.reached;
    const b = r.replicator.write(4 * KiB, Buffer.alloc(8 * KiB, 0xbb), false);
    const c = r.replicator.write(64 * KiB, Buffer.alloc(4 * KiB, 0xcc), false);
    await c;
    // B waits for A's local write; C went out
    expect(r.peers[0]!.writes.map((w) => w.offset)).toEqual([0, 64 * KiB]);
    slow.release();
    await Promise.all([a, b]);
    const sent = r.peers[0]!.writes;
    expect(sent.map((w) => w.offset)).toEqual([0, 64 * KiB, 4 * KiB]);
    // sequence numbers follow the wire order
    expect(sent.map((w) => w.seq)).toEqual([1, 2, 3]);
    const local = await r.store.inner.read(0, 12 * KiB);
    expect(local.equals(await r.peers[0]!.mirror.read(0, 12 * KiB))).toBe(true);
    expect(local.subarray(4 * KiB).every((x) => x === 0xbb)).toBe(true);
  });

  it('seeded: random overlapping writes with random local latency leave the peer identical to the local disk', async () => {
    for (const seed of [1, 2, 3]) {
      const rand = seededRandom(seed);
      const r = rig(2);
      r.store.latency = () => (rand() < 0.4 ? Math.floor(rand() * 3) : 0);
      const writes: Array<Promise<void>> = [];
      for (let i = 0; i < 200; i++) {
        const length = 512 * (1 + Math.floor(rand() * 32));
        const offset = 512 * Math.floor(rand() * ((128 * KiB - length) / 512)); // a small area: many overlaps
        const k = rand();
        if (k < 0.8) writes.push(r.replicator.write(offset, randomBuffer(rand, length), rand() < 0.1));
        else if (k < 0.9) writes.push(r.replicator.writeZeroes(offset, length, rand() < 0.5, false));
        else writes.push(r.replicator.trim(offset, length, false));
        if (rand() < 0.3) await turns(1);
      }
      await Promise.all(writes);
      const local = await r.store.inner.read(0, 128 * KiB);
      for (const p of r.peers) expect((await p.mirror.read(0, 128 * KiB)).equals(local), `seed ${seed} peer ${p.nodeId}`).toBe(true);
      const seqs = r.peers[0]!.writes.map((w) => w.seq);
      expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
      expect(r.peers[1]!.writes.map((w) => w.seq)).toEqual(seqs);
    }
  });
});

describe('Replicator: epochs', () => {
  it(`closes an epoch after MAX_EPOCH_WRITES (${MAX_EPOCH_WRITES}) writes`, async () => {
    const r = rig(1);
    for (let i = 0; i < MAX_EPOCH_WRITES; i++) await r.replicator.write((i % 64) * 4096, Buffer.alloc(512, i & 0xff), false);
    expect(r.peers[0]!.barriers).toEqual([1]);
    await r.replicator.write(0, Buffer.alloc(512), false);
    const epochs = r.peers[0]!.writes.map((w) => w.epoch);
    expect(epochs.filter((e) => e === 1)).toHaveLength(MAX_EPOCH_WRITES);
    expect(epochs.at(-1)).toBe(2);
    expect(r.replicator.counters.epochs).toBe(1);
  });

  it('no epoch carries more than MAX_EPOCH_WRITES writes, also when writes are issued concurrently', async () => {
    const r = rig(1);
    const n = MAX_EPOCH_WRITES + 200;
    const all: Array<Promise<void>> = [];
    for (let i = 0; i < n; i++) all.push(r.replicator.write(i * 512, Buffer.alloc(512, 1), false));
    await Promise.all(all);
    const perEpoch = new Map<number, number>();
    for (const w of r.peers[0]!.writes) perEpoch.set(w.epoch, (perEpoch.get(w.epoch) ?? 0) + 1);
    expect(Math.max(...perEpoch.values())).toBeLessThanOrEqual(MAX_EPOCH_WRITES);
  });

  it(`closes an epoch EPOCH_IDLE_MS (${EPOCH_IDLE_MS} ms) after writes, and not without writes`, async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const r = rig(1);
    vi.advanceTimersByTime(10 * EPOCH_IDLE_MS);
    expect(r.peers[0]!.barriers).toEqual([]);
    await r.replicator.write(0, Buffer.alloc(4096), false);
    await r.replicator.write(8192, Buffer.alloc(4096), false);
    vi.advanceTimersByTime(EPOCH_IDLE_MS - 1);
    expect(r.peers[0]!.barriers).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(r.peers[0]!.barriers).toEqual([1]);
    vi.advanceTimersByTime(10 * EPOCH_IDLE_MS);
    expect(r.peers[0]!.barriers).toEqual([1]);
    await r.replicator.write(0, Buffer.alloc(4096), false);
    expect(r.peers[0]!.writes.at(-1)!.epoch).toBe(2);
    // a flush closes the epoch and cancels the timer
    await r.replicator.flush();
    expect(r.peers[0]!.barriers).toEqual([1, 2]);
    vi.advanceTimersByTime(10 * EPOCH_IDLE_MS);
    expect(r.peers[0]!.barriers).toEqual([1, 2]);
  });

  it('stop() cancels the idle timer', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const r = rig(1);
    await r.replicator.write(0, Buffer.alloc(4096), false);
    r.replicator.stop();
    vi.advanceTimersByTime(10 * EPOCH_IDLE_MS);
    expect(r.peers[0]!.barriers).toEqual([]);
  });
});
