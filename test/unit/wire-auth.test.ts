import { describe, expect, it } from 'vitest';
import { authPurpose, computeResponse, makeChallenge, verifyResponse } from '../../src/replication/wire/auth.js';

const SECRET = 'change-me';
const PURPOSE = authPurpose('r0', 'data', 0x0123_4567_89ab_cdefn);

describe('peer authentication (HMAC challenge-response)', () => {
  it('makes fresh 32-byte challenges', () => {
    const a = makeChallenge();
    expect(a).toHaveLength(32);
    expect(makeChallenge().equals(a)).toBe(false);
  });

  it('the right secret verifies: node 1 answers node 0', () => {
    const challenge = makeChallenge(); // node 0 sent it
    const response = computeResponse(SECRET, challenge, 1, 0, PURPOSE); // node 1 answers
    expect(response).toHaveLength(32);
    expect(verifyResponse(SECRET, challenge, response, 0, 1, PURPOSE)).toBe(true);
    // A Buffer secret with the same bytes is the same secret.
    expect(verifyResponse(Buffer.from(SECRET), challenge, response, 0, 1, PURPOSE)).toBe(true);
  });

  it('a wrong secret fails', () => {
    const challenge = makeChallenge();
    const response = computeResponse('guess', challenge, 1, 0, PURPOSE);
    expect(verifyResponse(SECRET, challenge, response, 0, 1, PURPOSE)).toBe(false);
  });

  it('swapped node ids fail: a response is valid in one direction only', () => {
    const challenge = makeChallenge();
    const response = computeResponse(SECRET, challenge, 0, 1, PURPOSE);
    expect(verifyResponse(SECRET, challenge, response, 0, 1, PURPOSE)).toBe(false);
    expect(verifyResponse(SECRET, challenge, computeResponse(SECRET, challenge, 2, 0, PURPOSE), 0, 1, PURPOSE)).toBe(false);
  });

  it('a reflected response fails: our own answer to our challenge, relayed back', () => {
    // An attacker posing as node 1 forwards node 0's challenge to node 0 on a
    // second connection (where it plays node 1's part) and relays node 0's answer.
    const challenge = makeChallenge();
    const reflected = computeResponse(SECRET, challenge, 0, 1, PURPOSE);
    expect(verifyResponse(SECRET, challenge, reflected, 0, 1, PURPOSE)).toBe(false);
    // Claiming our own node id gets nowhere either.
    expect(verifyResponse(SECRET, challenge, computeResponse(SECRET, challenge, 0, 0, PURPOSE), 0, 0, PURPOSE)).toBe(false);
  });

  it('a response for another purpose (resource, channel, session) or challenge fails', () => {
    const challenge = makeChallenge();
    const response = computeResponse(SECRET, challenge, 1, 0, PURPOSE);
    expect(verifyResponse(SECRET, challenge, response, 0, 1, authPurpose('r0', 'meta', 0x0123_4567_89ab_cdefn))).toBe(false);
    expect(verifyResponse(SECRET, challenge, response, 0, 1, authPurpose('r1', 'data', 0x0123_4567_89ab_cdefn))).toBe(false);
    expect(verifyResponse(SECRET, challenge, response, 0, 1, authPurpose('r0', 'data', 1n))).toBe(false);
    expect(verifyResponse(SECRET, makeChallenge(), response, 0, 1, PURPOSE)).toBe(false);
  });

  it('a response of the wrong length fails without throwing', () => {
    const challenge = makeChallenge();
    const response = computeResponse(SECRET, challenge, 1, 0, PURPOSE);
    expect(verifyResponse(SECRET, challenge, response.subarray(0, 31), 0, 1, PURPOSE)).toBe(false);
    expect(verifyResponse(SECRET, challenge, Buffer.alloc(0), 0, 1, PURPOSE)).toBe(false);
  });

  it('the purpose bytes are as documented', () => {
    expect(PURPOSE.toString('hex')).toBe(Buffer.from('r0\0data\0', 'latin1').toString('hex') + '0123456789abcdef');
  });

  it('matches the documented MAC input (a second implementation can check against this)', async () => {
    const { createHmac } = await import('node:crypto');
    const challenge = Buffer.alloc(32, 0xab);
    const msg = Buffer.concat([Buffer.from('MBDP-AUTH-1'), Buffer.from([1, 0, 0, PURPOSE.length]), PURPOSE, challenge]);
    expect(computeResponse(SECRET, challenge, 1, 0, PURPOSE)).toEqual(createHmac('sha256', SECRET).update(msg).digest());
  });
});

describe('peer authentication without a configured secret', () => {
  it('runs with an empty key (one code path; proves nothing about the peer)', () => {
    const challenge = makeChallenge();
    expect(verifyResponse('', challenge, computeResponse('', challenge, 1, 0, PURPOSE), 0, 1, PURPOSE)).toBe(true);
    expect(verifyResponse('', challenge, computeResponse('x', challenge, 1, 0, PURPOSE), 0, 1, PURPOSE)).toBe(false);
  });
});
