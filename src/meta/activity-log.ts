/**
 * The activity log (guarantee G3): before a write may start in a 4 MiB
 * extent that is not yet "hot", a transaction naming that extent is on
 * stable storage. After a crash, recovery (al-replay.ts) returns every
 * extent that may have had writes in flight, and only those are resynced.
 *
 * This class drives the I/O; the decisions are AlPlanner's and the block
 * format is al-transaction.ts's. The ring is reached through an injected
 * AlJournal, so tests can count, delay or fail writes.
 *
 * - beginWrite resolves at once when every extent of the range is active
 *   (no I/O). Otherwise the write waits for a transaction; callers that
 *   arrive while one is being prepared or written share the next one.
 * - When every slot is taken, the least recently used extent with no write
 *   in flight leaves; beforeEvict(extent) runs first, so the caller can save
 *   that extent's bitmap bits for peers that are away (once the extent is out
 *   of the log, only the bitmap remembers those blocks). With every slot
 *   busy, the write waits for an endWrite.
 * - Transactions are written one at a time, in number order.
 * - Any I/O error fails the log for good: pending and later beginWrites
 *   reject with it (the disk is to be detached).
 *
 * Order at attach: recover, mark the recovered extents out of sync for every
 * peer and save those bitmaps, then create the ActivityLog with the
 * recovery's nextNumber. Its first transaction resets the log.
 */
import assert from 'node:assert';
import { MirrorError } from '../errors.js';
import { AlPlanner, type AlPlan } from './al-planner.js';
import {
  AL_CONTEXT_SLOTS,
  AL_EMPTY,
  AL_EXTENT_BYTES,
  AL_MAX_EXTENT,
  AL_TX_BYTES,
  alContextWindow,
  checkAlFits,
  encodeAlTransaction,
  extentsOf,
} from './al-transaction.js';

/** Where the transactions go. */
export interface AlJournal {
  /** Transactions the ring holds. */
  readonly ringBlocks: number;
  /** Writes a 4 KiB transaction at ring position `position`; resolves once it is on stable storage. */
  writeBlock(position: number, block: Buffer): Promise<void>;
}

export interface ActivityLogOptions {
  journal: AlJournal;
  /** Slots (config al-extents, from the superblock). */
  alExtents: number;
  dataSizeBytes: number;
  /** The number the first transaction carries: AlRecovery.nextNumber. */
  nextNumber: number;
  /** Runs before an extent leaves the log; the transaction waits for it. */
  beforeEvict?: (extent: number) => Promise<void> | void;
}

export interface ActivityLogStats {
  /** Transactions written. */
  transactions: number;
  /** Extents that left the log to make room. */
  evictions: number;
  /** beginWrites that found their extents active and cost nothing. */
  hotHits: number;
}

interface Waiter {
  resolve: () => void;
  reject: (e: unknown) => void;
}

const RESOLVED = Promise.resolve();

export class ActivityLog {
  readonly alExtents: number;
  readonly dataSizeBytes: number;
  readonly #journal: AlJournal;
  readonly #planner: AlPlanner<Waiter>;
  readonly #beforeEvict: (extent: number) => Promise<void> | void;
  #nextNumber: number;
  /** Which context slice the next transaction carries; cycles so any window of them covers every slot. */
  #slice = 0;
  readonly #window: number;
  #pumping = false;
  #failed: unknown = null;
  readonly #stats: ActivityLogStats = { transactions: 0, evictions: 0, hotHits: 0 };

  constructor(opts: ActivityLogOptions) {
    checkAlFits(opts.alExtents, opts.journal.ringBlocks * AL_TX_BYTES);
    if (!Number.isSafeInteger(opts.dataSizeBytes) || opts.dataSizeBytes <= 0) throw new RangeError(`data size ${opts.dataSizeBytes} is not a byte count`);
    if (Math.ceil(opts.dataSizeBytes / AL_EXTENT_BYTES) - 1 > AL_MAX_EXTENT) throw new RangeError(`${opts.dataSizeBytes} bytes of data need more extent numbers than the log has`);
    if (!Number.isInteger(opts.nextNumber) || opts.nextNumber < 0 || opts.nextNumber > 0xffffffff) throw new RangeError(`transaction number ${opts.nextNumber} is not a u32`);
    this.alExtents = opts.alExtents;
    this.dataSizeBytes = opts.dataSizeBytes;
    this.#journal = opts.journal;
    this.#planner = new AlPlanner<Waiter>(opts.alExtents);
    this.#beforeEvict = opts.beforeEvict ?? (() => undefined);
    this.#nextNumber = opts.nextNumber;
    this.#window = alContextWindow(opts.alExtents);
    assert(this.#window <= opts.journal.ringBlocks - 1, 'activity log: context window does not fit the ring');
  }

  /**
   * Resolves once every extent that data bytes [offset, offset + length)
   * touch is recorded active on stable storage; the data write may start
   * then, and must be followed by endWrite with the same range. A rejected
   * beginWrite needs no endWrite.
   */
  beginWrite(offset: number, length: number): Promise<void> {
    if (this.#failed !== null) return Promise.reject(this.#failed);
    this.#checkRange(offset, length);
    if (length === 0) return RESOLVED;
    const { first, last } = extentsOf(offset, length);
    if (this.#planner.tryBegin(first, last)) {
      this.#stats.hotHits++;
      return RESOLVED;
    }
    return new Promise<void>((resolve, reject) => {
      this.#planner.enqueue(first, last, { resolve, reject });
      this.#kick();
    });
  }

  /** The data write of a resolved beginWrite is done (whatever its outcome). */
  endWrite(offset: number, length: number): void {
    this.#checkRange(offset, length);
    if (length === 0 || this.#failed !== null) return;
    const { first, last } = extentsOf(offset, length);
    if (this.#planner.end(first, last)) this.#kick();
  }

  /** Extents recorded active (on disk, or about to be), ascending. */
  activeExtents(): number[] {
    return this.#planner.activeExtents();
  }

  /** Writes in flight. */
  inflight(): number {
    return this.#planner.inflight();
  }

  get stats(): Readonly<ActivityLogStats> {
    return { ...this.#stats };
  }

  /** The error that failed the log, or null. */
  get failure(): unknown {
    return this.#failed;
  }

  /**
   * Empties the log at a clean shutdown: beforeEvict for every active
   * extent, then a reset transaction with no extents. Refused while writes
   * are in flight or waiting. Setting AL_CLEAN in the superblock is the
   * caller's business, after this resolves.
   */
  async clean(): Promise<void> {
    if (this.#failed !== null) throw this.#failed;
    if (this.#pumping || this.#planner.inflight() > 0 || this.#planner.waiting > 0) {
      throw new MirrorError('ERR_INTERNAL', `activity log: clean with ${this.#planner.inflight()} write(s) in flight and ${this.#planner.waiting} waiting`);
    }
    const plan = this.#planner.planClean();
    try {
      await this.#run(plan);
    } catch (e) {
      this.#fail(e);
      throw e;
    }
    this.#planner.commit();
  }

  // --- internals ------------------------------------------------------------

  #kick(): void {
    if (this.#pumping || this.#failed !== null) return;
    this.#pumping = true;
    // A microtask later, so callers arriving in the same tick share the transaction.
    queueMicrotask(() => void this.#pump());
  }

  async #pump(): Promise<void> {
    try {
      for (;;) {
        for (const w of this.#planner.grantReady()) w.resolve();
        const plan = this.#planner.plan();
        if (plan === null) break;
        await this.#run(plan);
        for (const w of this.#planner.commit()) w.resolve();
      }
    } catch (e) {
      this.#fail(e);
    } finally {
      this.#pumping = false;
    }
  }

  /** beforeEvict for the leaving extents, then the transaction, durable. */
  async #run(plan: AlPlan<Waiter>): Promise<void> {
    for (const e of plan.evicted) {
      await this.#beforeEvict(e);
      this.#stats.evictions++;
    }
    const number = this.#nextNumber;
    const block = this.#encode(number, plan);
    await this.#journal.writeBlock(number % this.#journal.ringBlocks, block);
    this.#nextNumber = (number + 1) % 2 ** 32;
    this.#stats.transactions++;
  }

  #encode(number: number, plan: AlPlan<Waiter>): Buffer {
    const start = this.#slice * AL_CONTEXT_SLOTS;
    const count = Math.min(AL_CONTEXT_SLOTS, this.alExtents - start);
    this.#slice = (this.#slice + 1) % this.#window;
    // The context shows its slots as they are after this transaction.
    const context = plan.type === 'reset' ? new Uint32Array(count).fill(AL_EMPTY) : this.#planner.slots.slice(start, start + count);
    for (const u of plan.updates) if (u.slot >= start && u.slot < start + count) context[u.slot - start] = u.extent;
    return encodeAlTransaction({ number, type: plan.type, slotCount: this.alExtents, updates: plan.updates, contextStart: start, context });
  }

  #fail(e: unknown): void {
    if (this.#failed === null) this.#failed = e;
    for (const w of this.#planner.abandon()) w.reject(this.#failed);
  }

  #checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.dataSizeBytes) {
      throw new RangeError(`bytes [${offset}, +${length}) are not within the ${this.dataSizeBytes} bytes of data`);
    }
  }
}
