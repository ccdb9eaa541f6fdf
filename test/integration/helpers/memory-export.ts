/**
 * An NbdExport over a sparse MemoryStore, for tests of the NBD server: with
 * switches for features, a refusal, a gate that holds reads back (to force
 * out-of-order completion) and counters of opened/closed clients.
 */
import { MemoryStore } from '../../../native-free-io/memory-store.js';
import type { BlockSizeConstraints, Extent, ExportFeatures, NbdClientInfo, NbdExport } from '../../../src/nbd/export.js';

export interface MemoryExportOptions {
  name: string;
  size: number;
  description?: string;
  features?: Partial<ExportFeatures>;
  maxPayload?: number;
}

export class MemoryExport implements NbdExport {
  readonly name: string;
  readonly description: string;
  readonly store: MemoryStore;
  featureSet: ExportFeatures;
  maxPayload: number;
  refusal: string | null = null;
  opened: NbdClientInfo[] = [];
  closedClients: NbdClientInfo[] = [];
  /** Reads at offsets in this set wait until release(offset) is called. */
  private readonly gates = new Map<number, { promise: Promise<void>; release: () => void }>();
  flushes = 0;
  /** Reads running now, and the most ever at once (to observe the server's window). */
  readsRunning = 0;
  maxReadsRunning = 0;
  lastZeroOpts: { noHole: boolean; fua: boolean; fastZero: boolean } | null = null;
  lastWriteFua: boolean | null = null;

  constructor(o: MemoryExportOptions) {
    this.name = o.name;
    this.description = o.description ?? `test export ${o.name}`;
    this.store = new MemoryStore(o.size);
    this.maxPayload = o.maxPayload ?? 32 * 1024 * 1024;
    this.featureSet = {
      readOnly: false,
      canFlush: true,
      canFua: true,
      canTrim: true,
      canWriteZeroes: true,
      canFastZero: true,
      canCache: true,
      canMultiConn: true,
      rotational: false,
      ...o.features,
    };
  }

  /** Make reads at `offset` wait until release(offset). */
  hold(offset: number): void {
    let release!: () => void;
    const promise = new Promise<void>((r) => (release = r));
    this.gates.set(offset, { promise, release });
  }

  release(offset: number): void {
    const g = this.gates.get(offset);
    this.gates.delete(offset);
    g?.release();
  }

  size(): number {
    return this.store.size;
  }
  features(): ExportFeatures {
    return this.featureSet;
  }
  blockSize(): BlockSizeConstraints {
    return { minimum: 1, preferred: 4096, maximum: this.maxPayload };
  }
  openRefusal(): string | null {
    return this.refusal;
  }
  async read(offset: number, length: number): Promise<Buffer> {
    this.readsRunning++;
    this.maxReadsRunning = Math.max(this.maxReadsRunning, this.readsRunning);
    try {
      const g = this.gates.get(offset);
      if (g) await g.promise;
      // Let other requests in: a real disk does not answer within a microtask.
      await new Promise((r) => setImmediate(r));
      return await this.store.read(offset, length);
    } finally {
      this.readsRunning--;
    }
  }
  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.lastWriteFua = fua;
    // The server may hand over a view of a received socket chunk; keep a copy
    // like a resource that queues data would, so the chunk is not pinned.
    await this.store.write(offset, Buffer.from(data));
  }
  async writeZeroes(offset: number, length: number, opts: { noHole: boolean; fua: boolean; fastZero: boolean }): Promise<void> {
    this.lastZeroOpts = opts;
    await this.store.writeZeroes(offset, length, { noHole: opts.noHole });
  }
  async trim(offset: number, length: number): Promise<void> {
    await this.store.trim(offset, length);
  }
  async flush(): Promise<void> {
    this.flushes++;
    await this.store.flush();
  }
  async cache(): Promise<void> {}
  extents(offset: number, length: number): Promise<Extent[]> {
    return this.store.extents(offset, length);
  }
  clientOpened(client: NbdClientInfo): void {
    this.opened.push(client);
  }
  clientClosed(client: NbdClientInfo): void {
    this.closedClients.push(client);
  }
}
