/**
 * A BlockStore over a regular file or a block device, using only node:fs.
 *
 * One file descriptor, positional reads and writes (pread/pwrite through
 * libuv's thread pool), fdatasync for flush. At most `maxInFlight` requests
 * are at the fs layer at once; the rest wait in arrival order, so a burst of
 * client requests turns into backpressure instead of an unbounded libuv queue.
 *
 * What Node cannot do without a native addon, this store says it does not do:
 * no hole punching (trim is a successful no-op, canTrim=false), no
 * SEEK_DATA/SEEK_HOLE (everything is reported as allocated data,
 * knowsAllocation=false), no BLKZEROOUT (writeZeroes writes zero buffers,
 * canFastZero=false).
 */
import fs, { promises as fsp } from 'node:fs';
import {
  BlockStoreError,
  type BlockStore,
  type BlockStoreCapabilities,
  type ByteRange,
  type Extent,
  type WriteZeroesOptions,
} from './block-store.js';
import { sizeOf } from './device-size.js';
import { IoLimiter } from './io-limiter.js';
import { nodePositionalIo, type PositionalIo } from './positional-io.js';
import { checkRange, checkReadBuffer, isByteCount } from './range-check.js';
import { checkRuns, checkWriteRuns, piecesFrom, piecesLength, piecesOfRuns, settleAll, writePieces } from './scattered.js';
import { ScatteredWorker, type WorkerFailure } from './scattered-worker.js';

export const DEFAULT_MAX_IN_FLIGHT = 64;

/**
 * The largest single pread/pwrite. Bigger requests are split so that one huge
 * request neither holds a libuv thread for long nor needs a kernel bounce of
 * unbounded size; 8 MiB is far past where per-call overhead matters.
 */
export const MAX_CHUNK_BYTES = 8 * 1024 * 1024;

export interface FileStoreOptions {
  /** Open O_RDONLY; writes then fail with the system's EBADF. */
  readOnly?: boolean;
  /** Requests outstanding at the fs layer at most (default 64). */
  maxInFlight?: number;
  /**
   * Expose only [0, sizeLimitBytes) of the file or device, e.g. when internal
   * metadata lives past it. Must not exceed the size found at open.
   */
  sizeLimitBytes?: number;
  /** Replaces the system calls, for fault injection and instrumentation. */
  io?: PositionalIo;
}

/**
 * Shared source for writeZeroes in every FileStore of the process: allocated
 * once on first use, only ever read from (pwrite copies out of it), so
 * concurrent writers can share it safely.
 */
let sharedZeroes: Buffer | undefined;
function zeroBuffer(): Buffer {
  sharedZeroes ??= Buffer.alloc(MAX_CHUNK_BYTES);
  return sharedZeroes;
}

export class FileStore implements BlockStore {
  readonly path: string;
  readonly size: number;
  /** Size of the whole file or device at open, before sizeLimitBytes. */
  readonly deviceSizeBytes: number;
  readonly isBlockDevice: boolean;
  readonly readOnly: boolean;
  readonly capabilities: BlockStoreCapabilities;

  private readonly fd: number;
  private readonly io: PositionalIo;
  private readonly limiter: IoLimiter;
  /** Batches of scattered runs as one job each; null with an injected PositionalIo (its calls are what is tested). */
  private readonly scattered: ScatteredWorker | null;
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(init: {
    path: string;
    fd: number;
    sizeBytes: number;
    deviceSizeBytes: number;
    isBlockDevice: boolean;
    readOnly: boolean;
    rotational: boolean;
    maxInFlight: number;
    io: PositionalIo;
  }) {
    this.path = init.path;
    this.fd = init.fd;
    this.size = init.sizeBytes;
    this.deviceSizeBytes = init.deviceSizeBytes;
    this.isBlockDevice = init.isBlockDevice;
    this.readOnly = init.readOnly;
    this.io = init.io;
    this.limiter = new IoLimiter(init.maxInFlight);
    this.scattered = init.io === nodePositionalIo ? new ScatteredWorker(init.fd, init.isBlockDevice) : null;
    this.capabilities = Object.freeze({
      canTrim: false,
      canFastZero: false,
      knowsAllocation: false,
      rotational: init.rotational,
    });
  }

  /** Opens `path` (a regular file or a block device). Failures are BlockStoreErrors with op 'open'. */
  static async open(path: string, options: FileStoreOptions = {}): Promise<FileStore> {
    const readOnly = options.readOnly ?? false;
    const maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
    const limit = options.sizeLimitBytes;
    if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) {
      throw new BlockStoreError('EINVAL', 'open', 0, 0, `${path}: maxInFlight must be a positive integer, got ${maxInFlight}`);
    }
    if (limit !== undefined && !isByteCount(limit)) {
      throw new BlockStoreError('EINVAL', 'open', 0, 0, `${path}: sizeLimitBytes must be a non-negative integer, got ${limit}`);
    }

    let fd: number;
    try {
      fd = await openFd(path, readOnly ? 'r' : 'r+');
    } catch (e) {
      throw fsFailure(e, 'open', 0, 0, path);
    }
    try {
      const sized = await sizeOf(fd);
      if (limit !== undefined && limit > sized.size) {
        throw new BlockStoreError('EINVAL', 'open', 0, limit, `${path}: sizeLimitBytes ${limit} exceeds its ${sized.size} bytes`);
      }
      const rotational = sized.sysfsDir !== undefined ? await readRotational(sized.sysfsDir) : false;
      return new FileStore({
        path,
        fd,
        sizeBytes: limit ?? sized.size,
        deviceSizeBytes: sized.size,
        isBlockDevice: sized.isBlockDevice,
        readOnly,
        rotational,
        maxInFlight,
        io: options.io ?? nodePositionalIo,
      });
    } catch (e) {
      await closeFd(fd).catch(() => undefined);
      throw fsFailure(e, 'open', 0, 0, path);
    }
  }

  /** Requests at the fs layer now (never more than maxInFlight). */
  get inFlight(): number {
    return this.limiter.inFlight;
  }

  /** Requests waiting for a slot. */
  get queued(): number {
    return this.limiter.queued;
  }

  get maxInFlight(): number {
    return this.limiter.maxInFlight;
  }

  /*
   * read, write and writev are plain functions over the fs promise rather
   * than async functions: a 4 KiB request from the page cache costs a few
   * microseconds, and each async layer adds a promise and a microtask hop.
   * A request holds its limiter slot from its first system call until its
   * promise settles; the slow paths (split, short or failed calls) are async.
   */

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    try {
      this.ensureOpen('read', offset, length);
      checkRange('read', offset, length, this.size, 'EINVAL');
      checkReadBuffer(offset, length, into);
    } catch (e) {
      return Promise.reject(e);
    }
    // allocUnsafe is fine: every byte is either read or zero-filled below.
    const buffer = into ?? Buffer.allocUnsafe(length);
    if (length === 0) return Promise.resolve(buffer);
    if (this.limiter.tryAcquire()) return this.readHeld(buffer, offset, length);
    return this.limiter.acquire().then(() => this.readHeld(buffer, offset, length));
  }

  /** read() with its slot held; releases it when settled. */
  private readHeld(buffer: Buffer, offset: number, length: number): Promise<Buffer> {
    // The common case is one call that moves everything; only a split or
    // short request pays for the loop in readRest.
    let first: Promise<number>;
    try {
      first = this.io.read(this.fd, buffer, 0, Math.min(length, MAX_CHUNK_BYTES), offset);
    } catch (e) {
      first = Promise.reject(e);
    }
    return first.then(
      (got) => {
        if (got === length) {
          this.limiter.release();
          return buffer;
        }
        return this.settle(this.readRest(buffer, offset, length, got), 'read', offset, length).then(() => buffer);
      },
      (e: unknown) => this.failHeld(e, 'read', offset, length),
    );
  }

  write(offset: number, data: Buffer): Promise<void> {
    const length = data instanceof Uint8Array ? data.length : NaN;
    try {
      this.ensureOpen('write', offset, length);
      checkRange('write', offset, length, this.size, 'ENOSPC');
    } catch (e) {
      return Promise.reject(e);
    }
    if (length === 0) return Promise.resolve();
    if (this.limiter.tryAcquire()) return this.writeHeld(data, offset, length);
    return this.limiter.acquire().then(() => this.writeHeld(data, offset, length));
  }

  /** write() with its slot held; releases it when settled. */
  private writeHeld(data: Buffer, offset: number, length: number): Promise<void> {
    let first: Promise<number>;
    try {
      first = this.io.write(this.fd, data, 0, Math.min(length, MAX_CHUNK_BYTES), offset);
    } catch (e) {
      first = Promise.reject(e);
    }
    return first.then(
      (put) => {
        if (put === length) {
          this.limiter.release();
          return;
        }
        return this.settle(this.writeFully(data, length, offset, put), 'write', offset, length);
      },
      (e: unknown) => this.failHeld(e, 'write', offset, length),
    );
  }

  /**
   * The parts, in order, as one range from `offset`: one pwritev through
   * the fs layer (one thread-pool call however many parts), or part after
   * part when the PositionalIo has no writev.
   */
  writev(offset: number, parts: readonly Buffer[]): Promise<void> {
    let length = 0;
    for (const p of parts) length += p instanceof Uint8Array ? p.length : NaN;
    try {
      this.ensureOpen('write', offset, length);
      checkRange('write', offset, length, this.size, 'ENOSPC');
    } catch (e) {
      return Promise.reject(e);
    }
    if (length === 0) return Promise.resolve();
    if (this.limiter.tryAcquire()) return this.writevHeld(parts, offset, length);
    return this.limiter.acquire().then(() => this.writevHeld(parts, offset, length));
  }

  private writevHeld(parts: readonly Buffer[], offset: number, length: number): Promise<void> {
    const io = this.io;
    if (io.writev === undefined) return this.settle(this.writePartsFrom(parts, offset, 0), 'write', offset, length);
    // A list longer than the export's payload limit is no concern here:
    // libuv splits lists beyond IOV_MAX and continues short writes.
    let all: Promise<number>;
    try {
      all = io.writev(this.fd, parts, offset);
    } catch (e) {
      all = Promise.reject(e);
    }
    return all.then(
      (put) => {
        if (put === length) {
          this.limiter.release();
          return;
        }
        // Short: carry on part by part from where it stopped.
        return this.settle(this.writePartsFrom(parts, offset, put), 'write', offset, length);
      },
      (e: unknown) => this.failHeld(e, 'write', offset, length),
    );
  }

  /**
   * One pwritev on the calling thread (BlockStore.writeNow): a 4 KiB write
   * into the page cache takes a few microseconds, its round trip through
   * the thread pool several times that. False where the PositionalIo has
   * no synchronous call (an injected one may not), and while any other
   * request of this store is in progress: a disk that hangs shows first as
   * a request that does not come back (a flush, usually), and a write on
   * the calling thread must not be the one that finds out. It holds no
   * limiter slot: nothing else runs until it returns.
   */
  writeNow(offset: number, parts: readonly Buffer[]): boolean {
    const writevSync = this.io.writevSync;
    if (writevSync === undefined || this.limiter.inFlight > 0) return false;
    const length = piecesLength(parts);
    this.ensureOpen('write', offset, length);
    checkRange('write', offset, length, this.size, 'ENOSPC');
    try {
      // Short writes (a signal, a full disk) continue with what is left.
      for (let put = 0; put < length; ) {
        const n = writevSync(this.fd, put === 0 ? parts : piecesFrom(parts, put), offset + put);
        if (n <= 0) throw new BlockStoreError('EIO', 'write', offset, length, `${this.path}: no progress writing at ${offset + put}`);
        put += n;
      }
    } catch (e) {
      throw fsFailure(e, 'write', offset, length, this.path);
    }
    return true;
  }

  /** Batches of scattered runs go to the worker now (it was asked for and is online). */
  get runsInWorker(): boolean {
    return this.scattered?.ready ?? false;
  }

  /**
   * Batches of scattered runs are likely from now on (a resync starts):
   * starts the worker that takes each batch as one job, in the background.
   */
  prepareRuns(): void {
    if (!this.closed) this.scattered?.start();
  }

  /**
   * One job for the whole batch when the worker is ready (one slot);
   * otherwise each run is one read of its own (a slot each, as separate
   * reads would take), all issued at once: the thread pool works on several
   * while the loop goes on.
   */
  readRuns(runs: readonly ByteRange[], into?: Buffer): Promise<Buffer> {
    let total: number;
    try {
      this.ensureOpen('read', runs[0]?.offset ?? 0, 0);
      total = checkRuns('read', runs, this.size, 'EINVAL');
      checkReadBuffer(runs[0]?.offset ?? 0, total, into);
    } catch (e) {
      return Promise.reject(e);
    }
    const worker = this.scattered;
    if (worker?.ready) {
      return into === undefined
        ? this.inWorker('read', runs, total, () => worker.read(runs, total))
        : this.inWorker('read', runs, total, () => worker.readInto(runs, total, into)).then(() => into);
    }
    const buffer = into ?? Buffer.allocUnsafe(total);
    const reads: Array<Promise<Buffer>> = [];
    let at = 0;
    for (const r of runs) {
      reads.push(this.read(r.offset, r.length, buffer.subarray(at, at + r.length)));
      at += r.length;
    }
    return settleAll(reads).then(() => buffer);
  }

  /** One job in the worker, or one write (or writev of its pieces) per run, as readRuns. */
  writeRuns(runs: readonly ByteRange[], data: readonly Buffer[]): Promise<void> {
    let total: number;
    try {
      this.ensureOpen('write', runs[0]?.offset ?? 0, 0);
      total = checkWriteRuns(runs, data, this.size);
    } catch (e) {
      return Promise.reject(e);
    }
    const worker = this.scattered;
    if (worker?.ready) return this.inWorker('write', runs, total, () => worker.write(runs, data, total));
    const pieces = piecesOfRuns(runs, data);
    return settleAll(runs.map((r, i) => writePieces(this, r.offset, pieces[i]!)));
  }

  /** A batch in the worker holding one slot; its failure as a BlockStoreError. */
  private async inWorker<T>(op: 'read' | 'write', runs: readonly ByteRange[], total: number, job: () => Promise<T>): Promise<T> {
    if (!this.limiter.tryAcquire()) await this.limiter.acquire();
    try {
      return await job();
    } catch (e) {
      const f = e as Partial<WorkerFailure>;
      const code = typeof f.code === 'string' ? f.code : 'EIO';
      const offset = runs[0]?.offset ?? 0;
      throw new BlockStoreError(code, op, offset, total, `${this.path}: ${op} of ${runs.length} runs from ${offset} failed: ${code} (${f.message ?? String(e)})`);
    } finally {
      this.limiter.release();
    }
  }

  /** Writes what follows the first `done` bytes of the parts, part by part. */
  private async writePartsFrom(parts: readonly Buffer[], offset: number, done: number): Promise<void> {
    let at = offset + done;
    for (const p of piecesFrom(parts, done)) {
      await this.writeFully(p, p.length, at);
      at += p.length;
    }
  }

  /** The first fs call of a request holding a slot failed: release it, reject with a BlockStoreError. */
  private failHeld(e: unknown, op: string, offset: number, length: number): never {
    this.limiter.release();
    throw fsFailure(e, op, offset, length, this.path);
  }

  /** The slow path of a request holding a slot: release it when `p` settles. */
  private settle<T>(p: Promise<T>, op: string, offset: number, length: number): Promise<T> {
    return p.then(
      (v) => {
        this.limiter.release();
        return v;
      },
      (e: unknown) => {
        this.limiter.release();
        throw fsFailure(e, op, offset, length, this.path);
      },
    );
  }

  /**
   * Writes real zeroes, so the range is allocated afterwards whatever
   * `noHole` says; there is no faster path without native calls.
   */
  async writeZeroes(offset: number, length: number, _options?: WriteZeroesOptions): Promise<void> {
    this.ensureOpen('writeZeroes', offset, length);
    checkRange('writeZeroes', offset, length, this.size, 'ENOSPC');
    if (length === 0) return;
    const zeroes = zeroBuffer();
    if (!this.limiter.tryAcquire()) await this.limiter.acquire();
    try {
      for (let done = 0; done < length; ) {
        const n = Math.min(length - done, zeroes.length);
        await this.writeFully(zeroes, n, offset + done);
        done += n;
      }
    } catch (e) {
      throw fsFailure(e, 'writeZeroes', offset, length, this.path);
    } finally {
      this.limiter.release();
    }
  }

  /**
   * A successful no-op after the range check. Releasing space needs
   * fallocate(PUNCH_HOLE) or BLKDISCARD, which node:fs does not offer; trim is
   * only a hint and its contents afterwards are unspecified, so leaving the
   * data in place is correct. capabilities.canTrim=false tells the layers
   * above that no space comes back.
   */
  async trim(offset: number, length: number): Promise<void> {
    this.ensureOpen('trim', offset, length);
    checkRange('trim', offset, length, this.size, 'EINVAL');
  }

  /**
   * fdatasync: every write that completed before the call is durable when it
   * resolves (on a block device the kernel also flushes the device's cache).
   */
  async flush(): Promise<void> {
    this.ensureOpen('flush', 0, 0);
    if (!this.limiter.tryAcquire()) await this.limiter.acquire();
    try {
      await this.io.datasync(this.fd);
    } catch (e) {
      throw fsFailure(e, 'flush', 0, 0, this.path);
    } finally {
      this.limiter.release();
    }
  }

  /** Without SEEK_DATA/SEEK_HOLE the whole range is reported as allocated data. */
  async extents(offset: number, length: number): Promise<Extent[]> {
    this.ensureOpen('extents', offset, length);
    checkRange('extents', offset, length, this.size, 'EINVAL');
    return length === 0 ? [] : [{ offset, length, hole: false, zero: false }];
  }

  /**
   * Refuses new requests at once (EBADF), lets the accepted ones finish,
   * then closes the descriptor. Calling it again returns the same promise.
   */
  close(): Promise<void> {
    if (this.closing === undefined) {
      this.closed = true;
      this.closing = this.limiter
        .idle()
        .then(() => this.scattered?.close())
        .then(() => closeFd(this.fd))
        .catch((e: unknown) => {
          throw fsFailure(e, 'close', 0, 0, this.path);
        });
    }
    return this.closing;
  }

  private ensureOpen(op: string, offset: number, length: number): void {
    if (this.closed) throw new BlockStoreError('EBADF', op, offset, length, `${this.path}: ${op} after close`);
  }

  /**
   * Finishes a read whose first call moved `firstBytes` (split, short, or at
   * end of file): pread in chunks until `length` bytes are in.
   */
  private async readRest(buffer: Buffer, position: number, length: number, firstBytes: number): Promise<void> {
    let done = firstBytes;
    let got = firstBytes;
    while (done < length) {
      if (got === 0) {
        // End of file inside the range: a regular file shorter than the
        // store (shrunk since open) reads as zeroes past its end, as a
        // sparse tail would. A device that ends early has lost data.
        if (this.isBlockDevice) {
          throw new BlockStoreError('EIO', 'read', position, length, `${this.path}: device ended at ${position + done}`);
        }
        buffer.fill(0, done, length);
        return;
      }
      got = await this.io.read(this.fd, buffer, done, Math.min(length - done, MAX_CHUNK_BYTES), position + done);
      done += got;
    }
  }

  /** pwrite the first `length` bytes of `data` at `position`, from byte `done` on, in chunks; continues short writes. */
  private async writeFully(data: Uint8Array, length: number, position: number, done = 0): Promise<void> {
    while (done < length) {
      const put = await this.io.write(this.fd, data, done, Math.min(length - done, MAX_CHUNK_BYTES), position + done);
      // pwrite returning 0 for a non-empty request would loop forever.
      if (put <= 0) throw new BlockStoreError('EIO', 'write', position, length, `${this.path}: no progress writing at ${position + done}`);
      done += put;
    }
  }
}

/** Any failure as a BlockStoreError carrying the system's errno string. */
function fsFailure(e: unknown, op: string, offset: number, length: number, path: string): BlockStoreError {
  if (e instanceof BlockStoreError) return e;
  const code = (e as { code?: unknown } | null)?.code;
  const errno = typeof code === 'string' ? code : 'EIO';
  const detail = e instanceof Error ? e.message : String(e);
  return new BlockStoreError(errno, op, offset, length, `${path}: ${op} at ${offset}+${length} failed: ${errno} (${detail})`);
}

function openFd(path: string, flags: string): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, flags, (err, fd) => (err ? reject(err) : resolve(fd))));
}

function closeFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.close(fd, (err) => (err ? reject(err) : resolve())));
}

/** queue/rotational of the device, or of its parent disk for a partition. */
async function readRotational(sysfsDir: string): Promise<boolean> {
  // Plain concatenation on purpose: path.join would fold `x/..` away before
  // the kernel could follow the MAJ:MIN symlink to the partition's parent.
  for (const file of [`${sysfsDir}/queue/rotational`, `${sysfsDir}/../queue/rotational`]) {
    try {
      return (await fsp.readFile(file, 'utf8')).trim() === '1';
    } catch {
      // try the next one
    }
  }
  return false;
}
