import { describe, expect, test } from 'vitest';
import { MirrorError } from '../../src/errors.js';
import { ActivityLog, type AlJournal } from '../../src/meta/activity-log.js';
import { AlPlanner } from '../../src/meta/al-planner.js';
import { replayAlRing } from '../../src/meta/al-replay.js';
import {
  AL_CONTEXT_SLOTS,
  AL_EMPTY,
  AL_EXTENT_BYTES,
  AL_MAX_UPDATES,
  AL_TX_BYTES,
  AL_TX_FIELDS,
  alMaxExtents,
  checkAlFits,
  decodeAlTransaction,
  encodeAlTransaction,
  type AlTransaction,
} from '../../src/meta/al-transaction.js';
import { seededRandom as rng } from '../helpers/seeded-random.js';

const X = AL_EXTENT_BYTES;
const DATA = 1024 * X; // 4 GiB of data, 1024 extents


const ticks = async (n = 5): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

/** A ring in memory; records every write in `events`, can hold writes until released or fail them. */
class MemJournal implements AlJournal {
  readonly ringBlocks: number;
  readonly blocks: Buffer[];
  readonly events: string[];
  writes = 0;
  hold = false;
  failNext = false;
  #held: Array<() => void> = [];

  constructor(ringBlocks = 8, events: string[] = []) {
    this.ringBlocks = ringBlocks;
    this.blocks = Array.from({ length: ringBlocks }, () => Buffer.alloc(AL_TX_BYTES));
    this.events = events;
  }

  async writeBlock(position: number, block: Buffer): Promise<void> {
    const d = decodeAlTransaction(block);
    expect(d.ok).toBe(true);
    const tx = (d as { tx: AlTransaction }).tx;
    this.events.push(`tx ${tx.number} ${tx.type} [${tx.updates.map((u) => `${u.slot}:${u.extent === AL_EMPTY ? '-' : u.extent}`).join(' ')}]`);
    if (this.hold) await new Promise<void>((r) => this.#held.push(r));
    if (this.failNext) {
      this.failNext = false;
      throw new Error('injected AL write failure');
    }
    this.blocks[position] = Buffer.from(block);
    this.writes++;
  }

  release(): void {
    this.hold = false;
    for (const r of this.#held.splice(0)) r();
  }
}

function makeLog(alExtents: number, journal = new MemJournal(), events = journal.events, nextNumber = 0): ActivityLog {
  return new ActivityLog({
    journal,
    alExtents,
    dataSizeBytes: DATA,
    nextNumber,
    beforeEvict: (e) => {
      events.push(`evict ${e}`);
    },
  });
}

describe('transaction codec', () => {
  test('round trip; crc over the block; layout sizes', () => {
    expect(AL_TX_FIELDS.context + AL_CONTEXT_SLOTS * 4).toBe(AL_TX_BYTES);
    expect(AL_CONTEXT_SLOTS).toBe(888);
    const tx: AlTransaction = {
      number: 0xfffffffe,
      type: 'update',
      slotCount: 1237,
      updates: [
        { slot: 0, extent: 0 },
        { slot: 1236, extent: 0xfffffffe },
        { slot: 5, extent: AL_EMPTY },
      ],
      contextStart: 888,
      context: Uint32Array.from({ length: 349 }, (_, i) => i * 3),
    };
    const block = encodeAlTransaction(tx);
    expect(block.readUInt32BE(0)).toBe(0x4d42414c);
    const d = decodeAlTransaction(block);
    expect(d).toEqual({ ok: true, tx });
    for (const at of [0, 9, 13, 40, 600, 4095]) {
      const bad = Buffer.from(block);
      bad[at]! ^= 0x10;
      expect(decodeAlTransaction(bad).ok).toBe(false);
    }
    expect(decodeAlTransaction(Buffer.alloc(AL_TX_BYTES))).toMatchObject({ ok: false, reason: 'no-magic' });
    expect(() => encodeAlTransaction({ ...tx, updates: [{ slot: 1237, extent: 1 }] })).toThrow(RangeError);
    expect(() => encodeAlTransaction({ ...tx, contextStart: 1000 })).toThrow(RangeError);
    expect(() => encodeAlTransaction({ ...tx, updates: Array.from({ length: AL_MAX_UPDATES + 1 }, () => ({ slot: 0, extent: 0 })) })).toThrow(RangeError);
  });

  test('sizing: 1237 fits 32 KiB, 6216 is the most, more is ERR_MD_TOO_SMALL', () => {
    expect(alMaxExtents(32 * 1024)).toBe(6216);
    expect(() => checkAlFits(1237, 32 * 1024)).not.toThrow();
    expect(() => checkAlFits(6216, 32 * 1024)).not.toThrow();
    try {
      checkAlFits(6217, 32 * 1024);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(MirrorError);
      expect((e as MirrorError).code).toBe('ERR_MD_TOO_SMALL');
      expect((e as MirrorError).message).toMatch(/al-extents 6217 .* at most 6216/);
    }
    expect(() => makeLog(6217)).toThrow(/at most 6216/);
    expect(() => makeLog(1237, new MemJournal(2))).toThrow(/at most 888/);
  });
});

describe('beginWrite / endWrite', () => {
  test('a cold extent costs exactly one transaction, written before beginWrite resolves; hot ones cost none', async () => {
    const j = new MemJournal();
    const al = makeLog(16, j);
    j.hold = true;
    let resolved = false;
    const p = al.beginWrite(5 * X + 10, 100).then(() => (resolved = true));
    await ticks();
    expect(j.events).toEqual(['tx 0 reset [0:5]']);
    expect(resolved).toBe(false);
    expect(j.writes).toBe(0);
    j.release();
    await p;
    expect(j.writes).toBe(1);
    expect(al.activeExtents()).toEqual([5]);

    // Into the hot extent: no I/O at all, resolved at once.
    await al.beginWrite(5 * X, X);
    await al.beginWrite(5 * X + 4096, 4096);
    expect(j.writes).toBe(1);
    expect(al.stats.hotHits).toBe(2);
    al.endWrite(5 * X, X);
    al.endWrite(5 * X + 4096, 4096);
    al.endWrite(5 * X + 10, 100);
    expect(al.inflight()).toBe(0);

    // A write spanning a hot and a cold extent: one transaction for the cold one.
    await al.beginWrite(6 * X - 4096, 8192);
    expect(j.events.at(-1)).toBe('tx 1 update [1:6]');
    expect(j.writes).toBe(2);
    al.endWrite(6 * X - 4096, 8192);
    expect(() => al.endWrite(6 * X, 1)).toThrow(/none in flight/);
  });

  test('callers needing the same new extent share one transaction', async () => {
    const j = new MemJournal();
    const al = makeLog(16, j);
    await Promise.all([al.beginWrite(3 * X, 10), al.beginWrite(3 * X + 4096, 10), al.beginWrite(4 * X, 10)]);
    expect(j.writes).toBe(1);
    // One arriving while the transaction for its extent is being written waits for it, not for another.
    j.hold = true;
    const a = al.beginWrite(9 * X, 1);
    await ticks();
    const b = al.beginWrite(9 * X + 1, 1);
    await ticks();
    j.release();
    await Promise.all([a, b]);
    expect(j.writes).toBe(2);
  });

  test('LRU eviction: beforeEvict runs before the transaction that drops the extent', async () => {
    const j = new MemJournal();
    const al = makeLog(7, j);
    for (let e = 0; e < 7; e++) {
      await al.beginWrite(e * X, 1);
      al.endWrite(e * X, 1);
    }
    // Touch extent 0 again: now 1 is the least recently used.
    await al.beginWrite(0, 1);
    al.endWrite(0, 1);
    j.events.length = 0;
    await al.beginWrite(7 * X, 1);
    // Slots are handed out from 0 up, so extent e sat in slot e; 7 takes over slot 1.
    expect(j.events).toEqual(['evict 1', 'tx 7 update [1:7]']);
    expect(al.activeExtents()).toEqual([0, 2, 3, 4, 5, 6, 7]);
    // A write in flight protects its extent: 2 is busy, so 3 goes.
    await al.beginWrite(2 * X, 1);
    j.events.length = 0;
    await al.beginWrite(8 * X, 1);
    expect(j.events).toEqual(['evict 3', 'tx 8 update [3:8]']);
    expect(al.stats.evictions).toBe(2);
  });

  test('the transaction waits for an asynchronous beforeEvict', async () => {
    const j = new MemJournal();
    let release: () => void = () => undefined;
    const al = new ActivityLog({
      journal: j,
      alExtents: 7,
      dataSizeBytes: DATA,
      nextNumber: 0,
      beforeEvict: (e) => {
        j.events.push(`evict ${e} start`);
        return new Promise<void>((r) => (release = () => {
          j.events.push(`evict ${e} saved`);
          r();
        }));
      },
    });
    for (let e = 0; e < 7; e++) {
      await al.beginWrite(e * X, 1);
      al.endWrite(e * X, 1);
    }
    j.events.length = 0;
    let resolved = false;
    const p = al.beginWrite(9 * X, 1).then(() => (resolved = true));
    await ticks();
    expect(j.events).toEqual(['evict 0 start']);
    expect(resolved).toBe(false);
    release();
    await p;
    expect(j.events).toEqual(['evict 0 start', 'evict 0 saved', 'tx 7 update [0:9]']);
  });

  test('with every slot in flight a new extent waits for an endWrite', async () => {
    const j = new MemJournal();
    const al = makeLog(7, j);
    for (let e = 0; e < 7; e++) await al.beginWrite(e * X, 1);
    let resolved = false;
    const p = al.beginWrite(20 * X, 1).then(() => (resolved = true));
    await ticks(10);
    expect(resolved).toBe(false);
    expect(j.writes).toBe(7);
    al.endWrite(4 * X, 1);
    await p;
    expect(j.events.slice(-2)).toEqual(['evict 4', 'tx 7 update [4:20]']);
    expect(al.activeExtents()).toEqual([0, 1, 2, 3, 5, 6, 20]);
  });

  test('waiting writes are served in order, each all-or-nothing', async () => {
    const j = new MemJournal();
    const al = makeLog(7, j);
    for (let e = 0; e < 7; e++) await al.beginWrite(e * X, 1);
    const order: string[] = [];
    // A needs two new extents, B one; only one slot frees up first: B must not overtake A.
    const a = al.beginWrite(10 * X, X + 1).then(() => order.push('A'));
    const b = al.beginWrite(30 * X, 1).then(() => order.push('B'));
    al.endWrite(0, 1);
    await ticks(10);
    expect(order).toEqual([]);
    al.endWrite(X, 1);
    al.endWrite(2 * X, 1);
    await Promise.all([a, b]);
    expect(order).toEqual(['A', 'B']);
  });

  test('a write over more extents than the log may hold is refused', () => {
    const al = makeLog(7);
    expect(() => al.beginWrite(0, 8 * X)).toThrow(RangeError);
    expect(() => al.beginWrite(DATA - 1, 2)).toThrow(RangeError);
    const big = makeLog(1237);
    expect(() => big.beginWrite(0, (AL_MAX_UPDATES + 1) * X)).toThrow(/exceeds/);
  });

  test('an I/O error fails the log: the waiting and every later beginWrite reject', async () => {
    const j = new MemJournal();
    const al = makeLog(7, j);
    j.failNext = true;
    await expect(al.beginWrite(0, 1)).rejects.toThrow(/injected/);
    await expect(al.beginWrite(X, 1)).rejects.toThrow(/injected/);
    expect(al.failure).toBeInstanceOf(Error);
  });

  test('clean(): beforeEvict for each active extent, then an empty reset; refused with writes in flight', async () => {
    const j = new MemJournal();
    const al = makeLog(7, j);
    await al.beginWrite(0, 1);
    await al.beginWrite(3 * X, 1);
    await expect(al.clean()).rejects.toThrow(/in flight/);
    al.endWrite(0, 1);
    al.endWrite(3 * X, 1);
    j.events.length = 0;
    await al.clean();
    expect(j.events).toEqual(['evict 0', 'evict 3', 'tx 2 reset []']);
    expect(al.activeExtents()).toEqual([]);
    expect(replayAlRing(j.blocks)).toMatchObject({ extents: [], complete: true, clean: true, nextNumber: 3 });
    // The log goes on after a clean.
    await al.beginWrite(5 * X, 1);
    expect(replayAlRing(j.blocks).extents).toEqual([5]);
  });
});

describe('planner invariants (pure)', () => {
  test('seeded random operations keep the slot table consistent', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const r = rng(seed);
      const p = new AlPlanner<number>(7 + (seed % 5));
      const held: Array<[number, number]> = [];
      let token = 0;
      const granted = new Set<number>();
      const ranges = new Map<number, [number, number]>();
      for (let step = 0; step < 500; step++) {
        const op = r();
        if (op < 0.5) {
          const first = Math.floor(r() * 40);
          const last = first + Math.floor(r() * 3);
          if (p.tryBegin(first, last)) held.push([first, last]);
          else {
            ranges.set(token, [first, last]);
            p.enqueue(first, last, token++);
          }
        } else if (op < 0.8 && held.length > 0) {
          const [first, last] = held.splice(Math.floor(r() * held.length), 1)[0]!;
          p.end(first, last);
        } else {
          for (const t of p.grantReady()) granted.add(t), held.push(ranges.get(t)!);
          const plan = p.plan();
          if (plan !== null) {
            expect(plan.updates.length).toBeLessThanOrEqual(AL_MAX_UPDATES);
            for (const t of p.commit()) granted.add(t), held.push(ranges.get(t)!);
          }
        }
        // Every held write's extents are active.
        for (const [first, last] of held) for (let e = first; e <= last; e++) expect(p.isActive(e)).toBe(true);
        expect(p.activeExtents().length).toBeLessThanOrEqual(p.slotCount);
      }
    }
  });
});
