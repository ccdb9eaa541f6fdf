/**
 * The shape of `mirrorbd status --json`: a stable, documented format
 * (docs/status.md). Add fields; never rename or remove one.
 */
import type { DiskState, Role } from './states.js';
import type { IoCounters } from './local-export.js';

export type ConnectionState = 'StandAlone' | 'Connecting' | 'Connected' | 'Disconnecting';
export type ReplicationState = 'Off' | 'Established' | 'SyncSource' | 'SyncTarget' | 'PausedSyncS' | 'PausedSyncT' | 'VerifyS' | 'VerifyT';

export interface PeerStatus {
  node: string;
  nodeId: number;
  role: Role | 'Unknown';
  connection: ConnectionState;
  replication: ReplicationState;
  peerDisk: DiskState | 'DUnknown';
  /** Bytes marked out of sync for this peer; null while no bitmap tracks this peer. */
  outOfSyncBytes: number | null;
  /** Progress of a running resync, 0..100; null when none runs. */
  syncDonePercent: number | null;
}

export interface NbdClientStatus {
  id: number;
  remote: string;
  tls: boolean;
  connectedSec: number;
}

export interface ResourceStatus {
  name: string;
  node: string;
  nodeId: number;
  role: Role;
  disk: DiskState;
  /** Size of the exported data area. */
  sizeBytes: number;
  nbd: {
    /** "127.0.0.1:10809", "[::1]:10809", "unix:/run/mirrorbd/r0.nbd" or null when none is configured. */
    address: string | null;
    clients: NbdClientStatus[];
  };
  peers: PeerStatus[];
  generation: {
    current: string;
    history: string[];
  };
  flags: string[];
  io: IoCounters;
  /** Seconds since `up`. */
  upSec: number;
}
