/**
 * The opening of one channel: HELLO both ways, then the HMAC challenge and
 * response both ways (G8). Nothing but these four packets is accepted from a
 * peer until it has proven it knows the shared secret; the decoder's stream
 * gate enforces the order, this module checks the content.
 *
 * The dialing side speaks first (HELLO with a fresh session id and the
 * channel it opens); the accepting side answers with its own HELLO echoing
 * both. Each side then sends a challenge, answers the other's, and sends
 * AUTH_OK once the other's answer verified.
 *
 * The accepting side answers the dialer's challenge only after the dialer's
 * answer to its own verified. Anyone may connect to a node's port and claim
 * any node-id; an acceptor that answered first would compute, for a
 * stranger, exactly the answer a third node expects from it (the stranger
 * relays that node's challenge in the same session), and the stranger would
 * pass as this node there without knowing the secret. The dialer still
 * answers first, but it dials only the configured address of its peer.
 */
import assert from 'node:assert';
import { randomBytes } from 'node:crypto';
import type { PeerChannel } from './channel.js';
import {
  FEATURES,
  PROTOCOL_VERSION_MAX,
  PROTOCOL_VERSION_MIN,
  authPurpose,
  computeResponse,
  makeChallenge,
  negotiateFeatures,
  negotiateVersion,
  verifyResponse,
  type Channel,
  type HelloPacket,
  type Packet,
} from './wire/index.js';

/** What this implementation offers in HELLO (integrity only when configured). */
export const OWN_FEATURES = FEATURES.ZEROES | FEATURES.TRIM | FEATURES.RS_BATCH;

export interface OpeningOptions {
  resource: string;
  ownNodeId: number;
  /** The shared secret; '' when none is configured (the exchange still runs). */
  secret: string;
  timeoutMs: number;
  /** data-integrity-alg crc32c is configured here. */
  integrity: boolean;
  /** Dialer: the channel it opens and the session id of the pair. */
  dial?: { channel: Channel; sessionId: bigint; peerNodeId: number };
  /** Acceptor: is this node id a peer of ours for this resource? */
  isPeer?: (nodeId: number) => boolean;
}

export interface OpenedChannel {
  peerNodeId: number;
  channel: Channel;
  sessionId: bigint;
  version: number;
  /** FEATURES both offered. */
  features: number;
}

export function newSessionId(): bigint {
  return randomBytes(8).readBigUInt64BE(0);
}

function ownFeatures(o: OpeningOptions): number {
  return o.integrity ? OWN_FEATURES | FEATURES.INTEGRITY_CRC32C : OWN_FEATURES;
}

function hello(o: OpeningOptions, channel: Channel, sessionId: bigint): HelloPacket {
  return {
    kind: 'hello',
    protocolMin: PROTOCOL_VERSION_MIN,
    protocolMax: PROTOCOL_VERSION_MAX,
    features: ownFeatures(o),
    sessionId,
    nodeId: o.ownNodeId,
    channel,
    resource: o.resource,
  };
}

/**
 * Run the opening on a fresh channel. Resolves once both sides are
 * authenticated; rejects (and closes the channel with the reason) on a
 * wrong secret, a stranger, a version mismatch or the timeout.
 */
export function openChannel(ch: PeerChannel, o: OpeningOptions): Promise<OpenedChannel> {
  return new Promise((resolve, reject) => {
    const ourChallenge = makeChallenge();
    /** The acceptor keeps the dialer's challenge until the dialer has proven itself. */
    let theirChallenge: Buffer | null = null;
    let peer: HelloPacket | null = null;
    let version = 0;
    let theyVerifiedUs = false;
    let weVerifiedThem = false;
    let settled = false;

    const fail = (reason: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ch.close(reason);
      reject(new Error(reason));
    };
    const maybeDone = (): void => {
      if (settled || !theyVerifiedUs || !weVerifiedThem || peer === null) return;
      settled = true;
      // Whatever follows belongs to the session: hold it for its handler.
      ch.onPacket(null);
      clearTimeout(timer);
      resolve({
        peerNodeId: peer.nodeId,
        channel: peer.channel,
        sessionId: peer.sessionId,
        version,
        features: negotiateFeatures(ownFeatures(o), peer.features),
      });
    };
    const timer = setTimeout(() => fail(`no authenticated HELLO within ${o.timeoutMs} ms`), o.timeoutMs);
    timer.unref();
    ch.onClose((reason) => fail(`connection lost during the opening: ${reason}`));

    const purpose = (p: HelloPacket): Buffer => authPurpose(o.resource, p.channel, p.sessionId);

    ch.onPacket((p: Packet) => {
      switch (p.kind) {
        case 'hello': {
          if (p.resource !== o.resource) return fail(`peer HELLO is for resource "${p.resource}", not "${o.resource}"`);
          const v = negotiateVersion(hello(o, p.channel, p.sessionId), p);
          if (v === null) return fail(`no common protocol version (ours ${PROTOCOL_VERSION_MIN}..${PROTOCOL_VERSION_MAX}, peer's ${p.protocolMin}..${p.protocolMax})`);
          if (o.dial) {
            if (p.nodeId !== o.dial.peerNodeId) return fail(`dialed node-id ${o.dial.peerNodeId} but node-id ${p.nodeId} answered`);
            if (p.sessionId !== o.dial.sessionId || p.channel !== o.dial.channel) return fail('peer HELLO does not echo our session');
          } else {
            if (p.nodeId === o.ownNodeId || !(o.isPeer?.(p.nodeId) ?? false)) {
              return fail(`node-id ${p.nodeId} is not a peer of ${o.resource}`);
            }
            ch.send(hello(o, p.channel, p.sessionId));
            ch.send({ kind: 'auth-challenge', challenge: ourChallenge });
          }
          peer = p;
          version = v;
          ch.setIntegrity(false);
          return;
        }
        case 'auth-challenge':
          if (peer === null) return fail('AUTH_CHALLENGE before HELLO');
          if (o.dial) ch.send({ kind: 'auth-response', response: computeResponse(o.secret, p.challenge, o.ownNodeId, peer.nodeId, purpose(peer)) });
          else theirChallenge = p.challenge;
          return;
        case 'auth-response':
          if (peer === null) return fail('AUTH_RESPONSE before HELLO');
          if (!verifyResponse(o.secret, ourChallenge, p.response, o.ownNodeId, peer.nodeId, purpose(peer))) {
            return fail(`node-id ${peer.nodeId} failed authentication (wrong or missing shared-secret)`);
          }
          weVerifiedThem = true;
          if (!o.dial) {
            // The stream gate lets AUTH_RESPONSE in only after AUTH_CHALLENGE.
            assert(theirChallenge !== null, 'AUTH_RESPONSE before AUTH_CHALLENGE passed the stream gate');
            ch.send({ kind: 'auth-response', response: computeResponse(o.secret, theirChallenge, o.ownNodeId, peer.nodeId, purpose(peer)) });
          }
          ch.send({ kind: 'auth-ok' });
          return maybeDone();
        case 'auth-ok':
          theyVerifiedUs = true;
          return maybeDone();
        default:
          return fail(`unexpected ${p.kind} during the opening`);
      }
    });

    if (o.dial) {
      ch.send(hello(o, o.dial.channel, o.dial.sessionId));
      ch.send({ kind: 'auth-challenge', challenge: ourChallenge });
    }
  });
}
