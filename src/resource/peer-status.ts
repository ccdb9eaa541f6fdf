/**
 * A peer's facts from the replication layer, shaped for `status --json`.
 */
import type { NodeConfig } from '../config/model.js';
import type { PeerStatusFacts } from '../replication/peer.js';
import type { PeerStatus } from './status.js';

export function peerStatus(node: NodeConfig, facts: PeerStatusFacts | null, nowMs: number): PeerStatus {
  if (facts === null) {
    return {
      node: node.name,
      nodeId: node.nodeId,
      role: 'Unknown',
      connection: 'StandAlone',
      replication: 'Off',
      peerDisk: 'DUnknown',
      outOfSyncBytes: null,
      syncDonePercent: null,
      resync: null,
      verify: null,
      lastDecision: null,
      lastError: null,
      splitBrain: false,
      leftGracefully: false,
      diskless: node.disk === null,
      bytesSent: 0,
      bytesReceived: 0,
    };
  }
  const r = facts.resync;
  let resync: PeerStatus['resync'] = null;
  let syncDonePercent: number | null = null;
  if (r !== null) {
    const elapsedSec = Math.max(0.001, (nowMs - r.startedAtMs) / 1000);
    const bytesPerSec = r.doneBytes / elapsedSec;
    const left = Math.max(0, r.totalBytes - r.doneBytes);
    syncDonePercent = r.totalBytes === 0 ? 100 : Math.min(100, (100 * r.doneBytes) / r.totalBytes);
    resync = {
      doneBytes: r.doneBytes,
      totalBytes: r.totalBytes,
      bytesPerSec: Math.round(bytesPerSec),
      etaSec: bytesPerSec > 0 ? Math.round(left / bytesPerSec) : null,
      paused: r.paused,
    };
  }
  return {
    node: facts.node,
    nodeId: facts.nodeId,
    role: facts.role,
    connection: facts.connection,
    replication: facts.replication,
    peerDisk: facts.peerDisk,
    outOfSyncBytes: facts.outOfSyncBytes,
    syncDonePercent,
    resync,
    verify: facts.verify
      ? {
          doneBytes: facts.verify.doneBytes,
          totalBytes: facts.verify.totalBytes,
          outOfSyncBlocks: facts.verify.outOfSyncBlocks,
          finished: facts.verify.finished,
        }
      : null,
    lastDecision: facts.lastDecision,
    lastError: facts.lastError,
    splitBrain: facts.splitBrain,
    leftGracefully: facts.leftGracefully,
    diskless: facts.diskless,
    bytesSent: facts.bytesSent,
    bytesReceived: facts.bytesReceived,
  };
}
