/**
 * A sparse BlockStore in memory, for tests of the layers above and for
 * throwaway devices.
 *
 * Storage is allocated in 64 KiB chunks on first write. trim and writeZeroes
 * (without noHole) drop every chunk they cover whole and zero the parts of
 * the others, so extents() reports real holes, as a file system with hole
 * punching would.
 */
import { BlockStoreError, type BlockStore, type BlockStoreCapabilities, type ByteRange, type Extent, type WriteZeroesOptions } from './block-store.js';
import { checkRange, checkReadBuffer, isByteCount } from './range-check.js';
import { checkRuns, checkWriteRuns, piecesOfRuns } from './scattered.js';

/** Allocation granularity: also the granularity of the holes extents() reports. */
export const MEMORY_CHUNK_BYTES = 64 * 1024;

export type MemoryStoreOp = 'read' | 'write' | 'writeZeroes' | 'trim' | 'flush' | 'extents';

const ALL_OPS: readonly MemoryStoreOp[] = ['read', 'write', 'writeZeroes', 'trim', 'flush', 'extents'];

export class MemoryStore implements BlockStore {
  readonly size: number;
  readonly capabilities: BlockStoreCapabilities = Object.freeze({
    canTrim: true,
    canFastZero: true,
    knowsAllocation: true,
    rotational: false,
  });

  /** Chunk index -> its bytes; a missing index is a hole. */
  private readonly chunks = new Map<number, Buffer>();
  private closed = false;
  private fault: { errno: string; ops: ReadonlySet<MemoryStoreOp> } | undefined;

  constructor(sizeBytes: number) {
    if (!isByteCount(sizeBytes)) {
      throw new BlockStoreError('EINVAL', 'create', 0, sizeBytes, `memory store size must be a non-negative integer, got ${sizeBytes}`);
    }
    this.size = sizeBytes;
  }

  /** Bytes held by allocated chunks: what the store costs in memory. */
  get allocatedBytes(): number {
    let total = 0;
    for (const chunk of this.chunks.values()) total += chunk.length;
    return total;
  }

  /**
   * Makes `ops` (default: all) fail with `errno` until called again with
   * undefined: a failing disk for tests of the layers above. Range and
   * closed checks still come first, as they would on a real disk.
   */
  failWith(errno: string | undefined, ops: readonly MemoryStoreOp[] = ALL_OPS): void {
    this.fault = errno === undefined ? undefined : { errno, ops: new Set(ops) };
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.admit('read', offset, length, 'EINVAL');
    checkReadBuffer(offset, length, into);
    // Copies out, never a view of the chunks: the caller owns what it gets.
    const buffer = into ?? Buffer.allocUnsafe(length);
    this.forEachPiece(offset, length, (index, within, n, done) => {
      const chunk = this.chunks.get(index);
      if (chunk === undefined) buffer.fill(0, done, done + n);
      else chunk.copy(buffer, done, within, within + n);
    });
    return buffer;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    const length = data instanceof Uint8Array ? data.length : NaN;
    this.admit('write', offset, length, 'ENOSPC');
    this.forEachPiece(offset, length, (index, within, n, done) => {
      this.chunkFor(index).set(data.subarray(done, done + n), within);
    });
  }

  async readRuns(runs: readonly ByteRange[], into?: Buffer): Promise<Buffer> {
    const total = checkRuns('read', runs, this.size, 'EINVAL');
    for (const r of runs) this.admit('read', r.offset, r.length, 'EINVAL');
    checkReadBuffer(runs[0]?.offset ?? 0, total, into);
    const buffer = into ?? Buffer.allocUnsafe(total);
    let at = 0;
    for (const r of runs) {
      await this.read(r.offset, r.length, buffer.subarray(at, at + r.length));
      at += r.length;
    }
    return buffer;
  }

  async writeRuns(runs: readonly ByteRange[], data: readonly Buffer[]): Promise<void> {
    checkWriteRuns(runs, data, this.size);
    for (const r of runs) this.admit('write', r.offset, r.length, 'ENOSPC');
    const pieces = piecesOfRuns(runs, data);
    runs.forEach((r, i) => {
      let done = 0;
      for (const piece of pieces[i]!) {
        this.forEachPiece(r.offset + done, piece.length, (index, within, n, d) => {
          this.chunkFor(index).set(piece.subarray(d, d + n), within);
        });
        done += piece.length;
      }
    });
  }

  async writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void> {
    this.admit('writeZeroes', offset, length, 'ENOSPC');
    if (options?.noHole === true) {
      this.forEachPiece(offset, length, (index, within, n) => {
        this.chunkFor(index).fill(0, within, within + n);
      });
    } else {
      this.discard(offset, length);
    }
  }

  async trim(offset: number, length: number): Promise<void> {
    this.admit('trim', offset, length, 'EINVAL');
    this.discard(offset, length);
  }

  async flush(): Promise<void> {
    this.admit('flush', 0, 0, 'EINVAL');
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.admit('extents', offset, length, 'EINVAL');
    const end = offset + length;
    const out: Extent[] = [];
    const push = (from: number, to: number, hole: boolean): void => {
      const last = out[out.length - 1];
      if (last !== undefined && last.hole === hole && last.offset + last.length === from) last.length += to - from;
      else out.push({ offset: from, length: to - from, hole, zero: hole });
    };
    let cursor = offset;
    for (const index of this.allocatedIndicesIn(offset, end)) {
      const from = Math.max(offset, index * MEMORY_CHUNK_BYTES);
      const to = Math.min(end, (index + 1) * MEMORY_CHUNK_BYTES);
      if (from > cursor) push(cursor, from, true);
      push(from, to, false);
      cursor = to;
    }
    if (cursor < end) push(cursor, end, true);
    return out;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.chunks.clear();
  }

  /** The checks every request passes first: open, in range, no injected fault. */
  private admit(op: MemoryStoreOp, offset: number, length: number, pastEndErrno: 'EINVAL' | 'ENOSPC'): void {
    if (this.closed) throw new BlockStoreError('EBADF', op, offset, length, `memory store: ${op} after close`);
    checkRange(op, offset, length, this.size, pastEndErrno);
    if (this.fault?.ops.has(op)) throw new BlockStoreError(this.fault.errno, op, offset, length);
  }

  private chunkLength(index: number): number {
    return Math.min(MEMORY_CHUNK_BYTES, this.size - index * MEMORY_CHUNK_BYTES);
  }

  private chunkFor(index: number): Buffer {
    let chunk = this.chunks.get(index);
    if (chunk === undefined) {
      chunk = Buffer.alloc(this.chunkLength(index));
      this.chunks.set(index, chunk);
    }
    return chunk;
  }

  /** Calls `fn` for each chunk piece of the range: (chunk index, offset in chunk, bytes, bytes before it). */
  private forEachPiece(offset: number, length: number, fn: (index: number, within: number, n: number, done: number) => void): void {
    for (let done = 0; done < length; ) {
      const position = offset + done;
      const index = Math.floor(position / MEMORY_CHUNK_BYTES);
      const within = position - index * MEMORY_CHUNK_BYTES;
      const n = Math.min(this.chunkLength(index) - within, length - done);
      fn(index, within, n, done);
      done += n;
    }
  }

  /** Drops chunks covered whole; zeroes the covered part of the others. */
  private discard(offset: number, length: number): void {
    this.forEachPiece(offset, length, (index, within, n) => {
      if (within === 0 && n === this.chunkLength(index)) this.chunks.delete(index);
      else this.chunks.get(index)?.fill(0, within, within + n);
    });
  }

  /** Allocated chunk indices overlapping [offset, end), ascending. */
  private allocatedIndicesIn(offset: number, end: number): number[] {
    if (end <= offset) return [];
    const first = Math.floor(offset / MEMORY_CHUNK_BYTES);
    const last = Math.floor((end - 1) / MEMORY_CHUNK_BYTES);
    // Walk whichever is smaller: the range's chunk indices or the allocated set.
    if (last - first + 1 <= this.chunks.size) {
      const found: number[] = [];
      for (let i = first; i <= last; i++) if (this.chunks.has(i)) found.push(i);
      return found;
    }
    return [...this.chunks.keys()].filter((i) => i >= first && i <= last).sort((a, b) => a - b);
  }
}
