/**
 * Peer authentication: HMAC challenge-response over the shared secret
 * (G8). Each side sends a random challenge; the other answers with
 * HMAC-SHA-256(secret, domain || responder id || challenger id || purpose ||
 * challenge). Pure apart from makeChallenge's randomness.
 *
 * Why each part of the MAC input is there:
 * - the domain string ties the MAC to this protocol and version;
 * - responder and challenger node ids, in that order, make a response valid
 *   in one direction only: an attacker who relays our own challenge back to
 *   us on a second connection gets a response computed with the ids the
 *   other way round, which our check refuses (a reflection attack);
 * - the purpose (resource, channel, session) keeps a response for one
 *   resource or connection from being replayed on another.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { AUTH_BYTES, MAX_NODE_ID } from './constants.js';
import type { Channel } from './packets.js';

/** Domain separation: protocol and auth scheme version. */
const AUTH_DOMAIN = Buffer.from('MBDP-AUTH-1', 'ascii');

/** 32 fresh random bytes for an AUTH_CHALLENGE. */
export function makeChallenge(): Buffer {
  return randomBytes(AUTH_BYTES);
}

/**
 * The canonical purpose of one connection: resource name (UTF-8), 0x00,
 * channel ("data" or "meta"), 0x00, session id (u64 big-endian).
 */
export function authPurpose(resource: string, channel: Channel, sessionId: bigint): Buffer {
  const name = Buffer.from(resource, 'utf8');
  const b = Buffer.alloc(name.length + 1 + channel.length + 1 + 8);
  name.copy(b, 0);
  b.write(channel, name.length + 1, 'ascii');
  b.writeBigUInt64BE(sessionId, b.length - 8);
  return b;
}

/**
 * The AUTH_RESPONSE that `ownNodeId` sends to answer the challenge of
 * `peerNodeId`.
 */
export function computeResponse(
  secret: string | Buffer,
  challenge: Buffer,
  ownNodeId: number,
  peerNodeId: number,
  purpose: string | Buffer,
): Buffer {
  checkNodeId(ownNodeId);
  checkNodeId(peerNodeId);
  const p = typeof purpose === 'string' ? Buffer.from(purpose, 'utf8') : purpose;
  if (p.length > 0xffff) throw new RangeError(`auth purpose of ${p.length} bytes is too long`);
  const ids = Buffer.from([ownNodeId, peerNodeId, p.length >>> 8, p.length & 0xff]);
  return createHmac('sha256', secret).update(AUTH_DOMAIN).update(ids).update(p).update(challenge).digest();
}

/**
 * Did `peerNodeId` answer our challenge (sent by `ownNodeId`) with the right
 * secret? Constant-time in the response. False for a response of the wrong
 * length and when both ids are equal (a peer may not claim to be us).
 */
export function verifyResponse(
  secret: string | Buffer,
  challenge: Buffer,
  response: Buffer,
  ownNodeId: number,
  peerNodeId: number,
  purpose: string | Buffer,
): boolean {
  if (ownNodeId === peerNodeId || response.length !== AUTH_BYTES || challenge.length !== AUTH_BYTES) return false;
  const expected = computeResponse(secret, challenge, peerNodeId, ownNodeId, purpose);
  return timingSafeEqual(expected, response);
}

function checkNodeId(id: number): void {
  if (!Number.isInteger(id) || id < 0 || id > MAX_NODE_ID) throw new RangeError(`node id ${id} is not 0..${MAX_NODE_ID}`);
}
