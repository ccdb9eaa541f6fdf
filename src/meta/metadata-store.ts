/**
 * Metadata on real files and block devices: create-md, open, save.
 *
 * Reading never writes: openMd with `readOnly` (dump-md) opens the devices
 * read-only, and a failed decode leaves the device untouched in any mode.
 * Every write is followed by fdatasync before the promise resolves, so a
 * resolved save() is on stable storage.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { sizeOf } from '../../native-free-io/device-size.js';
import { MirrorError, describeError, isMirrorError } from '../errors.js';
import { ActivityLog } from './activity-log.js';
import { metaAlJournal, recoverActivityLog } from './al-journal.js';
import type { AlRecovery } from './al-replay.js';
import { checkAlFits } from './al-transaction.js';
import type { Bitmap } from './bitmap.js';
import { BitmapStore } from './bitmap-store.js';
import { SUPERBLOCK_BYTES, alignDown, computeLayout, type MdLayout } from './layout.js';
import { fileMetaIo, type MetaIo } from './meta-io.js';
import { decodeSuperblock, encodeSuperblock, freshSuperblock, layoutOf, type Superblock } from './superblock.js';

/** DRBD's default; a later `adjust` rewrites it from the config. */
export const DEFAULT_AL_EXTENTS = 1237;

/** Zeroing goes in pieces of this size so a big bitmap never needs one big buffer. */
const ZERO_CHUNK_BYTES = 1024 * 1024;

export interface CreateMdOptions {
  diskPath: string;
  /** 'internal', or the path of the external meta device. */
  metaDisk: 'internal' | string;
  nodeId: number;
  /** Bitmap slots (1..31): one per peer this node may ever have. */
  maxPeers: number;
  /** Overwrite existing or corrupt metadata (never overrides a device that is too small). */
  force: boolean;
  alExtents?: number;
}

export interface OpenMdOptions {
  diskPath: string;
  metaDisk: 'internal' | string;
  /** Open the devices read-only (dump-md); save() then refuses. */
  readOnly?: boolean;
}

export interface MetaHandle {
  readonly superblock: Superblock;
  readonly layout: MdLayout;
  /** Where the metadata lives (the disk itself when internal). */
  readonly metaPath: string;
  /** Writes `next` with generation = current + 1, then fdatasync. */
  save(next: Superblock): Promise<void>;
  /**
   * Read-modify-write in queue order: `fn` sees what every earlier save or
   * update left (two changes started together never overwrite each other).
   */
  update(fn: (current: Superblock) => Superblock): Promise<void>;
  /** The bitmap stored in peer slot `slot` (0..maxPeers-1), as bitmap-store.ts reads it. */
  loadBitmap(slot: number): Promise<Bitmap>;
  /**
   * Writes the pages of `bitmap` changed since its last save to slot `slot`
   * (with `range`, only those holding that data range's bits), then
   * fdatasync. Resolves to the number of 4 KiB pages written.
   */
  saveBitmap(slot: number, bitmap: Bitmap, range?: { offset: number; length: number }): Promise<number>;
  /** Reads the activity log ring and replays it (reads only; see al-replay.ts). */
  recoverActivityLog(): Promise<AlRecovery>;
  /**
   * The activity log on this metadata, continuing the ring after
   * `recovered` (from recoverActivityLog, once its extents are marked and
   * saved in the bitmaps). Its slot count is the superblock's al-extents.
   */
  openActivityLog(opts: { recovered: AlRecovery; beforeEvict?: (extent: number) => Promise<void> | void }): ActivityLog;
  close(): Promise<void>;
}

/** The fields that fix where things are on disk; save() may not change them. */
const LAYOUT_FIELDS = [
  'version',
  'internal',
  'maxPeers',
  'deviceSizeBytes',
  'dataSizeBytes',
  'mdSizeBytes',
  'alOffset',
  'alSizeBytes',
  'bitmapOffset',
  'bitmapBytesPerPeer',
  'bitmapBytesPerBit',
] as const satisfies readonly (keyof Superblock)[];

function ioError(path: string, what: string, e: unknown): MirrorError {
  return new MirrorError('ERR_IO', `${path}: cannot ${what}: ${describeError(e)}`, {
    path,
    reason: (e as NodeJS.ErrnoException).code ?? describeError(e),
  });
}

/** Adds the path to a metadata error so the user knows which device is meant. */
function onDevice(e: unknown, path: string, hint = ''): unknown {
  if (!isMirrorError(e)) return e;
  return new MirrorError(e.code, `${path}: ${e.message}${hint}`, { ...e.details, path });
}

async function openDevice(path: string, flags: 'r' | 'r+'): Promise<FileHandle> {
  try {
    return await fsp.open(path, flags);
  } catch (e) {
    throw ioError(path, `open ${flags === 'r' ? 'for reading' : 'for writing'}`, e);
  }
}

async function deviceSize(handle: FileHandle, path: string): Promise<number> {
  try {
    return (await sizeOf(handle)).size;
  } catch (e) {
    throw ioError(path, 'find the size', e);
  }
}

async function readExactly(handle: FileHandle, path: string, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let done = 0;
  try {
    while (done < length) {
      const { bytesRead } = await handle.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) break; // past the end: the rest stays zero, which reads as "no metadata"
      done += bytesRead;
    }
  } catch (e) {
    throw ioError(path, `read ${length} bytes at ${offset}`, e);
  }
  return buf;
}

async function writeAll(handle: FileHandle, path: string, offset: number, data: Buffer): Promise<void> {
  let done = 0;
  try {
    while (done < data.length) {
      const { bytesWritten } = await handle.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  } catch (e) {
    throw ioError(path, `write ${data.length} bytes at ${offset}`, e);
  }
}

async function sync(handle: FileHandle, path: string): Promise<void> {
  try {
    await handle.datasync();
  } catch (e) {
    throw ioError(path, 'flush to stable storage', e);
  }
}

async function zeroRange(handle: FileHandle, path: string, offset: number, length: number): Promise<void> {
  const zeroes = Buffer.alloc(Math.min(length, ZERO_CHUNK_BYTES));
  for (let done = 0; done < length; done += zeroes.length) {
    await writeAll(handle, path, offset + done, zeroes.subarray(0, Math.min(zeroes.length, length - done)));
  }
}

interface Devices {
  disk: FileHandle;
  /** The same handle as `disk` when internal. */
  meta: FileHandle;
  metaPath: string;
  internal: boolean;
}

async function openDevices(diskPath: string, metaDisk: string, flags: 'r' | 'r+'): Promise<Devices> {
  const internal = metaDisk === 'internal';
  const disk = await openDevice(diskPath, flags);
  if (internal) return { disk, meta: disk, metaPath: diskPath, internal };
  try {
    return { disk, meta: await openDevice(metaDisk, flags), metaPath: metaDisk, internal };
  } catch (e) {
    await disk.close();
    throw e;
  }
}

async function closeDevices(d: Devices): Promise<void> {
  await d.disk.close();
  if (d.meta !== d.disk) await d.meta.close();
}

/** Where the superblock of this placement is, from the device size alone. */
function superblockOffsetFor(internal: boolean, metaSize: number): number {
  return internal ? alignDown(metaSize) - SUPERBLOCK_BYTES : 0;
}

/**
 * Writes fresh metadata: flags clear (Inconsistent) and current UUID 0 (no
 * data generation yet), activity log and bitmaps zeroed.
 */
export async function createMd(opts: CreateMdOptions): Promise<{ superblock: Superblock; layout: MdLayout }> {
  const devices = await openDevices(opts.diskPath, opts.metaDisk, 'r+');
  try {
    const { internal, meta, metaPath } = devices;
    const diskSize = await deviceSize(devices.disk, opts.diskPath);
    const metaSize = internal ? diskSize : await deviceSize(meta, metaPath);
    let layout: MdLayout;
    try {
      layout = computeLayout({ deviceSizeBytes: diskSize, metaDeviceSizeBytes: internal ? undefined : metaSize, internal, maxPeers: opts.maxPeers });
      checkAlFits(opts.alExtents ?? DEFAULT_AL_EXTENTS, layout.alSizeBytes);
    } catch (e) {
      throw onDevice(e, internal ? opts.diskPath : `${opts.diskPath} with meta device ${metaPath}`);
    }

    // Whatever is there now decides whether --force is needed.
    const existing = await readExactly(meta, metaPath, layout.superblockOffset, SUPERBLOCK_BYTES);
    const found = existing.some((b) => b !== 0);
    if (!opts.force) {
      try {
        decodeSuperblock(existing, layout.superblockOffset);
        throw new MirrorError('ERR_MD_EXISTS', `${metaPath}: valid metadata already exists; create-md --force overwrites it (and forgets the data generation)`, {
          path: metaPath,
          offset: layout.superblockOffset,
        });
      } catch (e) {
        if (isMirrorError(e) && e.code === 'ERR_MD_CORRUPT') throw onDevice(e, metaPath, '; create-md --force overwrites it');
        if (!(isMirrorError(e) && e.code === 'ERR_MD_MISSING')) throw e;
      }
    }

    const superblock = freshSuperblock({
      layout,
      internal,
      deviceSizeBytes: diskSize,
      nodeId: opts.nodeId,
      maxPeers: opts.maxPeers,
      alExtents: opts.alExtents ?? DEFAULT_AL_EXTENTS,
    });
    const image = encodeSuperblock(superblock, layout.superblockOffset);
    // An old superblock goes first, so a crash half-way never leaves it pointing at zeroed areas.
    if (found) {
      await zeroRange(meta, metaPath, layout.superblockOffset, SUPERBLOCK_BYTES);
      await sync(meta, metaPath);
    }
    await zeroRange(meta, metaPath, layout.alOffset, layout.alSizeBytes);
    await zeroRange(meta, metaPath, layout.bitmapOffset, layout.bitmapBytes);
    await sync(meta, metaPath);
    await writeAll(meta, metaPath, layout.superblockOffset, image);
    await sync(meta, metaPath);
    return { superblock, layout };
  } finally {
    await closeDevices(devices);
  }
}

/** Opens existing metadata; ERR_MD_MISSING tells the user to run create-md. */
export async function openMd(opts: OpenMdOptions): Promise<MetaHandle> {
  const devices = await openDevices(opts.diskPath, opts.metaDisk, opts.readOnly === true ? 'r' : 'r+');
  try {
    const { internal, meta, metaPath } = devices;
    const diskSize = await deviceSize(devices.disk, opts.diskPath);
    const metaSize = internal ? diskSize : await deviceSize(meta, metaPath);
    const offset = superblockOffsetFor(internal, metaSize);
    if (offset < 0) {
      throw new MirrorError('ERR_MD_MISSING', `${metaPath}: no mirrorbd metadata (the device has only ${metaSize} bytes); run \`mirrorbd create-md RES\``, { path: metaPath });
    }
    let superblock: Superblock;
    try {
      superblock = decodeSuperblock(await readExactly(meta, metaPath, offset, SUPERBLOCK_BYTES), offset);
    } catch (e) {
      const hint = isMirrorError(e) && e.code === 'ERR_MD_MISSING' ? '; run `mirrorbd create-md RES` to create it' : '';
      throw onDevice(e, metaPath, hint);
    }
    if (superblock.internal !== internal) {
      throw new MirrorError('ERR_MD_CORRUPT', `${metaPath}: the metadata says ${superblock.internal ? 'internal' : 'external'} but the config says meta-disk ${opts.metaDisk}`, {
        path: metaPath,
        offset,
      });
    }
    if (opts.readOnly !== true) {
      // dump-md may still look at it; attaching needs an activity log that works.
      try {
        checkAlFits(superblock.alExtents, superblock.alSizeBytes);
      } catch (e) {
        throw onDevice(e, metaPath);
      }
    }
    if (diskSize < superblock.dataSizeBytes) {
      throw new MirrorError('ERR_MD_CORRUPT', `${opts.diskPath}: the disk has ${diskSize} bytes, less than the ${superblock.dataSizeBytes} bytes of data the metadata records`, {
        path: opts.diskPath,
        offset,
      });
    }
    return new OpenMeta(devices, superblock, opts.readOnly === true);
  } catch (e) {
    await closeDevices(devices);
    throw e;
  }
}

class OpenMeta implements MetaHandle {
  readonly layout: MdLayout;
  readonly metaPath: string;
  #superblock: Superblock;
  #closed = false;
  /** Saves run one after another; each waits for the previous write and sync. */
  #queue: Promise<void> = Promise.resolve();
  /** I/O on the metadata device for bitmaps and the activity log; refuses writes when closed or read-only. */
  readonly #io: MetaIo;
  readonly #bitmaps: BitmapStore;

  constructor(
    private readonly devices: Devices,
    superblock: Superblock,
    private readonly readOnly: boolean,
  ) {
    this.#superblock = superblock;
    this.layout = layoutOf(superblock);
    this.metaPath = devices.metaPath;
    const raw = fileMetaIo(devices.meta, devices.metaPath);
    this.#io = {
      read: async (offset, length) => {
        this.#checkOpen();
        return raw.read(offset, length);
      },
      write: async (offset, data) => {
        this.#checkWritable();
        return raw.write(offset, data);
      },
      sync: async () => {
        this.#checkWritable();
        return raw.sync();
      },
    };
    this.#bitmaps = new BitmapStore(this.#io, this.layout, superblock.maxPeers);
  }

  loadBitmap(slot: number): Promise<Bitmap> {
    return this.#bitmaps.load(slot);
  }

  saveBitmap(slot: number, bitmap: Bitmap, range?: { offset: number; length: number }): Promise<number> {
    return this.#bitmaps.save(slot, bitmap, range);
  }

  recoverActivityLog(): Promise<AlRecovery> {
    return recoverActivityLog(this.#io, this.layout);
  }

  openActivityLog(opts: { recovered: AlRecovery; beforeEvict?: (extent: number) => Promise<void> | void }): ActivityLog {
    this.#checkWritable();
    return new ActivityLog({
      journal: metaAlJournal(this.#io, this.layout),
      alExtents: this.#superblock.alExtents,
      dataSizeBytes: this.layout.dataSizeBytes,
      nextNumber: opts.recovered.nextNumber,
      beforeEvict: opts.beforeEvict,
    });
  }

  #checkOpen(): void {
    if (this.#closed) throw new MirrorError('ERR_INTERNAL', `${this.metaPath}: metadata handle is closed`);
  }

  #checkWritable(): void {
    this.#checkOpen();
    if (this.readOnly) throw new MirrorError('ERR_INTERNAL', `${this.metaPath}: metadata was opened read-only`);
  }

  get superblock(): Superblock {
    return this.#superblock;
  }

  save(next: Superblock): Promise<void> {
    return this.update(() => next);
  }

  update(fn: (current: Superblock) => Superblock): Promise<void> {
    const run = this.#queue.then(() => this.#write(fn(this.#superblock)));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #write(next: Superblock): Promise<void> {
    if (this.#closed) throw new MirrorError('ERR_INTERNAL', `${this.metaPath}: metadata handle is closed`);
    if (this.readOnly) throw new MirrorError('ERR_INTERNAL', `${this.metaPath}: metadata was opened read-only`);
    const current = this.#superblock;
    for (const field of LAYOUT_FIELDS) {
      if (next[field] !== current[field]) {
        throw new MirrorError('ERR_INTERNAL', `${this.metaPath}: save() may not change ${field} (${String(current[field])} -> ${String(next[field])})`);
      }
    }
    const stored: Superblock = { ...next, historyUuids: [...next.historyUuids], peers: next.peers.map((p) => ({ ...p })), generation: current.generation + 1 };
    const image = encodeSuperblock(stored, this.layout.superblockOffset);
    await writeAll(this.devices.meta, this.metaPath, this.layout.superblockOffset, image);
    await sync(this.devices.meta, this.metaPath);
    this.#superblock = stored;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#queue;
    this.#closed = true;
    await closeDevices(this.devices);
  }
}
