/**
 * The shape of `mirrorbd status --json`: a stable, documented format
 * (docs/status.md). Add fields; never rename or remove one.
 */
import type { DiskState, Role } from './states.js';
import type { WireDiskState, WireRole } from '../replication/wire/index.js';
import type { IoCounters } from './local-export.js';

import type { ConnectionState, ReplicationState } from '../replication/connection-states.js';

export interface PeerStatus {
  node: string;
  nodeId: number;
  role: Role | WireRole | 'Unknown';
  connection: ConnectionState;
  replication: ReplicationState;
  peerDisk: DiskState | WireDiskState | 'DUnknown';
  /** Bytes marked out of sync for this peer; null while no bitmap tracks this peer. */
  outOfSyncBytes: number | null;
  /** Progress of a running resync, 0..100; null when none runs. */
  syncDonePercent: number | null;
  /** The running resync: bytes copied and to copy, rate, estimated seconds left. */
  resync: { doneBytes: number; totalBytes: number; bytesPerSec: number; etaSec: number | null; paused: boolean } | null;
  /** The running or last online verify with this peer; outOfSyncBlocks are 4 KiB blocks found different. */
  verify: { doneBytes: number; totalBytes: number; outOfSyncBlocks: number; finished: boolean } | null;
  /** The last sync decision at connect: "strategy by rule". */
  lastDecision: string | null;
  /** Why the last connection attempt or session ended, while not connected. */
  lastError: string | null;
  /** The last handshake found a split brain; the connection stays StandAlone. */
  splitBrain: boolean;
  /** The peer said it was going down; it does not count against quorum while away. */
  leftGracefully: boolean;
  /** The peer has no disk (a witness). */
  diskless: boolean;
  /** Bytes on the wire with this peer since up (both channels). */
  bytesSent: number;
  bytesReceived: number;
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
  /** Primary, Secondary, or Promoting / Demoting while a role change is under way. */
  role: Role;
  /** Why the role last changed ("primary", "auto-promote: ...", "secondary --force"). */
  roleReason: string;
  disk: DiskState;
  /** This node has no disk by configuration (a witness). */
  diskless: boolean;
  /** Whether this node's partition has quorum, and the count behind it. */
  quorum: { have: boolean; votes: number; needed: number; voters: number; reason: string; setting: string; onNoQuorum: string };
  /** Why I/O is suspended now (e.g. "no quorum"); empty while it flows. */
  suspended: string[];
  promotion: {
    /** auto-promote is on and quorum is configured: a lost Primary is failed over. */
    autoPromote: boolean;
    /** Nodes that could be promoted now, best first (UpToDate first, then node-id). */
    candidates: string[];
    reason: string;
    /** A Primary was lost and no node has taken over yet. */
    failoverPending: boolean;
    lastFailoverChoice: string | null;
    /** The node whose promotion this node agreed to and that has not committed yet. */
    preparedFor: string | null;
  };
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
