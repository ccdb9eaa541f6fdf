/**
 * The decisions of the activity log, without I/O: which extents are active,
 * which slot a new extent takes, which extent to evict (least recently used
 * among those with no write in flight), which waiting writes the next
 * transaction serves, and when a write may start at once.
 *
 * States of an extent:
 *   active     in a slot on disk; `inflight` writes are under way in it
 *   idle       active with no write in flight: an eviction candidate, kept in
 *              LRU order (the order in which extents last became idle)
 *   incoming   placed in the transaction being written; active once it commits
 *   evicting   chosen to leave in the transaction being written; no longer
 *              active for new writes, which wait for a later transaction
 *
 * Waiting writes are served in arrival order, all of a write's extents in one
 * transaction or none (a write holding some extents while waiting for others
 * could deadlock with another doing the same). A write that arrives while
 * all its extents are active starts at once and costs no transaction.
 *
 * Invariants, asserted: an extent is in at most one slot; every active
 * extent's slot holds it; idle extents are exactly the active ones with no
 * write in flight; free slots are exactly the empty ones not being filled.
 */
import assert from 'node:assert';
import { AL_EMPTY, AL_MAX_UPDATES, type AlSlotUpdate, type AlTxType } from './al-transaction.js';

interface ActiveExtent {
  slot: number;
  inflight: number;
}

interface Waiter<T> {
  first: number;
  last: number;
  token: T;
}

/** The next transaction to write. */
export interface AlPlan<T> {
  type: AlTxType;
  updates: AlSlotUpdate[];
  /** Extents leaving the log: their bitmap bits must be saved before the transaction is written. */
  evicted: number[];
  /** The writes this transaction serves, granted when it commits. */
  granted: T[];
}

export class AlPlanner<T> {
  readonly slotCount: number;
  /** The slot table as on disk (after the last committed transaction). */
  readonly #slots: Uint32Array;
  readonly #active = new Map<number, ActiveExtent>();
  /** Active extents with no write in flight, least recently used first; extent -> slot. */
  readonly #idle = new Map<number, number>();
  /** Empty slots not being filled; popped from the end. */
  readonly #free: number[] = [];
  readonly #queue: Waiter<T>[] = [];
  #plan: (AlPlan<T> & { incoming: Map<number, ActiveExtent> }) | null = null;
  /** The first transaction of a log that starts empty says so (type reset). */
  #needReset = true;

  constructor(slotCount: number) {
    if (!Number.isInteger(slotCount) || slotCount < 1) throw new RangeError(`al-extents must be a positive count, got ${slotCount}`);
    this.slotCount = slotCount;
    this.#slots = new Uint32Array(slotCount).fill(AL_EMPTY);
    for (let s = slotCount - 1; s >= 0; s--) this.#free.push(s);
  }

  /** Most extents one write may touch: all in one transaction, all in the log at once. */
  get maxExtentsPerWrite(): number {
    return Math.min(this.slotCount, AL_MAX_UPDATES);
  }

  /** The on-disk slot table after the last commit (read-only view). */
  get slots(): Readonly<Uint32Array> {
    return this.#slots;
  }

  get waiting(): number {
    return this.#queue.length;
  }

  get planning(): boolean {
    return this.#plan !== null;
  }

  /** Writes in flight, over all extents. */
  inflight(): number {
    let n = 0;
    for (const a of this.#active.values()) n += a.inflight;
    return n;
  }

  /** Active extents, ascending (what a crash now would make recovery return, at least). */
  activeExtents(): number[] {
    return [...this.#active.keys()].sort((a, b) => a - b);
  }

  isActive(extent: number): boolean {
    return this.#active.has(extent);
  }

  /**
   * Starts a write into extents [first, last] at once if they are all active
   * (pinning them); false if the write must wait for a transaction.
   */
  tryBegin(first: number, last: number): boolean {
    this.#checkRange(first, last);
    for (let e = first; e <= last; e++) if (!this.#active.has(e)) return false;
    for (let e = first; e <= last; e++) this.#pin(this.#active.get(e)!, e);
    return true;
  }

  /** Queues a write that tryBegin refused; `token` comes back from grantReady() or commit(). */
  enqueue(first: number, last: number, token: T): void {
    this.#checkRange(first, last);
    this.#queue.push({ first, last, token });
  }

  /**
   * Ends a write into extents [first, last]. Returns true when a waiting
   * write may now make progress (an extent became idle).
   */
  end(first: number, last: number): boolean {
    this.#checkRange(first, last);
    let freed = false;
    for (let e = first; e <= last; e++) {
      const a = this.#active.get(e);
      assert(a !== undefined && a.inflight > 0, `activity log: end of a write into extent ${e}, which has none in flight`);
      if (--a.inflight === 0) {
        this.#idle.set(e, a.slot);
        freed = true;
      }
    }
    return freed && this.#queue.length > 0;
  }

  /** Grants the waiting writes at the head of the queue whose extents are all active by now. */
  grantReady(): T[] {
    const granted: T[] = [];
    while (this.#queue.length > 0) {
      const w = this.#queue[0]!;
      if (!this.tryBegin(w.first, w.last)) break;
      this.#queue.shift();
      granted.push(w.token);
    }
    return granted;
  }

  /**
   * The next transaction: serves waiting writes in order while their new
   * extents fit (free slots, then LRU idle extents) and the update limit
   * allows. null when nothing can be served now, or a plan is outstanding.
   * The plan's writes are pinned at once, so nothing they use is evicted.
   */
  plan(): AlPlan<T> | null {
    if (this.#plan !== null) return null;
    const updates: AlSlotUpdate[] = [];
    const evicted: number[] = [];
    const granted: T[] = [];
    const incoming = new Map<number, ActiveExtent>();
    let served = 0;
    for (const w of this.#queue) {
      const needed: number[] = [];
      let idleOwn = 0;
      for (let e = w.first; e <= w.last; e++) {
        if (this.#active.has(e)) {
          if (this.#idle.has(e)) idleOwn++;
        } else if (!incoming.has(e)) {
          needed.push(e);
        }
      }
      // Its own idle extents are about to be pinned, so they cannot make room.
      if (updates.length + needed.length > AL_MAX_UPDATES) break;
      if (needed.length > this.#free.length + this.#idle.size - idleOwn) break;
      for (let e = w.first; e <= w.last; e++) {
        const a = this.#active.get(e);
        if (a !== undefined) this.#pin(a, e);
      }
      for (const e of needed) {
        const slot = this.#free.pop() ?? this.#evictOne(evicted);
        updates.push({ slot, extent: e });
        incoming.set(e, { slot, inflight: 0 });
      }
      for (let e = w.first; e <= w.last; e++) {
        const a = incoming.get(e);
        if (a !== undefined) a.inflight++;
      }
      granted.push(w.token);
      served++;
    }
    if (served === 0) return null;
    this.#queue.splice(0, served);
    const plan = { type: (this.#needReset ? 'reset' : 'update') as AlTxType, updates, evicted, granted, incoming };
    this.#plan = plan;
    return { type: plan.type, updates, evicted, granted };
  }

  /**
   * A transaction that empties the log (clean shutdown). Only when no write
   * is in flight or waiting; every active extent leaves.
   */
  planClean(): AlPlan<T> {
    assert(this.#plan === null, 'activity log: clean while a transaction is outstanding');
    assert(this.#queue.length === 0 && this.inflight() === 0, 'activity log: clean with writes in flight or waiting');
    const evicted = this.activeExtents();
    for (const e of evicted) {
      this.#idle.delete(e);
      this.#active.delete(e);
    }
    // A reset with no updates: every slot empty. The slots become free on commit.
    this.#plan = { type: 'reset', updates: [], evicted, granted: [], incoming: new Map() };
    return { type: 'reset', updates: [], evicted, granted: [] };
  }

  /** The outstanding plan is on stable storage: apply it; returns the writes it serves. */
  commit(): T[] {
    const plan = this.#plan;
    assert(plan !== null, 'activity log: commit without a plan');
    if (plan.type === 'reset') {
      // Slots not named by the updates are empty now.
      const named = new Set(plan.updates.map((u) => u.slot));
      for (let s = 0; s < this.slotCount; s++) {
        if (!named.has(s) && this.#slots[s] !== AL_EMPTY) {
          assert(!this.#active.has(this.#slots[s]!), 'activity log: a reset dropped an active extent');
          this.#slots[s] = AL_EMPTY;
          this.#free.push(s);
        }
      }
    }
    for (const u of plan.updates) this.#slots[u.slot] = u.extent;
    for (const [e, a] of plan.incoming) {
      assert(a.inflight > 0, 'activity log: an extent entered with no write');
      this.#active.set(e, a);
    }
    this.#needReset = false;
    this.#plan = null;
    this.#checkSlots();
    return plan.granted;
  }

  /**
   * Gives up (the log failed): the writes of the outstanding plan and every
   * waiting write, for the caller to reject. The planner is unusable after.
   */
  abandon(): T[] {
    const tokens = [...(this.#plan?.granted ?? []), ...this.#queue.map((w) => w.token)];
    this.#queue.length = 0;
    this.#plan = null;
    return tokens;
  }

  #pin(a: ActiveExtent, extent: number): void {
    if (a.inflight++ === 0) this.#idle.delete(extent);
  }

  /** Takes the least recently used idle extent out of the log; its slot. */
  #evictOne(evicted: number[]): number {
    const next = this.#idle.entries().next();
    assert(next.done !== true, 'activity log: eviction with no idle extent');
    const [extent, slot] = next.value;
    this.#idle.delete(extent);
    this.#active.delete(extent);
    evicted.push(extent);
    return slot;
  }

  #checkRange(first: number, last: number): void {
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last) || first < 0 || last < first) throw new RangeError(`extents [${first}, ${last}] are not a range`);
    if (last - first + 1 > this.maxExtentsPerWrite) {
      throw new RangeError(`a write over ${last - first + 1} extents exceeds the ${this.maxExtentsPerWrite} one write may hold in the activity log`);
    }
  }

  /** The invariants in the file comment; O(slots), run once per transaction. */
  #checkSlots(): void {
    let used = 0;
    for (const [e, a] of this.#active) {
      assert.equal(this.#slots[a.slot], e, `activity log: extent ${e} is not in its slot ${a.slot}`);
      assert.equal(a.inflight === 0, this.#idle.has(e), `activity log: extent ${e} idle state differs from its in-flight count`);
      used++;
    }
    assert.equal(this.#idle.size <= used, true, 'activity log: idle extents that are not active');
    let empty = 0;
    for (const v of this.#slots) if (v === AL_EMPTY) empty++;
    assert.equal(this.#free.length, empty, 'activity log: free slots differ from empty slots');
    assert.equal(used + empty, this.slotCount, 'activity log: a slot holds an extent that is not active');
  }
}
