/**
 * The block store a Primary's NBD export writes to: reads come from the
 * local disk, writes go through the replicator (local disk plus every peer
 * that takes replication), and a flush reaches the local disk and every such
 * peer (G2). The export above knows nothing of peers.
 */
import type { BlockStore, BlockStoreCapabilities, Extent, WriteZeroesOptions } from '../../native-free-io/block-store.js';
import type { Replicator } from './replicator.js';

export class ReplicatedStore implements BlockStore {
  constructor(
    private readonly local: BlockStore,
    private readonly replicator: Replicator,
  ) {}

  get size(): number {
    return this.local.size;
  }

  get capabilities(): BlockStoreCapabilities {
    return this.local.capabilities;
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.local.read(offset, length, into);
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.replicator.write(offset, data, false);
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
    return this.local.extents(offset, length);
  }

  /** The resource closes the local store itself. */
  async close(): Promise<void> {}
}
