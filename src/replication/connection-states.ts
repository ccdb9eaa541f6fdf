/**
 * The connection and replication states of one peer, as DRBD names them,
 * with their tables of legal edges and one transition function each.
 *
 *   StandAlone --connect--> Connecting --session up--> Connected
 *        ^                      ^  |                     |
 *        |                      |  +--(retry)            |
 *        +---disconnect / split brain / fatal mismatch---+
 *                               +-------- link lost -----+
 */
import { MirrorError } from '../errors.js';

export type ConnectionState = 'StandAlone' | 'Connecting' | 'Connected' | 'Disconnecting';
export type ReplicationState = 'Off' | 'Established' | 'SyncSource' | 'SyncTarget' | 'PausedSyncS' | 'PausedSyncT' | 'VerifyS' | 'VerifyT';

export const CONNECTION_EDGES: Readonly<Record<ConnectionState, readonly ConnectionState[]>> = {
  StandAlone: ['Connecting'],
  Connecting: ['Connected', 'StandAlone', 'Disconnecting'],
  Connected: ['Connecting', 'Disconnecting', 'StandAlone'],
  Disconnecting: ['StandAlone', 'Connecting'],
};

export const REPLICATION_EDGES: Readonly<Record<ReplicationState, readonly ReplicationState[]>> = {
  Off: ['Established', 'SyncSource', 'SyncTarget'],
  Established: ['Off', 'SyncSource', 'SyncTarget', 'VerifyS', 'VerifyT'],
  SyncSource: ['Off', 'Established', 'PausedSyncS'],
  SyncTarget: ['Off', 'Established', 'PausedSyncT'],
  PausedSyncS: ['Off', 'SyncSource'],
  PausedSyncT: ['Off', 'SyncTarget'],
  VerifyS: ['Off', 'Established'],
  VerifyT: ['Off', 'Established'],
};

function check<S extends string>(kind: string, edges: Readonly<Record<S, readonly S[]>>, from: S, to: S): S {
  if (from !== to && !edges[from].includes(to)) {
    throw new MirrorError('ERR_INTERNAL', `illegal ${kind} transition ${from} -> ${to}`, { from, to });
  }
  return to;
}

export function transitionConnection(from: ConnectionState, to: ConnectionState): ConnectionState {
  return check('connection', CONNECTION_EDGES, from, to);
}

export function transitionReplication(from: ReplicationState, to: ReplicationState): ReplicationState {
  return check('replication', REPLICATION_EDGES, from, to);
}
