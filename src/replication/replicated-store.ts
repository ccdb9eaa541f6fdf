/**
 * The block store a Primary's NBD export writes to: reads come from the
 * local disk, writes go through the replicator (local disk plus every peer
 * that takes replication), and a flush reaches the local disk and every such
 * peer (G2). The export above knows nothing of peers.
 */
import type { BlockStore, BlockStoreCapabilities, Extent, WriteZeroesOptions } from '../../native-free-io/block-store.js';
import type { Replicator } from './replicator.js';

/** Reads for a node whose disk is detached: served by an UpToDate peer. */
export interface RemoteReader {
  remoteRead(offset: number, length: number): Promise<Buffer>;
}

export class ReplicatedStore implements BlockStore {
  readonly capabilities: BlockStoreCapabilities;

  constructor(
    /** The local disk, null while detached. */
    private readonly local: () => BlockStore | null,
    private readonly replicator: Replicator,
    /** A peer that can serve reads now, when the local disk is gone. */
    private readonly reader: () => RemoteReader | null,
    /** What the export offers: the local disk, or less when a peer's disk is smaller. */
    private readonly sizeBytes: () => number,
    capabilities: BlockStoreCapabilities,
    /**
     * Whether the local disk holds good data now. A Primary that attached
     * its disk again resyncs it (Inconsistent) and reads from the peer
     * until the copy is done.
     */
    private readonly localIsGood: () => boolean = () => true,
  ) {
    this.capabilities = capabilities;
  }

  get size(): number {
    return this.sizeBytes();
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const local = this.local();
    if (local && this.localIsGood()) return local.read(offset, length, into);
    const peer = this.reader();
    if (!peer) return Promise.reject(Object.assign(new Error('no local disk and no UpToDate peer to read from'), { errno: 'EIO' }));
    return peer.remoteRead(offset, length);
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.replicator.write(offset, data, false);
  }

  writev(offset: number, parts: readonly Buffer[]): Promise<void> {
    return this.replicator.writev(offset, parts, false);
  }

  writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void> {
    return this.replicator.writeZeroes(offset, length, options?.noHole === true, false);
  }

  trim(offset: number, length: number): Promise<void> {
    return this.replicator.trim(offset, length, false);
  }

  flush(): Promise<void> {
    return this.replicator.flush();
  }

  extents(offset: number, length: number): Promise<Extent[]> {
    const local = this.local();
    if (local && this.localIsGood()) return local.extents(offset, length);
    return Promise.resolve([{ offset, length, hole: false, zero: false }]);
  }

  /** The resource closes the local store itself. */
  async close(): Promise<void> {}
}
