/**
 * What the replication layer needs from the local replica of a resource.
 * The resource layer implements it; replication never imports the
 * resource layer (DESIGN: dependencies point down).
 */
import type { BlockStore } from '../../native-free-io/block-store.js';
import type { Bitmap } from '../meta/index.js';
import type { RangeLock } from './range-lock.js';
import type { SyncSide } from './sync-decision.js';
import type { WireDiskState, WireRole } from './wire/index.js';

export type SyncRole = 'source' | 'target';

/** How a finished resync ran, for what the target may conclude about its other peers. */
export interface SyncFinishFacts {
  /** The whole disk was copied (a full sync). */
  full: boolean;
  /** The source was Primary. */
  sourcePrimary: boolean;
  /** Writes of the source not yet known to be on every data node (they stay marked). */
  unconfirmed: ReadonlyArray<{ offset: number; length: number }>;
}

export interface ReplicaPort {
  readonly resource: string;
  readonly ownNodeId: number;
  /** The data store; null while diskless. */
  store(): BlockStore | null;
  role(): WireRole;
  disk(): WireDiskState;
  /** This node's side of the sync decision, as seen by `peerNodeId`. */
  syncSide(peerNodeId: number): SyncSide;
  /**
   * The bitmap of blocks `peerNodeId` may lack (persisted in its slot); null
   * while this node has no disk, or for a peer without one (a witness).
   */
  bitmapFor(peerNodeId: number): Bitmap | null;
  /** Application writes hold their range here; a SyncSource's reads too. */
  readonly writeLock: RangeLock;
  /** Replicated writes and resync data land through this lock, in arrival order. */
  readonly applyLock: RangeLock;
  /** Hold new application writes (and wait for those in flight); returns the resume function. */
  freezeWrites(): Promise<() => void>;
  /**
   * A resync with the peer starts: persist what must survive a crash (a
   * target is Inconsistent). A full-sync target also takes the source's
   * generation now (`sourceCurrent`), so an interrupted full sync resumes
   * from the bitmaps at the next connect instead of starting over.
   */
  syncStarting(peerNodeId: number, role: SyncRole, full: boolean, sourceCurrent: bigint): Promise<void>;
  /** The resync ended with every block copied; `sourceCurrent` is the source's current UUID. */
  syncFinished(peerNodeId: number, role: SyncRole, sourceCurrent: bigint, after: SyncFinishFacts): Promise<void>;
  /** The session with the peer ended; its unconfirmed writes are already marked. */
  peerLost(peerNodeId: number, wasReplicating: boolean): Promise<void>;
  /** The local disk failed under replication traffic. */
  diskFailed(op: string, error: unknown): void;
  /** The peer says both disks hold the same data: take `current` as ours (new-current-uuid). */
  adoptCurrent(peerNodeId: number, current: bigint): Promise<void>;
  /** Bytes the NBD export offers now. */
  exportSize(): number;
  /** The handshake with the peer agreed on this data size (the smaller disk). */
  sizeAgreed(peerNodeId: number, bytes: number): void;
  /**
   * Another peer than `exceptNodeId` is Primary and connected: this node
   * resyncs from that Primary only. A Secondary source would race the
   * Primary's own writes to this node (nothing orders the two streams).
   */
  primaryElsewhere(exceptNodeId: number): boolean;
  /**
   * Reset the marks for this Secondary peer to the connected Primary's
   * unconfirmed writes: everything older reached both of us.
   */
  settleMarks(peerNodeId: number): void;
  /** The handshake with a Primary peer is done: resyncs from Secondaries stop. */
  primaryConnected(primaryNodeId: number): void;
  /** The Primary `fromNodeId` started a new generation; this node follows it. */
  followGeneration(fromNodeId: number, current: bigint, awayNodeIds: readonly number[]): Promise<void>;
  /** This node's partition has quorum (always, with quorum off). */
  hasQuorum(): boolean;
  /** The data nodes (with a bitmap here) other than this one and `exceptNodeId`. */
  otherDataPeers(exceptNodeId: number): number[];
  /**
   * This node is Primary without quorum and I/O is held: at reconnect to a
   * node that is Primary, it steps down and yields its unacknowledged
   * changes (they never reached a quorum, so no client was told they are
   * safe). Returns false when that does not apply.
   */
  stepDownIfOutvoted(peerRole: WireRole): Promise<boolean>;
  /** Persist the bitmap of this peer (dirty pages only). */
  saveBitmap(peerNodeId: number): Promise<void>;
}
