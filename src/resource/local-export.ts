/**
 * The NBD export of a resource on this node: the backing store behind a role
 * gate. Only a Primary serves I/O; the NBD server asks `openRefusal()` before
 * a client may open the export at all.
 *
 * Every connection writes through the same store (one file descriptor), so a
 * FLUSH on any connection covers writes completed on every connection; that
 * is what makes CAN_MULTI_CONN honest here.
 */
import type { BlockStore } from '../../native-free-io/block-store.js';
import { piecesLength, writePieces } from '../../native-free-io/scattered.js';
import type { BlockSizeConstraints, ExportFeatures, Extent, NbdClientInfo, NbdExport } from '../nbd/export.js';
import { FlushCoalescer } from './flush-coalescer.js';

export interface IoCounters {
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  flushes: number;
  trims: number;
  zeroes: number;
  errors: number;
}

/** Why I/O is refused now, and the errno a client gets for it. */
export interface GateRefusal {
  errno: 'ESHUTDOWN' | 'EIO';
  message: string;
}

export interface ExportGate {
  /** Null while I/O is allowed (Primary with a usable disk); else why not. */
  refusal(): GateRefusal | null;
  /** Null while I/O may go on; else it waits for this (I/O suspended, e.g. no quorum). */
  suspended(): Promise<void> | null;
  /** Called on a failed store operation, for status and the io-error policy. */
  ioFailed(op: string, error: unknown): void;
}

function errnoError(errno: string, message: string): Error {
  return Object.assign(new Error(message), { errno });
}

export class LocalExport implements NbdExport {
  readonly counters: IoCounters = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, trims: 0, zeroes: 0, errors: 0 };
  private readonly clientsById = new Map<number, NbdClientInfo>();
  private readonly flusher: FlushCoalescer;
  /** Fixed for the life of the export; the server reads it on every request. */
  private readonly featureSet: ExportFeatures;

  constructor(
    readonly name: string,
    readonly description: string,
    private readonly store: BlockStore,
    private readonly maxPayloadBytes: number,
    private readonly gate: ExportGate,
  ) {
    this.flusher = new FlushCoalescer(() => this.store.flush());
    this.featureSet = Object.freeze({
      readOnly: false,
      canFlush: true,
      canFua: true,
      // TRIM is advisory in NBD; a store that cannot release space still
      // honours it (contents afterwards are unspecified either way).
      canTrim: true,
      canWriteZeroes: true,
      // FAST_ZERO is understood; it fails with ENOTSUP where zeroing would
      // be no faster than writing, which is what the flag asks us to say.
      canFastZero: true,
      canCache: true,
      canMultiConn: true,
      rotational: store.capabilities.rotational,
    });
  }

  size(): number {
    return this.store.size;
  }

  features(): ExportFeatures {
    return this.featureSet;
  }

  blockSize(): BlockSizeConstraints {
    return { minimum: 1, preferred: 4096, maximum: this.maxPayloadBytes };
  }

  openRefusal(): string | null {
    return this.gate.refusal()?.message ?? null;
  }

  clients(): NbdClientInfo[] {
    return [...this.clientsById.values()];
  }

  clientOpened(client: NbdClientInfo): void {
    this.clientsById.set(client.id, client);
  }

  clientClosed(client: NbdClientInfo): void {
    this.clientsById.delete(client.id);
  }

  /*
   * read, write and writev, the per-I/O calls, are plain functions chaining
   * one handler onto the store's promise (no async wrapper, no extra promise
   * per layer); the rarer operations below stay async.
   */

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const held = this.gate.suspended();
    if (held !== null) return held.then(() => this.read(offset, length, into));
    const refusal = this.gate.refusal();
    if (refusal !== null) return Promise.reject(errnoError(refusal.errno, refusal.message));
    return this.store.read(offset, length, into).then(this.readDone, this.readFailed);
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const held = this.gate.suspended();
    if (held !== null) return held.then(() => this.write(offset, data, fua));
    const refusal = this.gate.refusal();
    if (refusal !== null) return Promise.reject(errnoError(refusal.errno, refusal.message));
    const length = data.length;
    return this.store.write(offset, data).then(() => this.written(length, fua), this.writeFailed);
  }

  /** The payload in parts as received: one positional writev where the store has it. */
  writev(offset: number, parts: readonly Buffer[], fua: boolean): Promise<void> {
    const held = this.gate.suspended();
    if (held !== null) return held.then(() => this.writev(offset, parts, fua));
    const refusal = this.gate.refusal();
    if (refusal !== null) return Promise.reject(errnoError(refusal.errno, refusal.message));
    const length = piecesLength(parts);
    return writePieces(this.store, offset, parts).then(() => this.written(length, fua), this.writeFailed);
  }

  private readonly readDone = (data: Buffer): Buffer => {
    this.counters.reads++;
    this.counters.bytesRead += data.length;
    return data;
  };

  private written(length: number, fua: boolean): Promise<void> | undefined {
    this.counters.writes++;
    this.counters.bytesWritten += length;
    return fua ? this.flush() : undefined;
  }

  private readonly readFailed = (e: unknown): never => this.failed('read', e);
  private readonly writeFailed = (e: unknown): never => this.failed('write', e);

  private failed(op: string, e: unknown): never {
    this.counters.errors++;
    this.gate.ioFailed(op, e);
    throw e;
  }

  async writeZeroes(offset: number, length: number, opts: { noHole: boolean; fua: boolean; fastZero: boolean }): Promise<void> {
    await this.checkGate();
    if (opts.fastZero && !this.store.capabilities.canFastZero) {
      throw errnoError('ENOTSUP', 'zeroing is not faster than writing on this store');
    }
    await this.guard('write-zeroes', this.store.writeZeroes(offset, length, { noHole: opts.noHole }));
    this.counters.zeroes++;
    if (opts.fua) await this.flush();
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await this.checkGate();
    await this.guard('trim', this.store.trim(offset, length));
    this.counters.trims++;
    if (fua) await this.flush();
  }

  async flush(): Promise<void> {
    await this.checkGate();
    await this.guard('flush', this.flusher.flush());
    this.counters.flushes++;
  }

  async cache(_offset: number, _length: number): Promise<void> {
    // A prefetch hint: the page cache does its own read-ahead, and a hint
    // must never change what a later read returns, so accepting it is enough.
    await this.checkGate();
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    await this.checkGate();
    return this.guard('block-status', this.store.extents(offset, length));
  }

  private async checkGate(): Promise<void> {
    for (let held = this.gate.suspended(); held !== null; held = this.gate.suspended()) await held;
    const refusal = this.gate.refusal();
    if (refusal !== null) throw errnoError(refusal.errno, refusal.message);
  }

  private async guard<T>(op: string, p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (e) {
      this.counters.errors++;
      this.gate.ioFailed(op, e);
      throw e;
    }
  }
}
