import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { MirrorError } from '../../src/errors.js';
import { MD_FLAGS, PEER_FLAGS } from '../../src/meta/flags.js';
import { createMd, formatMd, openMd } from '../../src/meta/index.js';
import { SB_FIELDS } from '../../src/meta/superblock.js';

const MiB = 1024 * 1024;
let dir: string;

beforeEach(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'mirrorbd-meta-'));
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function image(name: string, size: number, fill?: number): Promise<string> {
  const p = join(dir, name);
  if (fill === undefined) {
    await fsp.writeFile(p, '');
    await fsp.truncate(p, size);
  } else {
    await fsp.writeFile(p, Buffer.alloc(size, fill));
  }
  return p;
}

async function hash(p: string): Promise<string> {
  return createHash('sha256').update(await fsp.readFile(p)).digest('hex');
}

async function code(p: Promise<unknown>): Promise<MirrorError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(MirrorError);
    return e as MirrorError;
  }
  throw new Error('expected a MirrorError');
}

describe('create-md, internal', () => {
  test('writes an Inconsistent superblock with no generation and zeroes the AL and bitmap, not the data', async () => {
    const disk = await image('d.img', 16 * MiB, 0xaa);
    const { superblock, layout } = await createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 1, maxPeers: 2, force: false });
    expect(superblock.flags).toBe(0);
    expect(superblock.currentUuid).toBe(0n);
    expect(superblock.nodeId).toBe(1);
    const bytes = await fsp.readFile(disk);
    expect(bytes.subarray(layout.superblockOffset, layout.superblockOffset + 8).toString()).toBe('MIRRORBD');
    expect(bytes.subarray(layout.alOffset, layout.superblockOffset).every((b) => b === 0)).toBe(true);
    expect(bytes.subarray(0, layout.dataSizeBytes).every((b) => b === 0xaa)).toBe(true);
    expect(bytes.length).toBe(16 * MiB);

    const md = await openMd({ diskPath: disk, metaDisk: 'internal' });
    try {
      expect(md.superblock).toEqual(superblock);
      expect(md.layout).toEqual(layout);
    } finally {
      await md.close();
    }
  });

  test('refuses existing metadata without --force, overwrites it with --force', async () => {
    const disk = await image('d.img', 8 * MiB);
    await createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false });
    const md = await openMd({ diskPath: disk, metaDisk: 'internal' });
    await md.save({ ...md.superblock, currentUuid: 77n, flags: MD_FLAGS.CONSISTENT });
    await md.close();
    const before = await hash(disk);
    const e = await code(createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false }));
    expect(e.code).toBe('ERR_MD_EXISTS');
    expect(e.message).toContain(disk);
    expect(e.message).toContain('--force');
    expect(await hash(disk)).toBe(before);

    const { superblock } = await createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: true });
    expect(superblock.currentUuid).toBe(0n);
    const again = await openMd({ diskPath: disk, metaDisk: 'internal' });
    expect(again.superblock.currentUuid).toBe(0n);
    await again.close();
  });

  test('refuses corrupt metadata without --force, suggesting it; --force overwrites', async () => {
    const disk = await image('d.img', 8 * MiB);
    const { layout } = await createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false });
    const fh = await fsp.open(disk, 'r+');
    await fh.write(Buffer.from([0xff]), 0, 1, layout.superblockOffset + SB_FIELDS.generation);
    await fh.close();
    const before = await hash(disk);
    const e = await code(createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false }));
    expect(e.code).toBe('ERR_MD_CORRUPT');
    expect(e.message).toContain('--force');
    expect(await hash(disk)).toBe(before);
    await createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: true });
    await (await openMd({ diskPath: disk, metaDisk: 'internal' })).close();
  });

  test('a disk too small is refused even with --force, and left untouched', async () => {
    const disk = await image('small.img', MiB, 0x11);
    const before = await hash(disk);
    for (const force of [false, true]) {
      const e = await code(createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force }));
      expect(e.code).toBe('ERR_MD_TOO_SMALL');
      expect(e.message).toMatch(/\d+ bytes are needed/);
    }
    expect(await hash(disk)).toBe(before);
  });

  test('a missing disk is an I/O error naming the path', async () => {
    const e = await code(createMd({ diskPath: join(dir, 'nope.img'), metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false }));
    expect(e.code).toBe('ERR_IO');
    expect(e.message).toContain('nope.img');
    expect(e.message).toContain('ENOENT');
  });
});

describe('create-md, external', () => {
  test('metadata at offset 0 of the meta file; the data disk is not written', async () => {
    const disk = await image('d.img', 16 * MiB, 0x33);
    const meta = await image('m.img', MiB, 0x44);
    const diskHash = await hash(disk);
    const { layout } = await createMd({ diskPath: disk, metaDisk: meta, nodeId: 3, maxPeers: 2, force: false });
    expect(layout.superblockOffset).toBe(0);
    expect(layout.dataSizeBytes).toBe(16 * MiB);
    expect(await hash(disk)).toBe(diskHash);
    const bytes = await fsp.readFile(meta);
    expect(bytes.subarray(0, 8).toString()).toBe('MIRRORBD');
    expect(bytes.subarray(layout.alOffset, layout.bitmapOffset + layout.bitmapBytes).every((b) => b === 0)).toBe(true);
    // beyond the metadata the meta file is untouched
    expect(bytes.subarray(layout.mdSizeBytes).every((b) => b === 0x44)).toBe(true);

    const md = await openMd({ diskPath: disk, metaDisk: meta });
    expect(md.superblock.internal).toBe(false);
    await md.close();
    expect((await code(openMd({ diskPath: disk, metaDisk: 'internal' }))).code).toBe('ERR_MD_MISSING');
  });

  test('a meta file too small is refused', async () => {
    const disk = await image('d.img', 16 * MiB);
    const meta = await image('m.img', 8192);
    const e = await code(createMd({ diskPath: disk, metaDisk: meta, nodeId: 0, maxPeers: 1, force: true }));
    expect(e.code).toBe('ERR_MD_TOO_SMALL');
    expect(e.message).toContain('external meta device');
  });
});

describe('openMd and save', () => {
  test('no metadata: ERR_MD_MISSING telling the user to run create-md', async () => {
    const disk = await image('d.img', 8 * MiB);
    const e = await code(openMd({ diskPath: disk, metaDisk: 'internal' }));
    expect(e.code).toBe('ERR_MD_MISSING');
    expect(e.message).toContain('mirrorbd create-md');
    expect(e.message).toContain(disk);
  });

  test('save writes, bumps the generation, and survives reopening', async () => {
    const disk = await image('d.img', 8 * MiB);
    await createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 0, maxPeers: 2, force: false });
    const md = await openMd({ diskPath: disk, metaDisk: 'internal' });
    const g = md.superblock.generation;
    const next = {
      ...md.superblock,
      flags: MD_FLAGS.CONSISTENT | MD_FLAGS.WAS_UP_TO_DATE | MD_FLAGS.PRIMARY_IND,
      currentUuid: 0x1234n,
      historyUuids: [0x99n, 0n] as [bigint, bigint],
      peers: [{ nodeId: 1, flags: PEER_FLAGS.PEER_OUTDATED, bitmapUuid: 0x55n }],
    };
    await Promise.all([md.save(next), md.save({ ...next, currentUuid: 0x5678n })]);
    expect(md.superblock.generation).toBe(g + 2);
    await md.close();
    const again = await openMd({ diskPath: disk, metaDisk: 'internal', readOnly: true });
    expect(again.superblock).toEqual({ ...next, currentUuid: 0x5678n, generation: g + 2 });
    await again.close();
  });

  test('save refuses to move the layout or write a read-only handle', async () => {
    const disk = await image('d.img', 8 * MiB);
    await createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false });
    const md = await openMd({ diskPath: disk, metaDisk: 'internal' });
    expect((await code(md.save({ ...md.superblock, dataSizeBytes: 4096 }))).code).toBe('ERR_INTERNAL');
    await md.save({ ...md.superblock, currentUuid: 5n }); // the queue goes on after a refusal
    await md.close();
    const ro = await openMd({ diskPath: disk, metaDisk: 'internal', readOnly: true });
    expect((await code(ro.save(ro.superblock))).code).toBe('ERR_INTERNAL');
    await ro.close();
  });

  test('reading corrupt metadata reports the offset and writes nothing', async () => {
    const disk = await image('d.img', 8 * MiB);
    const { layout } = await createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 0, maxPeers: 1, force: false });
    const fh = await fsp.open(disk, 'r+');
    await fh.write(Buffer.from([0x7f]), 0, 1, layout.superblockOffset + SB_FIELDS.nodeId);
    await fh.close();
    const before = await hash(disk);
    for (const readOnly of [true, false]) {
      const e = await code(openMd({ diskPath: disk, metaDisk: 'internal', readOnly }));
      expect(e.code).toBe('ERR_MD_CORRUPT');
      expect(e.details.offset).toBe(layout.superblockOffset + SB_FIELDS.crc);
      expect(e.message).toContain(disk);
    }
    expect(await hash(disk)).toBe(before);
  });

  test('formatMd shows every field readably', async () => {
    const disk = await image('d.img', 8 * MiB);
    await createMd({ diskPath: disk, metaDisk: 'internal', nodeId: 4, maxPeers: 1, force: false });
    const md = await openMd({ diskPath: disk, metaDisk: 'internal' });
    await md.save({ ...md.superblock, flags: MD_FLAGS.CONSISTENT, currentUuid: 0xabcdefn, peers: [{ nodeId: 1, flags: PEER_FLAGS.PEER_FULL_SYNC, bitmapUuid: 1n }] });
    const text = formatMd(md.superblock, md.layout);
    await md.close();
    expect(text).toMatch(/^node-id +4$/m);
    expect(text).toMatch(/^current-uuid +0000000000ABCDEF$/m);
    expect(text).toMatch(/^flags +CONSISTENT \(0x1\)$/m);
    expect(text).toMatch(/^data-state +Outdated$/m);
    expect(text).toMatch(/^device-size +8388608 bytes \(8 MiB\)$/m);
    expect(text).toMatch(/^peer-slot 0 +node-id 1 bitmap-uuid 0000000000000001 flags PEER_FULL_SYNC \(0x4\)/m);
    expect(text).toMatch(/^al-extents +1237$/m);
  });
});
