/**
 * Reusable I/O buffers for one connection, so a READ neither allocates its
 * data buffer nor faults fresh pages in (a new 1 MiB buffer is 256 page
 * faults before the first byte lands).
 *
 * Buffers come in power-of-two classes from MIN_CLASS_BYTES up; a request
 * gets a buffer of its class, or a view of its first `length` bytes. Each
 * class keeps at most `retainBytes / classSize` free buffers (at least
 * MIN_RETAINED, at most MAX_RETAINED); a buffer released beyond that is left to
 * the GC, so an idle connection holds at most about `retainBytes` per class
 * it used. A request beyond the class that holds `maxBytes` gets a one-off
 * buffer, which release() recognises and leaves to the GC.
 *
 * Ownership: acquire() hands the buffer to the caller; it is the caller's
 * alone until it gives it back with release(), and nobody may touch it
 * afterwards. Releasing a buffer twice, or one the pool did not hand out, is a
 * bug the pool cannot always detect (it checks the size class only).
 * Pure: no I/O, no timers.
 */

export const MIN_CLASS_BYTES = 4096;
const MIN_RETAINED = 2;
const MAX_RETAINED = 128;

export class BufferPool {
  /** free[i]: free buffers of MIN_CLASS_BYTES << i bytes. */
  private readonly free: Buffer[][] = [];
  private readonly limit: number[] = [];
  /** Buffers handed out and not released (for tests and status). */
  outstanding = 0;

  constructor(
    /** Largest request pooled; longer ones get a one-off buffer. */
    readonly maxBytes: number,
    /** Free bytes kept per class at most (rounded to whole buffers, see above). */
    readonly retainBytes: number,
  ) {
    for (let size = MIN_CLASS_BYTES; ; size *= 2) {
      this.free.push([]);
      this.limit.push(Math.min(MAX_RETAINED, Math.max(MIN_RETAINED, Math.floor(retainBytes / size))));
      if (size >= maxBytes) break;
    }
  }

  /** A buffer of exactly `length` bytes (contents undefined), the caller's until release(). */
  acquire(length: number): Buffer {
    const c = classOf(length);
    if (c >= this.free.length) return Buffer.allocUnsafe(length);
    this.outstanding++;
    const buf = this.free[c]!.pop() ?? Buffer.allocUnsafeSlow(MIN_CLASS_BYTES << c);
    return buf.length === length ? buf : buf.subarray(0, length);
  }

  /** Gives back a buffer from acquire() (or a view of one starting at its first byte). */
  release(buf: Buffer): void {
    const size = buf.buffer.byteLength;
    const c = classOf(size);
    if (c >= this.free.length || MIN_CLASS_BYTES << c !== size || buf.byteOffset !== 0) return; // not pooled
    this.outstanding--;
    const list = this.free[c]!;
    if (list.length < this.limit[c]!) list.push(buf.length === size ? buf : Buffer.from(buf.buffer, 0, size));
  }

  /** Free buffers held now, in bytes. */
  retained(): number {
    let n = 0;
    for (let c = 0; c < this.free.length; c++) n += this.free[c]!.length * (MIN_CLASS_BYTES << c);
    return n;
  }

  /** Drops every free buffer (the connection closed). */
  clear(): void {
    for (const list of this.free) list.length = 0;
  }
}

/** Index of the smallest class holding `length` bytes. */
function classOf(length: number): number {
  if (length <= MIN_CLASS_BYTES) return 0;
  return Math.ceil(Math.log2(length / MIN_CLASS_BYTES));
}
