/**
 * The storage contract every layer above writes to. Implementations use only
 * Node's built-ins (no native addons) and import nothing from src/.
 *
 * Offsets and lengths are byte counts held in JS numbers: exact up to 2^53,
 * i.e. 8 PiB, far beyond any disk this runs on. Callers check ranges; a store
 * still refuses an out-of-range request with EINVAL/ENOSPC rather than
 * touching bytes it does not own.
 */

/** One run of blocks with the same allocation state. */
export interface Extent {
  offset: number;
  length: number;
  /** Not allocated on the backing store (a hole). */
  hole: boolean;
  /** Reads as zeroes. */
  zero: boolean;
}

/** A byte range [offset, offset + length): one of the runs of a scattered request. */
export interface ByteRange {
  offset: number;
  length: number;
}

export interface WriteZeroesOptions {
  /** The caller wants the range allocated (NBD NO_HOLE): do not punch. */
  noHole?: boolean;
}

/** What the store can do, so a frontend advertises only what is real. */
export interface BlockStoreCapabilities {
  /** trim() really releases space (otherwise it is a successful no-op). */
  readonly canTrim: boolean;
  /** writeZeroes() can be done faster than writing zero buffers. */
  readonly canFastZero: boolean;
  /** extents() reports real holes (otherwise everything is allocated data). */
  readonly knowsAllocation: boolean;
  /** A rotational medium, as far as the store can tell. */
  readonly rotational: boolean;
}

export interface BlockStore {
  /** Size in bytes of the addressable range. */
  readonly size: number;
  readonly capabilities: BlockStoreCapabilities;

  /**
   * Read `length` bytes at `offset`. When `into` is given the bytes land there
   * (it must hold `length` bytes) and it is returned; otherwise a new Buffer.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  /**
   * Optional: write the consecutive `parts` at `offset` as one range, as
   * write() would their concatenation (one positional writev where the store
   * can). The store only reads the parts and keeps none of them.
   */
  writev?(offset: number, parts: readonly Buffer[]): Promise<void>;
  /**
   * Optional: the pieces, in order, as one range from `offset`, written at
   * once on the calling thread: no thread-pool round trip, for a small
   * write whose latency is the point. The caller is blocked for as long as
   * the system call takes, so it is for a few KiB into the page cache, not
   * for bulk. Returns true once written, or false, having done nothing,
   * where the store cannot write that way now (FileStore: while another of
   * its requests is in progress); throws a BlockStoreError when the write
   * failed (checked as write is).
   */
  writeNow?(offset: number, parts: readonly Buffer[]): boolean;
  /**
   * Optional: read the scattered `runs` into one buffer, one after the
   * other (run i starts where run i-1 ended), as one read per run would.
   * Every run is range-checked before any I/O starts; the promise settles
   * only once no read of the batch is in progress any more, so on failure
   * the buffer is no longer written to either.
   */
  readRuns?(runs: readonly ByteRange[], into?: Buffer): Promise<Buffer>;
  /**
   * Optional: write the bytes of `data` (its pieces, concatenated) to the
   * scattered `runs` in order: the first runs[0].length bytes at
   * runs[0].offset, and so on; their lengths must add up. Checked and
   * settled as readRuns is: when it rejects, no write of the batch is still
   * going on (each one either completed or failed).
   */
  writeRuns?(runs: readonly ByteRange[], data: readonly Buffer[]): Promise<void>;
  /**
   * Optional hint: batches of scattered runs are likely soon (a resync
   * starts). A store that needs time to get ready for them starts now,
   * without making anyone wait.
   */
  prepareRuns?(): void;
  writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void>;
  /** A hint that the range is no longer needed; contents afterwards are unspecified. */
  trim(offset: number, length: number): Promise<void>;
  /** Every write completed before the call is on stable storage when it resolves. */
  flush(): Promise<void>;
  /** Allocation map of [offset, offset+length), in order, covering the whole range. */
  extents(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}

/** Why an I/O failed, as the operating system said it (EIO, ENOSPC, ...). */
export class BlockStoreError extends Error {
  readonly errno: string;
  readonly op: string;
  readonly offset: number;
  readonly length: number;

  constructor(errno: string, op: string, offset: number, length: number, message?: string) {
    super(message ?? `${op} at ${offset}+${length} failed: ${errno}`);
    this.name = 'BlockStoreError';
    this.errno = errno;
    this.op = op;
    this.offset = offset;
    this.length = length;
  }
}
