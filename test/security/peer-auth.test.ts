/**
 * Peer authentication against running daemons (G8): whoever connects to a
 * node's replication port must prove it knows the shared secret before the
 * node acts on anything else it sends. Raw clients play the attacker (a
 * DATA packet up front, a wrong or missing secret, an answer borrowed from
 * another node); a second mirrorbd node with the wrong secret plays the
 * misconfigured peer. Each time: the connection is closed, the daemon logs
 * why, not one byte of the attacker's payload reaches the disk, and the
 * daemon goes on serving the real peer.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { makePair, statusOf, upPair, waitForStatus, type Pair, type StatusJson } from '../helpers/pair.js';
import { mustSucceed, runCli } from '../helpers/single-node.js';
import { newSessionId } from '../../src/replication/opening.js';
import { authPurpose, computeResponse, type Packet } from '../../src/replication/wire/index.js';
import { PeerWire, fileContains, helloAs, logRecords, nbdWrite, waitForLog, type LogRecord } from './support.js';

/** What the attacker wants on the disk: random, so it cannot be there by chance. */
const ATTACK = randomBytes(4096);
/** Where the attacker aims it (data offset 1 MiB). */
const ATTACK_OFFSET = 1024 * 1024;
const attackData: Packet = { kind: 'data', seq: 1, epoch: 1, offset: ATTACK_OFFSET, flags: 0, payload: ATTACK };

const refused = (reason: RegExp) => (r: LogRecord): boolean => r.msg === 'refused a peer connection' && reason.test(String(r.reason));

describe('a raw client on the replication port of a node that requires a shared secret', () => {
  // alpha (node-id 0) stays down: the attacker poses as alpha to beta (node-id 1),
  // which accepts alpha's connections; at the end the real alpha connects.
  let p: Pair;

  beforeAll(async () => {
    p = await makePair({ net: 'shared-secret "right";' });
    for (const n of p.nodes) await mustSucceed(n.cli('create-md', 'r0'));
    await mustSucceed(p.beta.cli('up', 'r0'));
  });
  afterAll(async () => {
    await p?.stop();
  });

  const beta = (): Promise<PeerWire> => PeerWire.open('127.0.0.1', p.beta.peerPort);

  /** The attacker's bytes are nowhere on beta's disk and beta still answers, with no peer connected. */
  async function untouched(): Promise<void> {
    expect(await fileContains(p.beta.diskPath, ATTACK)).toBe(false);
    const s = await statusOf(p.beta);
    expect(s.peers[0]!.connection).not.toBe('Connected');
    expect(s.disk).toBe('Inconsistent');
  }

  it('(a) a DATA packet before any HELLO: closed at its header, never applied', async () => {
    const w = await beta();
    w.send(attackData);
    await w.conn.closed;
    expect(w.kinds()).toEqual(['disconnect']);
    expect(w.disconnectReason()).toMatch(/data before authentication completed \(expected hello\)/);
    await waitForLog(p.beta.runDir, 'beta', 'the refusal', refused(/data before authentication completed \(expected hello\)/));
    await untouched();
  });

  it('(a) HELLO and then DATA without authenticating: closed, never applied', async () => {
    const w = await beta();
    w.send(helloAs(0, 1n), attackData);
    await w.conn.closed;
    // beta answered the HELLO with its own and a challenge, and nothing more
    expect(w.kinds()).toEqual(['hello', 'auth-challenge', 'disconnect']);
    expect(w.disconnectReason()).toMatch(/data before authentication completed \(expected auth-challenge\)/);
    await waitForLog(p.beta.runDir, 'beta', 'the refusal', refused(/data before authentication completed \(expected auth-challenge\)/));
    await untouched();
  });

  it.each([
    ['(b) a wrong secret', 'wrong'],
    ['(c) no secret (what a node without shared-secret computes)', ''],
  ])('%s: refused at AUTH_RESPONSE; the AUTH_OK and DATA behind it are never read', async (_name, secret) => {
    const sessionId = newSessionId();
    const w = await beta();
    w.send(helloAs(0, sessionId), { kind: 'auth-challenge', challenge: randomBytes(32) });
    const theirs = await w.waitFor("beta's challenge", (x) => x.kind === 'auth-challenge');
    const challenge = (theirs as Extract<Packet, { kind: 'auth-challenge' }>).challenge;
    const response = computeResponse(secret, challenge, 0, 1, authPurpose('r0', 'data', sessionId));
    // The whole rest of the attack in one write: beta must stop at the response.
    w.send({ kind: 'auth-response', response }, { kind: 'auth-ok' }, attackData);
    await w.conn.closed;
    expect(w.kinds()).toEqual(['hello', 'auth-challenge', 'disconnect']);
    expect(w.disconnectReason()).toBe('node-id 0 failed authentication (wrong or missing shared-secret)');
    await waitForLog(p.beta.runDir, 'beta', 'the refusal', refused(/^node-id 0 failed authentication \(wrong or missing shared-secret\)$/));
    await untouched();
  });

  it('afterwards the real peer, with the secret, connects and replicates', async () => {
    await mustSucceed(p.alpha.cli('up', 'r0'));
    await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'Connected');
    await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established');
    const good = randomBytes(4096);
    await nbdWrite('127.0.0.1', p.alpha.nbdPort, ATTACK_OFFSET, good);
    // protocol C: the write was acknowledged once beta had written it
    expect(await fileContains(p.beta.diskPath, good)).toBe(true);
    expect(await fileContains(p.beta.diskPath, ATTACK)).toBe(false);
  });
});

describe('an attacker without the secret relaying between two nodes', () => {
  let p: Pair;
  afterAll(async () => {
    await p?.stop();
  });

  it("cannot get one node to answer the other's challenge for it", async () => {
    p = await makePair({ net: 'shared-secret "right";' });
    await upPair(p);
    await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'Connected');

    // To beta, as alpha: beta wants HMAC(secret, responder alpha, challenger beta, session S, cB).
    const sessionId = newSessionId();
    const toBeta = await PeerWire.open('127.0.0.1', p.beta.peerPort);
    toBeta.send(helloAs(0, sessionId), { kind: 'auth-challenge', challenge: randomBytes(32) });
    const cB = (await toBeta.waitFor("beta's challenge", (x) => x.kind === 'auth-challenge')) as Extract<Packet, { kind: 'auth-challenge' }>;

    // To alpha, as beta, same session, with beta's challenge: an acceptor that
    // answered before the other side proved itself would compute exactly that.
    const toAlpha = await PeerWire.open('127.0.0.1', p.alpha.peerPort);
    toAlpha.send(helloAs(1, sessionId), { kind: 'auth-challenge', challenge: cB.challenge });
    await toAlpha.waitFor("alpha's challenge", (x) => x.kind === 'auth-challenge');
    // We cannot answer alpha's challenge: alpha hangs up, saying why.
    toAlpha.send({ kind: 'auth-response', response: randomBytes(32) });
    await toAlpha.conn.closed;
    expect(toAlpha.disconnectReason()).toBe('node-id 1 failed authentication (wrong or missing shared-secret)');
    const borrowed = toAlpha.packets.find((x) => x.kind === 'auth-response') as Extract<Packet, { kind: 'auth-response' }> | undefined;

    // Relay whatever alpha gave (or a guess), then AUTH_OK and DATA.
    toBeta.send(
      { kind: 'auth-response', response: borrowed?.response ?? computeResponse('guess', cB.challenge, 0, 1, authPurpose('r0', 'data', sessionId)) },
      { kind: 'auth-ok' },
      attackData,
    );
    const outcome = await toBeta.waitFor("beta's verdict", (x) => x.kind === 'auth-ok' || x.kind === 'disconnect');
    expect(outcome.kind, 'beta accepted an answer alpha computed for the attacker').toBe('disconnect');
    expect(borrowed, 'alpha answered a challenge before the other side authenticated').toBeUndefined();
    await toBeta.conn.closed;
    await waitForLog(p.beta.runDir, 'beta', 'the refusal', refused(/^node-id 0 failed authentication/));
    await waitForLog(p.alpha.runDir, 'alpha', 'the refusal', refused(/^node-id 1 failed authentication/));

    // The real session was not disturbed and nothing of the attacker's landed.
    const s = await statusOf(p.alpha);
    expect(s.peers[0]!.connection).toBe('Connected');
    expect(await fileContains(p.beta.diskPath, ATTACK)).toBe(false);
  });
});

describe('a mirrorbd node without the right secret', () => {
  const pairs: Pair[] = [];
  afterEach(async () => {
    while (pairs.length > 0) await pairs.pop()!.stop();
  });

  it.each([
    ['a wrong shared-secret', 'shared-secret "wrong";'],
    ['no shared-secret', ''],
  ])('%s: never Connected, not a byte replicated', async (_name, betaSecret) => {
    const p = await makePair({ net: 'shared-secret "right";' });
    pairs.push(p);
    // beta's own copy of the config
    const betaConfig = path.join(p.dir, 'beta.conf');
    await fsp.writeFile(betaConfig, (await fsp.readFile(p.configFile, 'utf8')).replace('shared-secret "right";', betaSecret));
    const betaCli = (...args: string[]) => runCli(betaConfig, 'beta', args);

    await mustSucceed(p.alpha.cli('create-md', 'r0'));
    await mustSucceed(betaCli('create-md', 'r0'));
    await mustSucceed(p.alpha.cli('up', 'r0'));
    await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
    const written = randomBytes(4096);
    await nbdWrite('127.0.0.1', p.alpha.nbdPort, ATTACK_OFFSET, written);
    await mustSucceed(betaCli('up', 'r0'));

    // alpha dials every second (connect-int 1): two complete refusals prove
    // the retries fail the same way.
    await waitForLog(p.beta.runDir, 'beta', 'two refusals of alpha', refused(/^node-id 0 failed authentication/), 2);
    const a = await waitForStatus(p.alpha, (s) => /failed authentication/.test(lastError(s)));
    const b = JSON.parse((await mustSucceed(betaCli('status', 'r0', '--json'))).stdout)[0] as StatusJson;

    // Neither side ever reached Connected: every connection state change is logged.
    for (const n of ['alpha', 'beta'] as const) {
      const connected = (await logRecords(path.join(p.dir, `run-${n}`), n)).filter((r) => r.msg === 'connection state' && r.to === 'Connected');
      expect(connected, `${n} logged a Connected`).toEqual([]);
    }
    for (const s of [a, b]) {
      expect(s.peers[0]!.connection).toBe('Connecting');
      expect(bytes(s)).toEqual({ bytesSent: 0, bytesReceived: 0 });
    }
    expect(b.disk).toBe('Inconsistent');
    expect(await fileContains(p.alpha.diskPath, written)).toBe(true);
    expect(await fileContains(p.beta.diskPath, written)).toBe(false);
  });
});

function lastError(s: StatusJson): string {
  return (s.peers[0] as unknown as { lastError: string | null }).lastError ?? '';
}

function bytes(s: StatusJson): { bytesSent: number; bytesReceived: number } {
  const peer = s.peers[0] as unknown as { bytesSent: number; bytesReceived: number };
  return { bytesSent: peer.bytesSent, bytesReceived: peer.bytesReceived };
}
