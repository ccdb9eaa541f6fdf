/**
 * What two peers agree on from their HELLO, PARAMS and SIZES packets. Pure;
 * the link calls these and disconnects with the returned reason when there is
 * no agreement.
 */
import type { HelloPacket, ParamsPacket, SizesPacket } from './packets.js';
import { PARAMS_FLAGS } from './constants.js';

/** The highest version both speak, or null when the ranges do not meet. */
export function negotiateVersion(own: Pick<HelloPacket, 'protocolMin' | 'protocolMax'>, peer: Pick<HelloPacket, 'protocolMin' | 'protocolMax'>): number | null {
  const v = Math.min(own.protocolMax, peer.protocolMax);
  return v >= Math.max(own.protocolMin, peer.protocolMin) ? v : null;
}

/** Features both offered: the intersection (unknown bits of a newer peer drop out). */
export function negotiateFeatures(own: number, peer: number): number {
  return (own & peer) >>> 0;
}

/**
 * Null when the two PARAMS agree, else why not. The replication protocol and
 * the algorithms must be configured alike on both nodes (a sync with
 * different checksum algorithms would find every block different); both
 * sides discarding their data leaves nobody to sync from.
 */
export function paramsMismatch(own: Omit<ParamsPacket, 'kind'>, peer: Omit<ParamsPacket, 'kind'>): string | null {
  if (own.protocol !== peer.protocol) return `replication protocol differs (ours ${own.protocol}, peer's ${peer.protocol})`;
  if (own.csumsAlg !== peer.csumsAlg) return `csums-alg differs (ours "${own.csumsAlg}", peer's "${peer.csumsAlg}")`;
  if (own.verifyAlg !== peer.verifyAlg) return `verify-alg differs (ours "${own.verifyAlg}", peer's "${peer.verifyAlg}")`;
  if (own.flags & peer.flags & PARAMS_FLAGS.DISCARD_MY_DATA) return 'both sides were told to discard their data';
  return null;
}

/**
 * The sizes the connection works with: the smaller data size of the sides
 * that have a disk (a diskless side sends 0), and the smaller payload limit.
 */
export function agreeSizes(own: Omit<SizesPacket, 'kind'>, peer: Omit<SizesPacket, 'kind'>): { dataSizeBytes: number; maxPayloadBytes: number } {
  const sizes = [own.dataSizeBytes, peer.dataSizeBytes].filter((s) => s > 0);
  return {
    dataSizeBytes: sizes.length === 0 ? 0 : Math.min(...sizes),
    maxPayloadBytes: Math.min(own.maxPayloadBytes, peer.maxPayloadBytes),
  };
}
