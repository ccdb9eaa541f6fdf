import net from 'node:net';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { PeerChannel, truncateUtf8 } from '../../src/replication/channel.js';
import { OWN_FEATURES, newSessionId, openChannel, type OpenedChannel, type OpeningOptions } from '../../src/replication/opening.js';
import {
  FEATURES,
  PacketDecoder,
  authPurpose,
  computeResponse,
  PROTOCOL_VERSION_MAX,
  PROTOCOL_VERSION_MIN,
  encodePacket,
  type HelloPacket,
  type Packet,
} from '../../src/replication/wire/index.js';
import { deferred, until } from '../helpers/controlled-store.js';

const log = pino({ level: 'silent' });
const RESOURCE = 'r0';

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** A listening server on 127.0.0.1:0 and a connected client socket: both ends of one TCP connection. */
async function socketPair(): Promise<{ client: net.Socket; server: net.Socket }> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const accepted = deferred<net.Socket>();
  srv.once('connection', (s) => accepted.resolve(s));
  const { port } = srv.address() as net.AddressInfo;
  const client = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
  });
  const server = await accepted.promise;
  srv.close();
  cleanups.push(() => {
    client.destroy();
    server.destroy();
  });
  return { client, server };
}

function closed(s: net.Socket): Promise<void> {
  if (s.destroyed) return Promise.resolve();
  return new Promise((resolve) => s.once('close', () => resolve()));
}

interface Ends {
  dialer: PeerChannel;
  acceptor: PeerChannel;
  client: net.Socket;
  server: net.Socket;
  dialed: Promise<OpenedChannel>;
  accepted: Promise<OpenedChannel>;
  sessionId: bigint;
}

async function open(
  dial: Partial<OpeningOptions> & { peerNodeId?: number } = {},
  accept: Partial<OpeningOptions> = {},
): Promise<Ends> {
  const { client, server } = await socketPair();
  const dialer = new PeerChannel(client, 'data', log);
  const acceptor = new PeerChannel(server, null, log);
  const sessionId = newSessionId();
  const base = { resource: RESOURCE, secret: 'change-me', timeoutMs: 2000, integrity: false };
  const accepted = openChannel(acceptor, { ...base, ownNodeId: 1, isPeer: (id) => id === 0, ...accept });
  const dialed = openChannel(dialer, {
    ...base,
    ownNodeId: 0,
    dial: { channel: 'data', sessionId, peerNodeId: dial.peerNodeId ?? 1 },
    ...dial,
  });
  // a rejection is asserted by each test; keep unasserted ones from surfacing as unhandled
  accepted.catch(() => undefined);
  dialed.catch(() => undefined);
  return { dialer, acceptor, client, server, dialed, accepted, sessionId };
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(Error);
  return e as Error;
}

describe('channel opening: HELLO and HMAC authentication (G8)', () => {
  it('right secret: both sides are authenticated and agree on the session', async () => {
    const e = await open();
    const [d, a] = await Promise.all([e.dialed, e.accepted]);
    expect(d).toEqual({ peerNodeId: 1, channel: 'data', sessionId: e.sessionId, version: PROTOCOL_VERSION_MAX, features: OWN_FEATURES });
    expect(a).toEqual({ peerNodeId: 0, channel: 'data', sessionId: e.sessionId, version: PROTOCOL_VERSION_MAX, features: OWN_FEATURES });
    expect(e.acceptor.channel).toBe('data');
    expect(e.dialer.isClosed).toBe(false);
    expect(e.acceptor.isClosed).toBe(false);
  });

  it('integrity is agreed only when both sides configured it', async () => {
    const both = await open({ integrity: true }, { integrity: true });
    expect((await both.dialed).features & FEATURES.INTEGRITY_CRC32C).toBe(FEATURES.INTEGRITY_CRC32C);
    expect((await both.accepted).features & FEATURES.INTEGRITY_CRC32C).toBe(FEATURES.INTEGRITY_CRC32C);
    const one = await open({ integrity: true }, { integrity: false });
    expect((await one.dialed).features & FEATURES.INTEGRITY_CRC32C).toBe(0);
    expect((await one.accepted).features & FEATURES.INTEGRITY_CRC32C).toBe(0);
  });

  it('packets that follow the opening are held for the session, not lost', async () => {
    const e = await open();
    await Promise.all([e.dialed, e.accepted]);
    e.dialer.send({ kind: 'state', role: 'Primary', disk: 'UpToDate' });
    e.dialer.send({ kind: 'barrier', epoch: 3 });
    await new Promise((r) => setTimeout(r, 20));
    const got: Packet[] = [];
    e.acceptor.onPacket((p) => got.push(p));
    await until(() => got.length === 2, 2000, 'the held packets');
    expect(got).toEqual([
      { kind: 'state', role: 'Primary', disk: 'UpToDate' },
      { kind: 'barrier', epoch: 3 },
    ]);
  });

  it('wrong secret: both sides reject with a clear reason and the connection closes', async () => {
    const e = await open({ secret: 'one' }, { secret: 'two' });
    const [d, a] = await Promise.all([rejection(e.dialed), rejection(e.accepted)]);
    const clear = /failed authentication \(wrong or missing shared-secret\)/;
    expect(d.message).toMatch(clear);
    expect(a.message).toMatch(clear);
    await Promise.all([closed(e.client), closed(e.server)]);
    expect(e.dialer.isClosed && e.acceptor.isClosed).toBe(true);
  });

  it('a secret on one side only is refused too', async () => {
    const e = await open({ secret: '' }, { secret: 'change-me' });
    const [d, a] = await Promise.all([rejection(e.dialed), rejection(e.accepted)]);
    expect(`${d.message} | ${a.message}`).toMatch(/failed authentication/);
    await Promise.all([closed(e.client), closed(e.server)]);
  });

  it('a node-id that is not a peer of the resource is refused, and the dialer hears why', async () => {
    const e = await open({ ownNodeId: 2 }, { isPeer: (id) => id === 0 });
    const [d, a] = await Promise.all([rejection(e.dialed), rejection(e.accepted)]);
    expect(a.message).toBe('node-id 2 is not a peer of r0');
    expect(d.message).toMatch(/node-id 2 is not a peer of r0/);
    await Promise.all([closed(e.client), closed(e.server)]);
  });

  it('a peer claiming our own node-id is refused', async () => {
    const e = await open({ ownNodeId: 1, peerNodeId: 1 }, { isPeer: () => true });
    const a = await rejection(e.accepted);
    expect(a.message).toBe('node-id 1 is not a peer of r0');
    await rejection(e.dialed);
  });

  it('a HELLO for another resource is refused', async () => {
    const e = await open({ resource: 'r1' });
    const a = await rejection(e.accepted);
    expect(a.message).toBe('peer HELLO is for resource "r1", not "r0"');
    await rejection(e.dialed);
    await Promise.all([closed(e.client), closed(e.server)]);
  });

  it('the dialer refuses an answer from another node-id than the one it dialed', async () => {
    const e = await open({ peerNodeId: 3 });
    const d = await rejection(e.dialed);
    expect(d.message).toBe('dialed node-id 3 but node-id 1 answered');
    await rejection(e.accepted);
  });
});

describe('channel opening: raw bytes from a stranger', () => {
  /** An acceptor under test, and a raw socket to it whose received packets are decoded without any gate. */
  async function stranger(timeoutMs = 2000) {
    const { client, server } = await socketPair();
    const acceptor = new PeerChannel(server, null, log);
    const accepted = openChannel(acceptor, { resource: RESOURCE, ownNodeId: 1, secret: 's3cret', timeoutMs, integrity: false, isPeer: (id) => id === 0 });
    accepted.catch(() => undefined);
    const decoder = new PacketDecoder({ channel: 'any', phase: 'unchecked' });
    const got: Packet[] = [];
    client.on('data', (c: Buffer) => {
      decoder.push(c);
      for (let p = decoder.next(); p !== null; p = decoder.next()) got.push(p);
    });
    const send = (...ps: Packet[]): void => {
      client.write(Buffer.concat(ps.flatMap((p) => encodePacket(p))));
    };
    return { client, server, acceptor, accepted, got, send };
  }

  const hello = (sessionId: bigint): HelloPacket => ({
    kind: 'hello',
    protocolMin: PROTOCOL_VERSION_MIN,
    protocolMax: PROTOCOL_VERSION_MAX,
    features: OWN_FEATURES,
    sessionId,
    nodeId: 0,
    channel: 'data',
    resource: RESOURCE,
  });
  const data: Packet = { kind: 'data', seq: 1, epoch: 1, offset: 0, flags: 0, payload: Buffer.alloc(4096, 0x66) };

  it('a DATA packet instead of the first HELLO closes the connection', async () => {
    const s = await stranger();
    s.send(data);
    const e = await rejection(s.accepted);
    expect(e.message).toMatch(/protocol violation: data before authentication completed \(expected hello\)/);
    await closed(s.client);
    expect(s.got.at(-1)).toMatchObject({ kind: 'disconnect' });
  });

  it('a DATA packet after HELLO, before authenticating, closes the connection', async () => {
    const s = await stranger();
    s.send(hello(42n), data);
    const e = await rejection(s.accepted);
    expect(e.message).toMatch(/data before authentication completed \(expected auth-challenge\)/);
    await closed(s.client);
    // the acceptor answered the HELLO, then said why it hung up
    expect(s.got.map((p) => p.kind)).toEqual(['hello', 'auth-challenge', 'disconnect']);
    expect((s.got[2] as { reason: string }).reason).toMatch(/data before authentication completed/);
  });

  it('a right AUTH_RESPONSE followed by DATA instead of AUTH_OK closes the connection; nothing is authenticated', async () => {
    const s = await stranger();
    const sessionId = 7n;
    s.send(hello(sessionId), { kind: 'auth-challenge', challenge: Buffer.alloc(32, 1) });
    await until(() => s.got.some((p) => p.kind === 'auth-challenge'), 2000, "the acceptor's challenge");
    const theirs = s.got.find((p) => p.kind === 'auth-challenge') as { challenge: Buffer };
    const response = computeResponse('s3cret', theirs.challenge, 0, 1, authPurpose(RESOURCE, 'data', sessionId));
    s.send({ kind: 'auth-response', response }, data);
    const e = await rejection(s.accepted);
    expect(e.message).toMatch(/data before authentication completed \(expected auth-ok\)/);
    await closed(s.client);
    // it had verified us (AUTH_OK sent) but still refused to go on without ours
    expect(s.got.map((p) => p.kind)).toEqual(['hello', 'auth-challenge', 'auth-response', 'auth-ok', 'disconnect']);
  });

  it('a HELLO again after authentication is a violation too', async () => {
    const s = await stranger();
    const sessionId = 9n;
    s.send(hello(sessionId), { kind: 'auth-challenge', challenge: Buffer.alloc(32, 2) });
    await until(() => s.got.some((p) => p.kind === 'auth-challenge'), 2000, "the acceptor's challenge");
    const theirs = s.got.find((p) => p.kind === 'auth-challenge') as { challenge: Buffer };
    s.send(
      { kind: 'auth-response', response: computeResponse('s3cret', theirs.challenge, 0, 1, authPurpose(RESOURCE, 'data', sessionId)) },
      { kind: 'auth-ok' },
    );
    const opened = await s.accepted;
    expect(opened).toMatchObject({ peerNodeId: 0, sessionId });
    const reasons: string[] = [];
    s.acceptor.onClose((r) => reasons.push(r));
    s.acceptor.onPacket(() => undefined);
    s.send(hello(sessionId));
    await closed(s.client);
    expect(reasons[0]).toMatch(/hello after authentication completed/);
  });

  it('a response computed for another session is refused (no replay across connections)', async () => {
    const s = await stranger();
    s.send(hello(11n), { kind: 'auth-challenge', challenge: Buffer.alloc(32, 3) });
    await until(() => s.got.some((p) => p.kind === 'auth-challenge'), 2000, "the acceptor's challenge");
    const theirs = s.got.find((p) => p.kind === 'auth-challenge') as { challenge: Buffer };
    s.send({ kind: 'auth-response', response: computeResponse('s3cret', theirs.challenge, 0, 1, authPurpose(RESOURCE, 'data', 12n)) });
    const e = await rejection(s.accepted);
    expect(e.message).toBe('node-id 0 failed authentication (wrong or missing shared-secret)');
    await closed(s.client);
  });

  it('silence: the opening times out with a reason and closes the connection', async () => {
    const s = await stranger(100);
    const e = await rejection(s.accepted);
    expect(e.message).toBe('no authenticated HELLO within 100 ms');
    await closed(s.client);
  });

  it('the stranger hanging up mid-opening rejects with the reason', async () => {
    const s = await stranger();
    s.send(hello(5n));
    await until(() => s.got.length >= 2, 2000, "the acceptor's HELLO");
    s.client.destroy();
    const e = await rejection(s.accepted);
    expect(e.message).toMatch(/^connection lost during the opening: /);
  });
});

describe('PeerChannel', () => {
  it('truncateUtf8 never splits a character', () => {
    expect(truncateUtf8('abc', 10)).toBe('abc');
    expect(truncateUtf8('aé', 2)).toBe('a');
    expect(truncateUtf8('€€', 5)).toBe('€');
    expect(Buffer.byteLength(truncateUtf8('x'.repeat(300), 255))).toBe(255);
  });

  it('a long close reason reaches the peer cut to 255 bytes', async () => {
    const e = await open();
    await Promise.all([e.dialed, e.accepted]);
    const reasons = deferred<string>();
    e.acceptor.onClose((r) => reasons.resolve(r));
    e.dialer.close('é'.repeat(200));
    const r = await reasons.promise;
    expect(r.startsWith('peer said: ')).toBe(true);
    const said = r.slice('peer said: '.length);
    expect(Buffer.byteLength(said)).toBeLessThanOrEqual(255);
    expect(said).toBe('é'.repeat(127));
    await Promise.all([closed(e.client), closed(e.server)]);
  });
});
