import net from 'node:net';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { FLUSH_BYTES, PeerChannel } from '../../src/replication/channel.js';
import { PacketDecoder, type Packet } from '../../src/replication/wire/index.js';

const log = pino({ level: 'silent' });
const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** A PeerChannel on one end of a loopback connection; the other end collects what arrives, decoded. */
async function link(schedule?: (fn: () => void) => void) {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const client = net.createConnection({ host: '127.0.0.1', port });
  await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  const peer = await accepted;
  server.close();
  const decoder = new PacketDecoder({ channel: 'any', phase: 'unchecked' });
  const got: Packet[] = [];
  peer.on('data', (c: Buffer) => {
    decoder.push(c);
    for (let p = decoder.next(); p !== null; p = decoder.next()) got.push(p);
  });
  const ch = new PeerChannel(client, 'data', log, undefined, schedule);
  cleanups.push(() => {
    client.destroy();
    peer.destroy();
  });
  const writes: Buffer[] = [];
  const write = client.write.bind(client) as (b: Buffer, cb?: () => void) => boolean;
  (client as unknown as { write: (b: Buffer, cb?: () => void) => boolean }).write = (b, cb) => {
    writes.push(b);
    return write(b, cb);
  };
  return { ch, client, peer, got, writes };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > 2000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

describe('PeerChannel: packets of one loop turn leave together', () => {
  it('small packets sent in one turn go to the socket in one write, in order', async () => {
    const { ch, got, writes } = await link();
    const sent: Packet[] = [];
    for (let id = 1; id <= 50; id++) sent.push({ kind: 'rs-data-request', id, offset: id * 4096, length: 4096 });
    sent.push({ kind: 'rs-write-ack', id: 7 });
    for (const p of sent) ch.send(p);
    expect(writes).toHaveLength(0); // nothing before the flush
    await until(() => got.length === sent.length, 'every packet');
    expect(writes).toHaveLength(1);
    expect(got).toEqual(sent);
  });

  it('a payload is written as it is (not copied) and its whenWritten runs once the socket wrote it', async () => {
    const { ch, got, writes } = await link();
    const payload = Buffer.alloc(64 * 1024, 0xab);
    let written = 0;
    ch.send({ kind: 'rs-data-request', id: 1, offset: 0, length: 4096 });
    ch.send({ kind: 'rs-data-reply', id: 1, offset: 0, payload, whenWritten: () => written++ });
    ch.send({ kind: 'rs-write-ack', id: 1 });
    expect(written).toBe(0);
    await until(() => got.length === 3 && written === 1, 'the packets and the callback');
    expect(writes.some((b) => b === payload)).toBe(true);
    expect(got.map((p) => p.kind)).toEqual(['rs-data-request', 'rs-data-reply', 'rs-write-ack']);
    expect((got[1] as Extract<Packet, { kind: 'rs-data-reply' }>).payload.equals(payload)).toBe(true);
  });

  it(`a queue of ${FLUSH_BYTES} bytes is flushed at once, without waiting for the turn to end`, async () => {
    let scheduled = 0;
    const { ch, writes } = await link(() => scheduled++);
    const payload = Buffer.alloc(FLUSH_BYTES);
    ch.send({ kind: 'rs-data-reply', id: 1, offset: 0, payload });
    expect(writes.length).toBeGreaterThan(0);
    expect(scheduled).toBe(0);
  });

  it('close sends what was queued, then DISCONNECT; a send after close runs whenWritten at once', async () => {
    const { ch, got } = await link();
    ch.send({ kind: 'rs-write-ack', id: 1 });
    ch.send({ kind: 'rs-write-ack', id: 2 });
    ch.close('going away');
    await until(() => got.length === 3, 'the packets and DISCONNECT');
    expect(got).toEqual([
      { kind: 'rs-write-ack', id: 1 },
      { kind: 'rs-write-ack', id: 2 },
      { kind: 'disconnect', reason: 'going away' },
    ]);
    let called = false;
    expect(ch.send({ kind: 'rs-data-reply', id: 3, offset: 0, payload: Buffer.alloc(8), whenWritten: () => (called = true) })).toBe(false);
    expect(called).toBe(true);
  });
});
