/**
 * Bitmap-based resync between two connected nodes. The SyncTarget drives:
 * it walks the blocks marked in its bitmap for this peer and asks the
 * SyncSource for them (RS_DATA_REQUEST); the source reads and answers
 * (RS_DATA_REPLY); the target writes, clears the bits and confirms
 * (RS_WRITE_ACK), on which the source clears its bits too. Only marked blocks
 * move (G6).
 *
 * Scattered blocks (a few dirty 4 KiB blocks here and there) would cost a
 * request, a reply, an acknowledgement, two range-lock entries and two disk
 * calls each. When both sides offer RS_BATCH, one request names every
 * marked run within a window (RS_BATCH_REQUEST), the source reads them as
 * one batch and answers with one RS_BATCH_REPLY, and the target writes them
 * as one batch and confirms once. A request of one run still goes as
 * RS_DATA_REQUEST.
 *
 * A resync block must never overwrite newer data. On the source, a resync
 * read takes the same range lock as application writes, and its reply is
 * queued on the data channel before the lock is let go; application writes
 * to the peer travel on the same channel. So the target receives, for any
 * block, the resync copy and the application's writes in the order they
 * happened on the source, and applies them in arrival order (the receiver's
 * range lock, shared with this module). A batch locks the whole window its
 * runs lie in, on both sides, so it is ordered against every write it could
 * meet exactly as a single range is.
 *
 * The target says it is done only once every copy is on stable storage (it
 * flushes its disk): its metadata turns Consistent right after, and must
 * never claim data that a crash of the machine could still take away. Flushes
 * on the way (every `flushEveryBytes` written) start the write-back early,
 * so the last one has little left to do.
 */
import type { Logger } from 'pino';
import type { BlockStore } from '../../native-free-io/block-store.js';
import { piecesLength, piecesOfRuns, settleAll, writePieces } from '../../native-free-io/scattered.js';
import { BITMAP_BLOCK_BYTES, type Bitmap } from '../meta/index.js';
import type { RangeLock } from './range-lock.js';
import { MAX_BATCH_RUNS, runsBytes, runsProblem, sameRuns, type Packet, type ResyncRun } from './wire/index.js';
import { digest, type DigestAlg } from './verify.js';
import { RateController, type RateSettings } from './rate-controller.js';

/**
 * The most one request asks for (within the payload both sides accept).
 * Each request costs a read, a write and four packets whatever its size;
 * measured on a 2-core VM, a full sync in 4 MiB requests took the source
 * about a fifth less CPU than in 1 MiB ones. With a rate limit a request is
 * also at most a tenth of a second of it (see requestRoomBytes).
 */
export const DEFAULT_RESYNC_REQUEST_BYTES = 4 * 1024 * 1024;
export const DEFAULT_RESYNC_IN_FLIGHT_BYTES = 32 * 1024 * 1024;
/**
 * Requests in flight at most, whatever their size. Scattered blocks make
 * many small requests, and each holds an entry in both nodes' range locks
 * (whose acquire scans the entries): a few hundred keep the pipeline full
 * without thousands of entries.
 */
export const DEFAULT_RESYNC_IN_FLIGHT_REQUESTS = 256;
/**
 * How far the runs of one batched request may spread (RS_BATCH). The window
 * is locked on both nodes while the batch is read and written, holding back
 * application writes anywhere in it for that long; 16 MiB gathers about 40
 * blocks when 1 % of the disk is marked, and a request of ~40 blocks already
 * costs little more than one of a single block.
 */
export const DEFAULT_RESYNC_BATCH_WINDOW_BYTES = 16 * 1024 * 1024;
/**
 * The target flushes its disk after every quarter of what it has to copy
 * (at least 1 MiB, at most 64 MiB apart), without waiting: the disk writes
 * back while the copy goes on, and the flush at the end (before the target
 * may say it is done) finds little left. A flush costs about the same per
 * dirty page whenever it runs (measured on a 2-core VM: 20 µs per scattered
 * 4 KiB page), so starting early hides it behind the copy; a quarter keeps
 * a big resync from paying for a journal commit every few MiB.
 */
export const MIN_RESYNC_FLUSH_EVERY_BYTES = 1024 * 1024;
export const MAX_RESYNC_FLUSH_EVERY_BYTES = 64 * 1024 * 1024;
/** A batch reply longer than this is refused (EINVAL): the target never asks for more than its request size. */
export const MAX_RESYNC_BATCH_BYTES = 64 * 1024 * 1024;
/** Source reads at least this long use pooled buffers (no fresh allocation per request). */
const POOLED_READ_BYTES = 64 * 1024;
/** Bytes of pooled read buffers kept at most (all sizes): the target never has more in flight. */
const POOL_KEEP_BYTES = DEFAULT_RESYNC_IN_FLIGHT_BYTES + 2 * DEFAULT_RESYNC_REQUEST_BYTES;
/** How often the rate limiter refills. */
export const RATE_TICK_MS = 50;

/** Where packets go (the peer picks each packet's channel). */
export interface ResyncIo {
  send(p: Packet): void;
}

export interface ResyncProgress {
  /** Bytes marked out of sync when the resync started (or was last reset). */
  totalBytes: number;
  /** Bytes copied (target) or confirmed (source) so far. */
  doneBytes: number;
  startedAtMs: number;
  paused: boolean;
}

export interface ResyncTargetOptions {
  /** Fixed bytes per second (0: no limit), or the dynamic controller's settings. */
  rate: RateSettings;
  /** Checksum-based resync: send the digest of our block, get data only if it differs. */
  csumsAlg?: DigestAlg | null;
  /** Copy only below this many bytes (the size both sides agreed on); default the whole store. */
  limitBytes?: number;
  requestBytes?: number;
  maxInFlightBytes?: number;
  maxInFlightRequests?: number;
  /** Both sides offered RS_BATCH: scattered runs are asked for in batches (not with csums-alg). */
  batch?: boolean;
  /** How far the runs of one batch may spread (default DEFAULT_RESYNC_BATCH_WINDOW_BYTES). */
  batchWindowBytes?: number;
  /** Flush the disk in the background after this many bytes written (0: only at the end; default: see MIN_RESYNC_FLUSH_EVERY_BYTES). */
  flushEveryBytes?: number;
}

export interface ResyncTargetHooks {
  /** Every marked block has been copied. */
  done(): void;
  /** The source could not read a block: the resync cannot finish. */
  failed(reason: string): void;
}

/** A request in flight: one run (RS_DATA_REQUEST, CSUM_RS_REQUEST) or several (RS_BATCH_REQUEST). */
interface Outstanding {
  /** Ascending and disjoint. */
  runs: ResyncRun[];
  /** Bytes the runs cover. */
  bytes: number;
  /** Asked for with RS_BATCH_REQUEST: the answer is RS_BATCH_REPLY. */
  batch: boolean;
  /** When the request went out (target side), for the rate controller. */
  sentAtMs?: number;
  /** This node wrote into a run after asking (a Primary resyncing its disk): the answer is old. */
  stale?: boolean;
}

/** The smallest range holding every run: what a request locks. */
function windowOf(runs: readonly ResyncRun[]): { offset: number; length: number } {
  const first = runs[0]!;
  const last = runs[runs.length - 1]!;
  return { offset: first.offset, length: last.offset + last.length - first.offset };
}

function overlaps(runs: readonly ResyncRun[], offset: number, length: number): boolean {
  for (const r of runs) if (r.offset < offset + length && offset < r.offset + r.length) return true;
  return false;
}

export class ResyncTarget {
  private cursor = 0;
  private nextId = 1;
  private readonly outstanding = new Map<number, Outstanding>();
  private inFlightBytes = 0;
  private tokens: number;
  private refill: NodeJS.Timeout | null = null;
  private stopped = false;
  private finished = false;
  /** Bytes written since the last flush started; the flush running, if any (true when it succeeded). */
  private unflushedBytes = 0;
  private flushing: Promise<boolean> | null = null;
  /**
   * Runs copied since the last flush started, and those the running flush
   * covers: their bits are cleared, yet the data may be only in the page
   * cache. If the session ends first they are marked again (stop), so the
   * bitmap saved after it never claims a copy a power loss could take away.
   */
  private unflushedRuns: ResyncRun[] = [];
  private flushingRuns: ResyncRun[] = [];
  readonly progress: ResyncProgress;
  private readonly requestBytes: number;
  private readonly maxInFlightBytes: number;
  private readonly maxInFlightRequests: number;
  private readonly batch: boolean;
  private readonly batchWindowBlocks: number;
  private readonly flushEveryBytes: number;
  private readonly controller: RateController;

  constructor(
    private readonly store: BlockStore,
    private readonly bitmap: Bitmap,
    private readonly lock: RangeLock,
    private readonly io: ResyncIo,
    private readonly opts: ResyncTargetOptions,
    private readonly hooks: ResyncTargetHooks,
    private readonly log: Logger,
  ) {
    this.requestBytes = opts.requestBytes ?? DEFAULT_RESYNC_REQUEST_BYTES;
    this.maxInFlightBytes = opts.maxInFlightBytes ?? DEFAULT_RESYNC_IN_FLIGHT_BYTES;
    this.maxInFlightRequests = opts.maxInFlightRequests ?? DEFAULT_RESYNC_IN_FLIGHT_REQUESTS;
    // A digest per block: csums-alg keeps one range per request.
    this.batch = (opts.batch ?? false) && !opts.csumsAlg;
    this.batchWindowBlocks = Math.max(1, Math.floor((opts.batchWindowBytes ?? DEFAULT_RESYNC_BATCH_WINDOW_BYTES) / BITMAP_BLOCK_BYTES));
    this.controller = new RateController(opts.rate);
    this.tokens = this.burst();
    this.progress = { totalBytes: bitmap.bytesOutOfSync(), doneBytes: 0, startedAtMs: Date.now(), paused: false };
    this.flushEveryBytes =
      opts.flushEveryBytes ?? Math.min(MAX_RESYNC_FLUSH_EVERY_BYTES, Math.max(MIN_RESYNC_FLUSH_EVERY_BYTES, Math.floor(this.progress.totalBytes / 4)));
    if (this.batch) store.prepareRuns?.();
  }

  start(): void {
    if (this.controller.bytesPerSec > 0) {
      this.refill = setInterval(() => {
        const rate = this.controller.tick(RATE_TICK_MS);
        this.tokens = Math.min(this.burst(), this.tokens + (rate * RATE_TICK_MS) / 1000);
        this.pump();
      }, RATE_TICK_MS);
      this.refill.unref();
    }
    this.pump();
  }

  pause(): void {
    this.progress.paused = true;
  }

  resume(): void {
    this.progress.paused = false;
    this.pump();
  }

  /** A replicated application write covered marked blocks: they are in sync now. */
  replicatedWriteApplied(offset: number, length: number): void {
    if (!this.stopped) this.progress.doneBytes += this.bitmap.clearRange(offset, length) * BITMAP_BLOCK_BYTES;
  }

  /**
   * This node (a Primary resyncing its own disk) wrote the range itself: a
   * copy of it already asked for carries older data. Those requests are
   * answered but not written; their blocks are asked for again (the source
   * reads them after our write reached it: one ordered stream).
   */
  localWriteApplied(offset: number, length: number): void {
    if (this.stopped) return;
    for (const req of this.outstanding.values()) if (overlaps(req.runs, offset, length)) req.stale = true;
    this.progress.doneBytes += this.bitmap.clearRange(offset, length) * BITMAP_BLOCK_BYTES;
  }

  /**
   * The connection is gone: stop asking; what was not copied stays marked,
   * and what was copied but not yet flushed is marked again.
   */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.refill) clearInterval(this.refill);
    this.refill = null;
    this.outstanding.clear();
    for (const r of [...this.flushingRuns, ...this.unflushedRuns]) this.bitmap.setRange(r.offset, r.length);
    this.flushingRuns = [];
    this.unflushedRuns = [];
  }

  handle(p: Packet): boolean {
    switch (p.kind) {
      case 'rs-data-reply': {
        const req = this.outstanding.get(p.id);
        const parts = p.parts ?? [p.payload];
        if (!req || req.batch || req.runs[0]!.offset !== p.offset || req.bytes !== piecesLength(parts)) {
          this.hooks.failed(`unexpected RS_DATA_REPLY id ${p.id} at ${p.offset}`);
          return true;
        }
        void this.applyReply(p.id, req, parts);
        return true;
      }
      case 'rs-batch-reply': {
        const req = this.outstanding.get(p.id);
        const parts = p.parts ?? [p.payload];
        if (!req || !req.batch || !sameRuns(req.runs, p.runs) || req.bytes !== piecesLength(parts)) {
          this.hooks.failed(`unexpected RS_BATCH_REPLY id ${p.id} of ${p.runs.length} runs at ${p.runs[0]?.offset}`);
          return true;
        }
        void this.applyReply(p.id, req, parts);
        return true;
      }
      case 'rs-is-in-sync': {
        const req = this.outstanding.get(p.id);
        if (req) this.completed(p.id, req);
        return true;
      }
      case 'neg-rs-reply':
        this.hooks.failed(`the source could not read the block of request ${p.id} (errno ${p.errno})`);
        return true;
      default:
        return false;
    }
  }

  /** The rate the controller allows now (bytes per second; 0: unlimited). */
  get rateBytesPerSec(): number {
    return this.controller.bytesPerSec;
  }

  private burst(): number {
    // Allow up to a tenth of a second of rate at once, and at least one request.
    const r = this.controller.bytesPerSec;
    return r > 0 ? Math.max(this.requestRoomBytes(), r / 10) : Number.POSITIVE_INFINITY;
  }

  /**
   * The bytes the next request may ask for: the request size, and under a
   * rate limit no more than a tenth of a second of the rate (at least one
   * block), so that a low rate is kept evenly rather than in big steps.
   */
  private requestRoomBytes(): number {
    const r = this.controller.bytesPerSec;
    if (r <= 0) return this.requestBytes;
    return Math.min(this.requestBytes, Math.max(BITMAP_BLOCK_BYTES, Math.floor(r / 10 / BITMAP_BLOCK_BYTES) * BITMAP_BLOCK_BYTES));
  }

  /** csums-alg: our digest goes out; the source answers RS_IS_IN_SYNC or the data. */
  private async requestByDigest(id: number, offset: number, length: number, alg: DigestAlg): Promise<void> {
    let d: Buffer;
    try {
      d = digest(alg, await this.store.read(offset, length));
    } catch {
      d = Buffer.alloc(0); // unreadable here: never equal, so the data comes
    }
    if (!this.stopped) this.io.send({ kind: 'csum-rs-request', id, offset, length, digest: d });
  }

  private async applyReply(id: number, req: Outstanding, parts: readonly Buffer[]): Promise<void> {
    const window = windowOf(req.runs);
    const release = await this.lock.acquire(window.offset, window.length);
    try {
      if (this.stopped) return;
      if (req.stale) {
        // Older than our own write: not written; asked for again.
        for (const r of req.runs) this.bitmap.setRange(r.offset, r.length);
        this.progress.doneBytes -= Math.min(this.progress.doneBytes, req.bytes);
        this.cursor = Math.min(this.cursor, Math.floor(window.offset / BITMAP_BLOCK_BYTES));
        this.completed(id, req, false);
        return;
      }
      await writeRuns(this.store, req.runs, parts);
    } catch (e) {
      this.hooks.failed(`writing resync data at ${window.offset} failed: ${(e as Error).message}`);
      return;
    } finally {
      release();
    }
    this.completed(id, req);
  }

  private completed(id: number, req: Outstanding, copied = true): void {
    if (this.stopped || !this.outstanding.delete(id)) return;
    if (req.sentAtMs !== undefined) this.controller.sample(Date.now() - req.sentAtMs);
    if (copied) {
      for (const r of req.runs) this.bitmap.clearRange(r.offset, r.length);
      this.progress.doneBytes += req.bytes;
      this.unflushedBytes += req.bytes;
      for (const r of req.runs) this.unflushedRuns.push(r);
      if (this.flushEveryBytes > 0 && this.unflushedBytes >= this.flushEveryBytes && this.flushing === null) void this.startFlush();
    }
    this.inFlightBytes -= req.bytes;
    this.io.send({ kind: 'rs-write-ack', id });
    this.pump();
  }

  /**
   * Flushes what was copied so far (the copy goes on meanwhile); resolves
   * false, never rejects, when the flush failed (the resync has failed then).
   */
  private startFlush(): Promise<boolean> {
    this.unflushedBytes = 0;
    this.flushingRuns = this.flushingRuns.concat(this.unflushedRuns);
    this.unflushedRuns = [];
    const covered = this.flushingRuns.length;
    const f: Promise<boolean> = this.store
      .flush()
      .then(
        () => {
          // Durable now: the runs this flush took over (any a later one took stay listed).
          if (!this.stopped) this.flushingRuns = this.flushingRuns.slice(covered);
          return true;
        },
        (e: unknown) => {
          if (!this.stopped) this.hooks.failed(`flushing resync data failed: ${(e as Error).message}`);
          return false;
        },
      )
      .then((ok) => {
        if (this.flushing === f) this.flushing = null;
        return ok;
      });
    this.flushing = f;
    return f;
  }

  private pump(): void {
    if (this.stopped || this.finished || this.progress.paused) return;
    while (this.inFlightBytes < this.maxInFlightBytes && this.outstanding.size < this.maxInFlightRequests && this.tokens > 0) {
      const runs = this.nextRuns();
      if (runs === null) break;
      const id = this.nextId++;
      const bytes = runsBytes(runs);
      const batch = runs.length > 1;
      this.outstanding.set(id, { runs, bytes, batch, sentAtMs: Date.now() });
      this.inFlightBytes += bytes;
      this.tokens -= bytes;
      const { offset, length } = runs[0]!;
      if (batch) this.io.send({ kind: 'rs-batch-request', id, runs });
      else if (this.opts.csumsAlg) void this.requestByDigest(id, offset, length, this.opts.csumsAlg);
      else this.io.send({ kind: 'rs-data-request', id, offset, length });
    }
    if (this.outstanding.size === 0 && (this.cursor >= this.bitmap.blocks || this.bitmap.nextSet(this.cursor) < 0)) {
      // Bits set behind the cursor since (a failed write): go round again.
      if (this.bitmap.countSet() > 0) {
        this.cursor = 0;
        this.pump();
        return;
      }
      void this.finish();
    }
  }

  /**
   * The runs of the next request from the cursor on (null: none left
   * before the end), and the cursor moved past them. One run of at most a
   * request's bytes; with RS_BATCH, further runs within the batch window
   * while the request has room (bytes and MAX_BATCH_RUNS).
   */
  private nextRuns(): ResyncRun[] | null {
    const blocks = this.bitmap.blocks;
    const first = this.cursor < blocks ? this.bitmap.nextSet(this.cursor) : -1;
    if (first < 0) return null;
    const limitBytes = Math.min(this.store.size, this.opts.limitBytes ?? this.store.size);
    const windowEnd = this.batch ? Math.min(blocks, first + this.batchWindowBlocks) : blocks;
    const runs: ResyncRun[] = [];
    let roomBlocks = Math.max(1, Math.floor(this.requestRoomBytes() / BITMAP_BLOCK_BYTES));
    let at = first;
    while (at >= 0 && roomBlocks > 0 && runs.length < MAX_BATCH_RUNS) {
      // The run's end is searched no further than the room left: a full
      // sync is one run of the whole disk.
      const end = this.bitmap.nextClear(at, Math.min(runs.length === 0 ? blocks : windowEnd, at + roomBlocks));
      const offset = at * BITMAP_BLOCK_BYTES;
      const length = Math.min((end - at) * BITMAP_BLOCK_BYTES, limitBytes - offset);
      this.cursor = end;
      if (length <= 0) {
        // Marks beyond the agreed size (the peer's disk is smaller): nothing
        // to copy there, and nothing after them either.
        this.bitmap.clearRange(offset, this.bitmap.dataSizeBytes - offset);
        this.cursor = blocks;
        break;
      }
      runs.push({ offset, length });
      roomBlocks -= end - at;
      if (!this.batch || end >= windowEnd) break;
      at = this.bitmap.nextSet(end, windowEnd);
    }
    return runs.length > 0 ? runs : null;
  }

  /** Every marked block is copied: on stable storage first, then the end is told. */
  private async finish(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    // A flush already running covers only what was written before it started.
    if (this.flushing !== null && !(await this.flushing)) return;
    if (!(await this.startFlush()) || this.stopped) return;
    if (this.bitmap.countSet() > 0) {
      // Marked again while flushing (the source reported a block out of sync): go on.
      this.finished = false;
      this.cursor = 0;
      this.pump();
      return;
    }
    if (this.refill) clearInterval(this.refill);
    this.refill = null;
    this.log.info({ bytes: this.progress.doneBytes, ms: Date.now() - this.progress.startedAtMs }, 'resync finished (target)');
    this.io.send({ kind: 'sync-done' });
    this.hooks.done();
  }
}

export interface ResyncSourceHooks {
  /** The target reports every block copied. */
  done(): void;
}

export class ResyncSource {
  private readonly requested = new Map<number, Outstanding>();
  /** Read buffers the link has finished sending, by length, for the next requests. */
  private readonly pool = new Map<number, Buffer[]>();
  private pooledBytes = 0;
  /** csums-alg: bytes found equal and not sent. */
  sameBytes = 0;
  readonly progress: ResyncProgress;
  private stopped = false;

  constructor(
    private readonly store: BlockStore,
    private readonly bitmap: Bitmap,
    /** The application-write range lock of this node (see the file comment). */
    private readonly writeLock: RangeLock,
    private readonly io: ResyncIo,
    private readonly hooks: ResyncSourceHooks,
    private readonly log: Logger,
    private readonly csumsAlg: DigestAlg | null = null,
  ) {
    this.progress = { totalBytes: bitmap.bytesOutOfSync(), doneBytes: 0, startedAtMs: Date.now(), paused: false };
  }

  stop(): void {
    this.stopped = true;
    this.requested.clear();
    this.pool.clear();
    this.pooledBytes = 0;
  }

  /**
   * A replicated application write reached the target while it resyncs: the
   * whole blocks it covered are in sync now (the target cleared its own bits
   * when it wrote them and will not ask for them).
   */
  replicatedWriteAcked(offset: number, length: number): void {
    if (!this.stopped) this.progress.doneBytes += this.bitmap.clearRange(offset, length) * BITMAP_BLOCK_BYTES;
  }

  handle(p: Packet): boolean {
    switch (p.kind) {
      case 'rs-data-request':
        void this.serve(p.id, [{ offset: p.offset, length: p.length }], false, null);
        return true;
      case 'rs-batch-request':
        void this.serve(p.id, p.runs, true, null);
        return true;
      case 'csum-rs-request':
        void this.serve(p.id, [{ offset: p.offset, length: p.length }], false, p.digest);
        return true;
      case 'rs-write-ack': {
        const r = this.requested.get(p.id);
        if (r) {
          this.requested.delete(p.id);
          this.confirmed(r);
        }
        return true;
      }
      case 'sync-done':
        // The target sends it after every copy it asked for is written; the
        // confirmations still on their way (the other channel) add nothing.
        for (const r of this.requested.values()) this.confirmed(r);
        this.requested.clear();
        this.log.info({ bytes: this.progress.doneBytes, ms: Date.now() - this.progress.startedAtMs }, 'resync finished (source)');
        this.hooks.done();
        return true;
      default:
        return false;
    }
  }

  private confirmed(r: Outstanding): void {
    for (const run of r.runs) this.bitmap.clearRange(run.offset, run.length);
    this.progress.doneBytes += r.bytes;
  }

  /**
   * Read and answer: RS_DATA_REPLY for one range, RS_BATCH_REPLY for a
   * batch; with the target's digest, RS_IS_IN_SYNC when ours matches.
   */
  private async serve(id: number, runs: ResyncRun[], batch: boolean, theirDigest: Buffer | null): Promise<void> {
    const bytes = runsBytes(runs);
    // The codec checked a batch's runs; a single range is checked here.
    const last = runs[runs.length - 1]!;
    if (runsProblem(runs) !== null || last.offset + last.length > this.store.size || (batch && bytes > MAX_RESYNC_BATCH_BYTES)) {
      this.io.send({ kind: 'neg-rs-reply', id, errno: 22 });
      return;
    }
    const window = windowOf(runs);
    const release = await this.writeLock.acquire(window.offset, window.length);
    // A batch reads into a buffer the store makes (its worker reads straight
    // into it); the link gives back only RS_DATA_REPLY buffers for reuse.
    let buf = batch ? null : this.takeBuffer(bytes);
    try {
      if (this.stopped) return;
      const data = await readRuns(this.store, runs, bytes, buf ?? undefined);
      const { offset, length } = runs[0]!;
      if (theirDigest !== null && this.csumsAlg !== null && theirDigest.length > 0 && digest(this.csumsAlg, data).equals(theirDigest)) {
        this.bitmap.clearRange(offset, length);
        this.progress.doneBytes += length;
        this.sameBytes += length;
        this.io.send({ kind: 'rs-is-in-sync', id, offset, length });
        return;
      }
      this.requested.set(id, { runs, bytes, batch });
      // Queued before the lock goes: no newer write can overtake it. The
      // buffer belongs to the link until it says it wrote it.
      const pooled = buf;
      buf = null;
      const whenWritten = pooled === null ? undefined : () => this.giveBack(pooled);
      if (batch) this.io.send({ kind: 'rs-batch-reply', id, runs, payload: data, whenWritten });
      else this.io.send({ kind: 'rs-data-reply', id, offset, payload: data, whenWritten });
    } catch (e) {
      this.log.warn({ offset: window.offset, length: window.length, runs: runs.length, err: (e as Error).message }, 'resync read failed');
      this.io.send({ kind: 'neg-rs-reply', id, errno: 5 });
    } finally {
      release();
      if (buf !== null) this.giveBack(buf);
    }
  }

  /**
   * A pooled buffer for a read of `length` bytes (null: small reads take a
   * fresh one from Node's slab). Reusing them spares a resync of a whole
   * disk a fresh MiB per request: its page faults and the collector's work.
   */
  private takeBuffer(length: number): Buffer | null {
    if (length < POOLED_READ_BYTES) return null;
    const buf = this.pool.get(length)?.pop();
    if (buf === undefined) return Buffer.allocUnsafeSlow(length);
    this.pooledBytes -= length;
    return buf;
  }

  private giveBack(buf: Buffer): void {
    if (this.stopped || this.pooledBytes + buf.length > POOL_KEEP_BYTES) return;
    let free = this.pool.get(buf.length);
    if (free === undefined) {
      free = [];
      this.pool.set(buf.length, free);
    }
    free.push(buf);
    this.pooledBytes += buf.length;
  }
}

/** The runs into one buffer: one read for one run, the store's batch where it has one. */
function readRuns(store: BlockStore, runs: readonly ResyncRun[], bytes: number, into: Buffer | undefined): Promise<Buffer> {
  if (runs.length === 1) return store.read(runs[0]!.offset, runs[0]!.length, into);
  if (store.readRuns) return store.readRuns(runs, into);
  const buffer = into ?? Buffer.allocUnsafe(bytes);
  let at = 0;
  const reads = runs.map((r) => {
    const view = buffer.subarray(at, (at += r.length));
    return store.read(r.offset, r.length, view);
  });
  return settleAll(reads).then(() => buffer);
}

/** The received pieces to the runs: one (positional) write per run, the store's batch where it has one. */
function writeRuns(store: BlockStore, runs: readonly ResyncRun[], parts: readonly Buffer[]): Promise<void> {
  if (runs.length > 1 && store.writeRuns) return store.writeRuns(runs, parts);
  const pieces = runs.length === 1 ? [parts] : piecesOfRuns(runs, parts);
  return settleAll(
    runs.map((r, i) => {
      return writePieces(store, r.offset, pieces[i]!);
    }),
  );
}
