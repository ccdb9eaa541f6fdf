import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { MirrorError } from '../../src/errors.js';
import { BITMAP_BLOCK_BYTES, BITMAP_PAGE_BITS, BITMAP_PAGE_BYTES, Bitmap } from '../../src/meta/bitmap.js';
import { BitmapStore } from '../../src/meta/bitmap-store.js';
import { createMd, openMd } from '../../src/meta/index.js';
import { fileMetaIo, type MetaIo } from '../../src/meta/meta-io.js';

const MiB = 1024 * 1024;
const B = BITMAP_BLOCK_BYTES;
/** Data one bitmap page covers. */
const PAGE_DATA = BITMAP_PAGE_BITS * B;
let dir: string;

beforeEach(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'mirrorbd-bm-'));
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function disk(size: number): Promise<string> {
  const p = join(dir, 'd.img');
  await fsp.writeFile(p, '');
  await fsp.truncate(p, size);
  return p;
}

interface Counted extends MetaIo {
  writes: Array<{ offset: number; length: number }>;
  syncs: number;
  failNextWrite: boolean;
}

function counting(io: MetaIo): Counted {
  const c: Counted = {
    writes: [],
    syncs: 0,
    failNextWrite: false,
    read: (o, l) => io.read(o, l),
    async write(offset, data) {
      if (c.failNextWrite) {
        c.failNextWrite = false;
        throw new Error('injected write failure');
      }
      c.writes.push({ offset, length: data.length });
      await io.write(offset, data);
    },
    async sync() {
      c.syncs++;
      await io.sync();
    },
  };
  return c;
}

describe('BitmapStore on a real file', () => {
  test('round trip per slot; only dirty pages are written, then one sync', async () => {
    // 4 pages of bitmap per slot (512 MiB of data) and 2 slots, internal.
    const path = await disk(4 * PAGE_DATA + 2 * MiB);
    const { layout } = await createMd({ diskPath: path, metaDisk: 'internal', nodeId: 0, maxPeers: 2, force: false });
    const handle = await fsp.open(path, 'r+');
    try {
      const io = counting(fileMetaIo(handle, path));
      const store = new BitmapStore(io, layout, 2);
      const bm = await store.load(1);
      expect(bm.countSet()).toBe(0);
      expect(bm.dataSizeBytes).toBe(layout.dataSizeBytes);

      bm.setRange(5 * B, 3 * B); // page 0
      bm.setRange(2 * PAGE_DATA + 7 * B, 1); // page 2
      expect(await store.save(1, bm)).toBe(2);
      expect(io.writes).toEqual([
        { offset: layout.bitmapOffset + layout.bitmapBytesPerPeer, length: BITMAP_PAGE_BYTES },
        { offset: layout.bitmapOffset + layout.bitmapBytesPerPeer + 2 * BITMAP_PAGE_BYTES, length: BITMAP_PAGE_BYTES },
      ]);
      expect(io.syncs).toBe(1);

      // Nothing changed: nothing written, not even a sync.
      expect(await store.save(1, bm)).toBe(0);
      expect(io.writes).toHaveLength(2);
      expect(io.syncs).toBe(1);

      const back = await store.load(1);
      expect(back.toBuffer().equals(bm.toBuffer())).toBe(true);
      expect(back.countSet()).toBe(4);
      expect((await store.load(0)).countSet()).toBe(0);

      // The on-disk bytes follow the documented word layout: block 5 is bit 5 of the first big-endian u64.
      const raw = await fsp.readFile(path);
      const slot1 = layout.bitmapOffset + layout.bitmapBytesPerPeer;
      expect(raw.readBigUInt64BE(slot1)).toBe(0b111n << 5n);
      // Slot 0 untouched.
      expect(raw.subarray(layout.bitmapOffset, slot1).every((x) => x === 0)).toBe(true);

      // A range save writes only the pages of that range.
      bm.setRange(0, 1);
      bm.setRange(3 * PAGE_DATA, 1);
      expect(await store.save(1, bm, { offset: 3 * PAGE_DATA, length: 4 * MiB })).toBe(1);
      expect(io.writes.at(-1)!.offset).toBe(slot1 + 3 * BITMAP_PAGE_BYTES);
      expect(bm.dirtyPages()).toEqual([0]);

      expect(await store.saveAll(0, bm)).toBe(bm.pageCount);
      expect((await store.load(0)).toBuffer().equals(bm.toBuffer())).toBe(true);
      expect(() => store.slotOffset(2)).toThrow(RangeError);
    } finally {
      await handle.close();
    }
  });

  test('a failed write leaves the pages dirty for the next save', async () => {
    const path = await disk(8 * MiB);
    const { layout } = await createMd({ diskPath: path, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false });
    const handle = await fsp.open(path, 'r+');
    try {
      const io = counting(fileMetaIo(handle, path));
      const store = new BitmapStore(io, layout, 1);
      const bm = new Bitmap(layout.dataSizeBytes);
      bm.setRange(0, 1);
      io.failNextWrite = true;
      await expect(store.save(0, bm)).rejects.toThrow(/injected/);
      expect(bm.dirtyPages()).toEqual([0]);
      expect(await store.save(0, bm)).toBe(1);
      expect((await store.load(0)).countSet()).toBe(1);
      await expect(store.save(0, new Bitmap(MiB))).rejects.toThrow(RangeError);
    } finally {
      await handle.close();
    }
  });
});

describe('through the MetaHandle', () => {
  test('external metadata: loadBitmap / saveBitmap write the meta device, not the data disk', async () => {
    const data = await disk(64 * MiB);
    const meta = join(dir, 'meta.img');
    await fsp.writeFile(meta, '');
    await fsp.truncate(meta, 1 * MiB);
    await createMd({ diskPath: data, metaDisk: meta, nodeId: 0, maxPeers: 3, force: false });
    const md = await openMd({ diskPath: data, metaDisk: meta });
    try {
      const bm = await md.loadBitmap(2);
      bm.setRange(60 * MiB, 4 * MiB);
      expect(await md.saveBitmap(2, bm)).toBe(1);
      expect((await md.loadBitmap(2)).countSet()).toBe(1024);
      expect((await md.loadBitmap(1)).countSet()).toBe(0);
      await expect(md.loadBitmap(3)).rejects.toThrow(RangeError);
    } finally {
      await md.close();
    }
    expect((await fsp.readFile(data)).every((x) => x === 0)).toBe(true);
    const md2 = await openMd({ diskPath: data, metaDisk: meta, readOnly: true });
    try {
      expect((await md2.loadBitmap(2)).countSet()).toBe(1024);
      const bm = await md2.loadBitmap(0);
      bm.setAll();
      await expect(md2.saveBitmap(0, bm)).rejects.toBeInstanceOf(MirrorError);
    } finally {
      await md2.close();
    }
    await expect(md2.loadBitmap(0)).rejects.toThrow(/closed/);
  });
});
