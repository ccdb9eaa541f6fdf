/**
 * Bitmap-based resync between two connected nodes. The SyncTarget drives:
 * it walks the blocks marked in its bitmap for this peer and asks the
 * SyncSource for them (RS_DATA_REQUEST); the source reads and answers
 * (RS_DATA_REPLY); the target writes, clears the bits and confirms
 * (RS_WRITE_ACK), on which the source clears its bits too. Only marked blocks
 * move (G6).
 *
 * A resync block must never overwrite newer data. On the source, a resync
 * read takes the same range lock as application writes, and its reply is
 * queued on the data channel before the lock is let go; application writes
 * to the peer travel on the same channel. So the target receives, for any
 * block, the resync copy and the application's writes in the order they
 * happened on the source, and applies them in arrival order (the receiver's
 * range lock, shared with this module).
 */
import type { Logger } from 'pino';
import type { BlockStore } from '../../native-free-io/block-store.js';
import { BITMAP_BLOCK_BYTES, type Bitmap } from '../meta/index.js';
import type { RangeLock } from './range-lock.js';
import type { Packet } from './wire/index.js';
import { digest, type DigestAlg } from './verify.js';
import { RateController, type RateSettings } from './rate-controller.js';

export const DEFAULT_RESYNC_REQUEST_BYTES = 1024 * 1024;
export const DEFAULT_RESYNC_IN_FLIGHT_BYTES = 32 * 1024 * 1024;
/**
 * Requests in flight at most, whatever their size. Scattered blocks make
 * many small requests, and each holds an entry in both nodes' range locks
 * (whose acquire scans the entries): a few hundred keep the pipeline full
 * without thousands of entries.
 */
export const DEFAULT_RESYNC_IN_FLIGHT_REQUESTS = 256;
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
}

export interface ResyncTargetHooks {
  /** Every marked block has been copied. */
  done(): void;
  /** The source could not read a block: the resync cannot finish. */
  failed(reason: string): void;
}

interface Outstanding {
  offset: number;
  length: number;
  /** When the request went out (target side), for the rate controller. */
  sentAtMs?: number;
  /** This node wrote into the range after asking (a Primary resyncing its disk): the answer is old. */
  stale?: boolean;
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
  readonly progress: ResyncProgress;
  private readonly requestBytes: number;
  private readonly maxInFlightBytes: number;
  private readonly maxInFlightRequests: number;
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
    this.controller = new RateController(opts.rate);
    this.tokens = this.burst();
    this.progress = { totalBytes: bitmap.bytesOutOfSync(), doneBytes: 0, startedAtMs: Date.now(), paused: false };
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
    for (const req of this.outstanding.values()) {
      if (req.offset < offset + length && offset < req.offset + req.length) req.stale = true;
    }
    this.progress.doneBytes += this.bitmap.clearRange(offset, length) * BITMAP_BLOCK_BYTES;
  }

  /** The connection is gone: stop asking; what was not copied stays marked. */
  stop(): void {
    this.stopped = true;
    if (this.refill) clearInterval(this.refill);
    this.refill = null;
    this.outstanding.clear();
  }

  handle(p: Packet): boolean {
    switch (p.kind) {
      case 'rs-data-reply': {
        const req = this.outstanding.get(p.id);
        const parts = p.parts ?? [p.payload];
        let length = 0;
        for (const b of parts) length += b.length;
        if (!req || req.offset !== p.offset || req.length !== length) {
          this.hooks.failed(`unexpected RS_DATA_REPLY id ${p.id} at ${p.offset}`);
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
    return r > 0 ? Math.max(this.requestBytes, r / 10) : Number.POSITIVE_INFINITY;
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
    const release = await this.lock.acquire(req.offset, req.length);
    try {
      if (this.stopped) return;
      if (req.stale) {
        // Older than our own write: not written; asked for again.
        this.bitmap.setRange(req.offset, req.length);
        this.progress.doneBytes -= Math.min(this.progress.doneBytes, req.length);
        this.cursor = Math.min(this.cursor, Math.floor(req.offset / BITMAP_BLOCK_BYTES));
        this.completed(id, req, false);
        return;
      }
      if (parts.length === 1) await this.store.write(req.offset, parts[0]!);
      else if (this.store.writev) await this.store.writev(req.offset, parts);
      else await this.store.write(req.offset, Buffer.concat(parts, req.length));
    } catch (e) {
      this.hooks.failed(`writing resync data at ${req.offset} failed: ${(e as Error).message}`);
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
      this.bitmap.clearRange(req.offset, req.length);
      this.progress.doneBytes += req.length;
    }
    this.inFlightBytes -= req.length;
    this.io.send({ kind: 'rs-write-ack', id });
    this.pump();
  }

  private pump(): void {
    if (this.stopped || this.finished || this.progress.paused) return;
    const maxBlocks = Math.max(1, Math.floor(this.requestBytes / BITMAP_BLOCK_BYTES));
    while (this.inFlightBytes < this.maxInFlightBytes && this.outstanding.size < this.maxInFlightRequests && this.tokens > 0) {
      const first = this.cursor < this.bitmap.blocks ? this.bitmap.nextSet(this.cursor) : -1;
      if (first < 0) break;
      // The run's end is searched no further than one request: a full sync
      // is one run of the whole disk.
      const blocks = this.bitmap.nextClear(first, Math.min(this.bitmap.blocks, first + maxBlocks)) - first;
      const offset = first * BITMAP_BLOCK_BYTES;
      const limit = Math.min(this.store.size, this.opts.limitBytes ?? this.store.size);
      const length = Math.min(blocks * BITMAP_BLOCK_BYTES, limit - offset);
      this.cursor = first + blocks;
      if (length <= 0) {
        // Marks beyond the agreed size (the peer's disk is smaller): nothing to copy there.
        this.bitmap.clearRange(offset, this.bitmap.dataSizeBytes - offset);
        break;
      }
      const id = this.nextId++;
      this.outstanding.set(id, { offset, length, sentAtMs: Date.now() });
      this.inFlightBytes += length;
      this.tokens -= length;
      if (this.opts.csumsAlg) void this.requestByDigest(id, offset, length, this.opts.csumsAlg);
      else this.io.send({ kind: 'rs-data-request', id, offset, length });
    }
    if (this.outstanding.size === 0 && (this.cursor >= this.bitmap.blocks || this.bitmap.nextSet(this.cursor) < 0)) {
      // Bits set behind the cursor since (a failed write): go round again.
      if (this.bitmap.countSet() > 0) {
        this.cursor = 0;
        this.pump();
        return;
      }
      this.finish();
    }
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
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
        void this.serve(p.id, p.offset, p.length, null);
        return true;
      case 'csum-rs-request':
        void this.serve(p.id, p.offset, p.length, p.digest);
        return true;
      case 'rs-write-ack': {
        const r = this.requested.get(p.id);
        if (r) {
          this.requested.delete(p.id);
          this.bitmap.clearRange(r.offset, r.length);
          this.progress.doneBytes += r.length;
        }
        return true;
      }
      case 'sync-done':
        // The target sends it after every copy it asked for is written; the
        // confirmations still on their way (the other channel) add nothing.
        for (const r of this.requested.values()) {
          this.bitmap.clearRange(r.offset, r.length);
          this.progress.doneBytes += r.length;
        }
        this.requested.clear();
        this.log.info({ bytes: this.progress.doneBytes, ms: Date.now() - this.progress.startedAtMs }, 'resync finished (source)');
        this.hooks.done();
        return true;
      default:
        return false;
    }
  }

  /** Read and answer; with the target's digest, answer RS_IS_IN_SYNC when ours matches. */
  private async serve(id: number, offset: number, length: number, theirDigest: Buffer | null): Promise<void> {
    if (offset + length > this.store.size || length <= 0) {
      this.io.send({ kind: 'neg-rs-reply', id, errno: 22 });
      return;
    }
    const release = await this.writeLock.acquire(offset, length);
    let buf = this.takeBuffer(length);
    try {
      if (this.stopped) return;
      const data = await this.store.read(offset, length, buf ?? undefined);
      if (theirDigest !== null && this.csumsAlg !== null && theirDigest.length > 0 && digest(this.csumsAlg, data).equals(theirDigest)) {
        this.bitmap.clearRange(offset, length);
        this.progress.doneBytes += length;
        this.sameBytes += length;
        this.io.send({ kind: 'rs-is-in-sync', id, offset, length });
        return;
      }
      this.requested.set(id, { offset, length });
      // Queued before the lock goes: no newer write can overtake it. The
      // buffer belongs to the link until it says it wrote it.
      const pooled = buf;
      buf = null;
      this.io.send({
        kind: 'rs-data-reply',
        id,
        offset,
        payload: data,
        whenWritten: pooled === null ? undefined : () => this.giveBack(pooled),
      });
    } catch (e) {
      this.log.warn({ offset, length, err: (e as Error).message }, 'resync read failed');
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
