/**
 * A counting semaphore with a FIFO wait queue: at most `maxInFlight` holders
 * at once, the rest served strictly in arrival order.
 *
 * A released slot is handed straight to the oldest waiter rather than freed,
 * so a newcomer can never overtake the queue and the bound holds even in the
 * microtask between release and the waiter resuming.
 */
export class IoLimiter {
  readonly maxInFlight: number;
  private active = 0;
  /** Waiters from `head` on; the array is compacted now and then, not shifted per call. */
  private waiters: Array<() => void> = [];
  private head = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(maxInFlight: number) {
    if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) {
      throw new RangeError(`maxInFlight must be a positive integer, got ${maxInFlight}`);
    }
    this.maxInFlight = maxInFlight;
  }

  /** Slots held now. */
  get inFlight(): number {
    return this.active;
  }

  /** Callers waiting for a slot. */
  get queued(): number {
    return this.waiters.length - this.head;
  }

  /** Takes a slot if one is free and nobody is waiting; no allocation. */
  tryAcquire(): boolean {
    if (this.active < this.maxInFlight && this.queued === 0) {
      this.active++;
      return true;
    }
    return false;
  }

  /** Waits for a slot; it is held when the promise resolves. */
  acquire(): Promise<void> {
    if (this.tryAcquire()) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    if (this.head < this.waiters.length) {
      const next = this.waiters[this.head]!;
      this.head++;
      if (this.head >= 1024 && this.head * 2 >= this.waiters.length) {
        this.waiters = this.waiters.slice(this.head);
        this.head = 0;
      }
      next(); // the slot passes on; `active` is unchanged
      return;
    }
    this.active--;
    if (this.active === 0 && this.idleWaiters.length > 0) {
      const waiting = this.idleWaiters;
      this.idleWaiters = [];
      for (const resolve of waiting) resolve();
    }
  }

  /** Resolves once no slot is held and nobody waits. */
  idle(): Promise<void> {
    if (this.active === 0 && this.queued === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}
