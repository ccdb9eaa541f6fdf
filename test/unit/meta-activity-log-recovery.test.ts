import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { MirrorError } from '../../src/errors.js';
import { ActivityLog, type AlJournal } from '../../src/meta/activity-log.js';
import { metaAlJournal, recoverActivityLog } from '../../src/meta/al-journal.js';
import { replayAlRing } from '../../src/meta/al-replay.js';
import { AL_EXTENT_BYTES, AL_TX_BYTES } from '../../src/meta/al-transaction.js';
import { createMd, openMd } from '../../src/meta/index.js';
import type { MdLayout } from '../../src/meta/layout.js';
import { fileMetaIo, type MetaIo } from '../../src/meta/meta-io.js';
import { seededRandom as rng } from '../helpers/seeded-random.js';

const X = AL_EXTENT_BYTES;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
let dir: string;

beforeEach(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'mirrorbd-al-'));
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});


async function sparseDisk(size: number): Promise<string> {
  const p = join(dir, 'd.img');
  await fsp.writeFile(p, '');
  await fsp.truncate(p, size);
  return p;
}

/**
 * A MetaIo that can "lose power": after crash() no write reaches the file
 * and none resolves, like a machine that stopped. Writes already handed to
 * the file finish (settled() waits for them): they made it before the power went.
 */
class CrashableIo implements MetaIo {
  crashed = false;
  #inflight = 0;
  #idle: Array<() => void> = [];
  constructor(private readonly inner: MetaIo) {}
  read(offset: number, length: number): Promise<Buffer> {
    return this.inner.read(offset, length);
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.crashed) return new Promise<void>(() => undefined);
    this.#inflight++;
    try {
      await this.inner.write(offset, data);
    } finally {
      this.#done();
    }
    if (this.crashed) return new Promise<void>(() => undefined);
  }
  async sync(): Promise<void> {
    if (this.crashed) return new Promise<void>(() => undefined);
    await this.inner.sync();
    if (this.crashed) return new Promise<void>(() => undefined);
  }
  crash(): void {
    this.crashed = true;
  }
  settled(): Promise<void> {
    return this.#inflight === 0 ? Promise.resolve() : new Promise((r) => this.#idle.push(r));
  }
  #done(): void {
    if (--this.#inflight === 0) for (const r of this.#idle.splice(0)) r();
  }
}

/** Wraps a journal to remember, per transaction number, the active set when it was about to be written. */
function snapshotting(inner: AlJournal, active: () => number[], snapshots: Map<number, number[]>): AlJournal {
  return {
    ringBlocks: inner.ringBlocks,
    writeBlock(position, block) {
      snapshots.set(block.readUInt32BE(4), active());
      return inner.writeBlock(position, block);
    },
  };
}

interface Session {
  al: ActivityLog;
  io: CrashableIo;
  snapshots: Map<number, number[]>;
}

function session(handle: FileHandle, path: string, layout: MdLayout, alExtents: number, nextNumber: number): Session {
  const io = new CrashableIo(fileMetaIo(handle, path));
  const snapshots = new Map<number, number[]>();
  let al: ActivityLog | null = null;
  const journal = snapshotting(metaAlJournal(io, layout), () => al!.activeExtents(), snapshots);
  al = new ActivityLog({ journal, alExtents, dataSizeBytes: layout.dataSizeBytes, nextNumber });
  return { al, io, snapshots };
}

/**
 * Random concurrent writes with locality (a working set a bit larger than
 * the log, so extents keep being evicted), then a crash at a random point.
 * Returns the extents of writes whose beginWrite had resolved and which had
 * not ended, and the log's active set, at the crash.
 */
async function workload(s: Session, r: () => number, steps: number, extents: number): Promise<{ inFlight: Set<number>; active: number[] }> {
  const { al } = s;
  const resolved: Array<[number, number]> = [];
  const pending = new Set<Promise<void>>();
  const workingSet = Math.min(extents, Math.ceil(al.alExtents * 1.3) + 2);
  let base = Math.floor(r() * (extents - workingSet));
  for (let i = 0; i < steps; i++) {
    const op = r();
    if (op < 0.45) {
      if (r() < 0.02) base = Math.floor(r() * (extents - workingSet)); // the working set moves
      const offset = (base + Math.floor(r() * workingSet)) * X + Math.floor(r() * X);
      const length = Math.min(1 + Math.floor(r() * (r() < 0.1 ? X + 1 : 64 * 1024)), extents * X - offset);
      const p = al.beginWrite(offset, length).then(() => {
        resolved.push([offset, length]);
        pending.delete(p);
      });
      pending.add(p);
    } else if (op < 0.85 && resolved.length > 0) {
      const [offset, length] = resolved.splice(Math.floor(r() * resolved.length), 1)[0]!;
      al.endWrite(offset, length);
    } else if (pending.size > 0 && r() < 0.5) {
      // Let the disk make progress: wait for some beginWrite, but not forever (it may need an endWrite).
      await Promise.race([...pending, new Promise((res) => setTimeout(res, 2))]);
    } else {
      await new Promise((res) => setImmediate(res));
    }
  }
  // Power goes: nothing more reaches the disk.
  s.io.crash();
  const inFlight = new Set<number>();
  for (const [offset, length] of resolved) {
    for (let e = Math.floor(offset / X); e <= Math.floor((offset + length - 1) / X); e++) inFlight.add(e);
  }
  const active = al.activeExtents();
  await s.io.settled();
  return { inFlight, active };
}

function expectSuperset(recovered: number[], needed: Iterable<number>, what: string): void {
  const have = new Set(recovered);
  const missing = [...needed].filter((e) => !have.has(e));
  expect(missing, `${what}: recovery lost extents`).toEqual([]);
}

describe('crash recovery on real files', () => {
  test('fresh metadata recovers to the empty set; a clean log too', async () => {
    const path = await sparseDisk(256 * MiB);
    await createMd({ diskPath: path, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false });
    const md = await openMd({ diskPath: path, metaDisk: 'internal' });
    try {
      const fresh = await md.recoverActivityLog();
      expect(fresh).toMatchObject({ extents: [], complete: true, clean: true, nextNumber: 0 });
      const evicted: number[] = [];
      const al = md.openActivityLog({ recovered: fresh, beforeEvict: (e) => void evicted.push(e) });
      expect(al.alExtents).toBe(1237);
      await al.beginWrite(0, 4096);
      await al.beginWrite(10 * X, 2 * X);
      expect((await md.recoverActivityLog()).extents).toEqual([0, 10, 11]);
      al.endWrite(0, 4096);
      al.endWrite(10 * X, 2 * X);
      await al.clean();
      expect(evicted).toEqual([0, 10, 11]);
      const clean = await md.recoverActivityLog();
      expect(clean).toMatchObject({ extents: [], complete: true, clean: true, nextNumber: 3 });
    } finally {
      await md.close();
    }
  });

  test('a crash (no clean) keeps the active extents across close and reopen', async () => {
    const path = await sparseDisk(256 * MiB);
    await createMd({ diskPath: path, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false, alExtents: 7 });
    let md = await openMd({ diskPath: path, metaDisk: 'internal' });
    const al = md.openActivityLog({ recovered: await md.recoverActivityLog() });
    for (let e = 0; e < 30; e++) {
      await al.beginWrite(e * X, 1);
      al.endWrite(e * X, 1);
    }
    await al.beginWrite(40 * X, 1);
    await md.close(); // dropped without clean()
    md = await openMd({ diskPath: path, metaDisk: 'internal' });
    try {
      const rec = await md.recoverActivityLog();
      expect(rec.complete).toBe(true);
      expect(rec.extents).toEqual([24, 25, 26, 27, 28, 29, 40]);
      expect(rec.nextNumber).toBe(31);
      // The next session continues the ring and starts from an empty log.
      const next = md.openActivityLog({ recovered: rec });
      await next.beginWrite(3 * X, 1);
      expect(await md.recoverActivityLog()).toMatchObject({ extents: [3], nextNumber: 32, complete: true });
    } finally {
      await md.close();
    }
  });

  const configs: Array<{ alExtents: number; dataBytes: number; seeds: number }> = [
    { alExtents: 7, dataBytes: 512 * MiB, seeds: 12 },
    { alExtents: 61, dataBytes: 1 * GiB, seeds: 10 },
    { alExtents: 1237, dataBytes: 8 * GiB, seeds: 4 },
  ];
  for (const { alExtents, dataBytes, seeds } of configs) {
    test(`random writes, crash, recover: al-extents ${alExtents}, ${seeds} seeds, three sessions each`, async () => {
      const path = await sparseDisk(dataBytes);
      const { layout } = await createMd({ diskPath: path, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: true, alExtents });
      const extents = Math.floor(layout.dataSizeBytes / X);
      const handle = await fsp.open(path, 'r+');
      const plain = fileMetaIo(handle, path);
      let transactions = 0;
      try {
        for (let seed = 1; seed <= seeds; seed++) {
          const r = rng(seed * 7919 + alExtents);
          let rec = await recoverActivityLog(plain, layout);
          for (let round = 0; round < 3; round++) {
            const s = session(handle, path, layout, alExtents, rec.nextNumber);
            const steps = alExtents > 100 ? 3000 + Math.floor(r() * 3000) : 200 + Math.floor(r() * 1500);
            const { inFlight, active } = await workload(s, r, steps, extents);
            transactions += s.al.stats.transactions;
            rec = await recoverActivityLog(plain, layout);
            const what = `seed ${seed} round ${round}`;
            expect(rec.complete, what).toBe(true);
            expectSuperset(rec.extents, inFlight, what);
            expectSuperset(rec.extents, active, what);
            expect(rec.extents.length).toBeLessThanOrEqual(alExtents);

            // The newest transaction torn instead: recovery falls back to the one before,
            // which covers everything active when the torn one was being written.
            if (rec.replayed > 0 && round === 1) {
              const newest = (rec.nextNumber + 2 ** 32 - 1) % 2 ** 32;
              const at = layout.alOffset + (newest % 8) * AL_TX_BYTES;
              const torn = Buffer.alloc(AL_TX_BYTES / 2, 0xa5);
              await handle.write(torn, 0, torn.length, at + AL_TX_BYTES / 2);
              const fallback = await recoverActivityLog(plain, layout);
              expect(fallback.complete, `${what} torn`).toBe(true);
              expect(fallback.damagedBlocks).toBe(1);
              expect(fallback.nextNumber).toBe(newest);
              expectSuperset(fallback.extents, s.snapshots.get(newest) ?? [], `${what} torn`);
              rec = fallback;
            }
          }
        }
      } finally {
        await handle.close();
      }
      // The ring of 8 wrapped many times over.
      expect(transactions).toBeGreaterThan(8 * 20);
    });
  }

  test('transaction numbers wrap at 2^32', async () => {
    const path = await sparseDisk(256 * MiB);
    const { layout } = await createMd({ diskPath: path, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false, alExtents: 7 });
    const handle = await fsp.open(path, 'r+');
    try {
      const io = fileMetaIo(handle, path);
      const al = new ActivityLog({ journal: metaAlJournal(io, layout), alExtents: 7, dataSizeBytes: layout.dataSizeBytes, nextNumber: 2 ** 32 - 20 });
      for (let e = 0; e < 60; e++) {
        await al.beginWrite(e * X, 1);
        al.endWrite(e * X, 1);
      }
      const rec = await recoverActivityLog(io, layout);
      expect(rec).toMatchObject({ complete: true, nextNumber: 40, extents: [53, 54, 55, 56, 57, 58, 59] });
    } finally {
      await handle.close();
    }
  });
});

describe('replay of damaged rings (pure)', () => {
  class Ring implements AlJournal {
    readonly ringBlocks = 8;
    readonly blocks = Array.from({ length: 8 }, () => Buffer.alloc(AL_TX_BYTES));
    async writeBlock(position: number, block: Buffer): Promise<void> {
      this.blocks[position] = Buffer.from(block);
    }
  }

  async function filled(alExtents: number, count: number): Promise<{ ring: Ring; al: ActivityLog }> {
    const ring = new Ring();
    const al = new ActivityLog({ journal: ring, alExtents, dataSizeBytes: 4096 * X, nextNumber: 0 });
    for (let e = 0; e < count; e++) await al.beginWrite(e * X, 1); // all stay in flight
    return { ring, al };
  }

  test('a hole behind the newest transaction: incomplete, so the caller resyncs everything', async () => {
    const { ring } = await filled(1237, 20); // two transactions make a window
    const newest = 19;
    ring.blocks[(newest - 1) % 8]!.fill(0x11, 100, 200);
    const rec = replayAlRing(ring.blocks);
    expect(rec.complete).toBe(false);
    expect(rec.damagedBlocks).toBe(1);
    expect(rec.nextNumber).toBe(20);
  });

  test('the active set is rebuilt from contexts after the reset has long left the ring', async () => {
    const { ring, al } = await filled(1237, 1237); // 1237 transactions: the reset is gone
    const rec = replayAlRing(ring.blocks);
    expect(rec.complete).toBe(true);
    expect(rec.replayed).toBe(2);
    expect(rec.extents).toEqual(al.activeExtents());
    expect(rec.extents).toHaveLength(1237);
  });

  test('blocks at the wrong ring position or garbage everywhere are not trusted', async () => {
    const { ring } = await filled(7, 3);
    const swapped = [ring.blocks[1]!, ring.blocks[0]!, ...ring.blocks.slice(2)];
    // Both misplaced blocks are ignored; with 7 slots one transaction carries the whole table.
    expect(replayAlRing(swapped)).toMatchObject({ complete: true, damagedBlocks: 2, extents: [0, 1, 2], replayed: 1 });
    const garbage = Array.from({ length: 8 }, (_, i) => Buffer.alloc(AL_TX_BYTES, i + 1));
    expect(replayAlRing(garbage)).toMatchObject({ complete: false, extents: [], damagedBlocks: 8 });
  });
});

describe('create and open refuse an activity log that cannot hold al-extents', () => {
  test('create-md with al-extents 7000 on a 32 KiB area', async () => {
    const path = await sparseDisk(256 * MiB);
    const err = await createMd({ diskPath: path, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false, alExtents: 7000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MirrorError);
    expect((err as MirrorError).code).toBe('ERR_MD_TOO_SMALL');
    expect((err as MirrorError).message).toMatch(/al-extents 7000 .*at most 6216/);
    expect((await fsp.readFile(path)).every((b) => b === 0)).toBe(true);
  });
});
