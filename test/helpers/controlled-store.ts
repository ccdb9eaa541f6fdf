/**
 * Test doubles around the real MemoryStore for the replication unit tests:
 * a store whose operations a test can hold until it says so (a slow disk at
 * an exact moment), a store with seeded random latency (a disk whose
 * requests complete out of order), a seeded PRNG, and an in-process
 * network link that delivers packets asynchronously and in order.
 */
import type { BlockStore, BlockStoreCapabilities, Extent, WriteZeroesOptions } from '../../native-free-io/block-store.js';
import { MemoryStore } from '../../native-free-io/memory-store.js';

export type StoreOp = 'read' | 'write' | 'writeZeroes' | 'trim' | 'flush';

export interface Deferred<T = void> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
}

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** One held operation: `reached` resolves when it started waiting; `release()` lets it go on. */
export interface Hold {
  reached: Promise<void>;
  release(): void;
}

interface PendingHold {
  op: StoreOp;
  match: (offset: number, length: number) => boolean;
  reached: Deferred;
  gate: Deferred;
}

export { seededRandom } from './seeded-random.js';

export function randomBuffer(rand: () => number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = Math.floor(rand() * 256);
  return b;
}

/**
 * A MemoryStore that can hold chosen operations and add latency. `events`
 * lists each operation when it has taken effect, in that order.
 */
export class ControlledStore implements BlockStore {
  readonly inner: MemoryStore;
  readonly events: string[] = [];
  private readonly holds: PendingHold[] = [];
  /** Per-operation latency in ms (0 = none), chosen per request. */
  latency: ((op: StoreOp, offset: number, length: number) => number) | null = null;

  constructor(sizeOrStore: number | MemoryStore) {
    this.inner = typeof sizeOrStore === 'number' ? new MemoryStore(sizeOrStore) : sizeOrStore;
  }

  get size(): number {
    return this.inner.size;
  }

  get capabilities(): BlockStoreCapabilities {
    return this.inner.capabilities;
  }

  /** Hold the next `op` whose range matches until release() is called. */
  hold(op: StoreOp, match: (offset: number, length: number) => boolean = () => true): Hold {
    const h: PendingHold = { op, match, reached: deferred(), gate: deferred() };
    this.holds.push(h);
    return { reached: h.reached.promise, release: () => h.gate.resolve() };
  }

  /** Operations that have taken effect, of one kind. */
  count(op: StoreOp): number {
    return this.events.filter((e) => e.startsWith(`${op} `) || e === op).length;
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    await this.before('read', offset, length);
    const b = await this.inner.read(offset, length, into);
    this.events.push(`read ${offset}+${length}`);
    return b;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    await this.before('write', offset, data.length);
    await this.inner.write(offset, data);
    this.events.push(`write ${offset}+${data.length}`);
  }

  async writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void> {
    await this.before('writeZeroes', offset, length);
    await this.inner.writeZeroes(offset, length, options);
    this.events.push(`writeZeroes ${offset}+${length}`);
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.before('trim', offset, length);
    await this.inner.trim(offset, length);
    this.events.push(`trim ${offset}+${length}`);
  }

  async flush(): Promise<void> {
    await this.before('flush', 0, 0);
    await this.inner.flush();
    this.events.push('flush');
  }

  extents(offset: number, length: number): Promise<Extent[]> {
    return this.inner.extents(offset, length);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private async before(op: StoreOp, offset: number, length: number): Promise<void> {
    const i = this.holds.findIndex((h) => h.op === op && h.match(offset, length));
    if (i >= 0) {
      const h = this.holds.splice(i, 1)[0]!;
      h.reached.resolve();
      await h.gate.promise;
    }
    const ms = this.latency?.(op, offset, length) ?? 0;
    if (ms > 0) await new Promise((r) => setTimeout(r, ms));
  }
}

/** Resolves after the event loop has turned `n` times (setImmediate). */
export async function turns(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `cond` each event-loop turn until it holds; fails after `ms`. */
export async function until(cond: () => boolean, ms = 2000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

/**
 * One direction of an in-process network: packets are delivered one per
 * event-loop turn, in the order sent (a TCP stream), to whatever `deliver`
 * is set to. `cut()` drops everything from then on.
 */
export class Wire<P> {
  readonly sent: P[] = [];
  private down = false;
  deliver: (p: P) => void = () => undefined;

  send(p: P): void {
    if (this.down) return;
    this.sent.push(p);
    setImmediate(() => {
      if (!this.down) this.deliver(p);
    });
  }

  cut(): void {
    this.down = true;
  }
}
