/**
 * Bytes received in pieces, taken off the front as a decoder consumes them:
 * a view when the bytes lie in one piece, a copy when they straddle pieces.
 * Callers copy again if they keep a view, because it pins the piece.
 */
export class ByteQueue {
  private readonly chunks: Buffer[] = [];
  /** Bytes consumed from chunks[0]. */
  private head = 0;
  private total = 0;

  /** Bytes queued. */
  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Removes n queued bytes (the caller checked they are there). */
  take(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.head += n;
      this.total -= n;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const copied = c.copy(out, filled, this.head, Math.min(c.length, this.head + (n - filled)));
      filled += copied;
      this.head += copied;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    this.total -= n;
    return out;
  }

  /** Everything queued, as views, and the queue emptied. */
  takeAll(): Buffer[] {
    const out = this.chunks.map((c, i) => (i === 0 ? c.subarray(this.head) : c));
    this.clear();
    return out;
  }

  clear(): void {
    this.chunks.length = 0;
    this.head = 0;
    this.total = 0;
  }
}
