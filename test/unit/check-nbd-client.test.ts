import { promises as fsp } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdClient, NbdCommandError, NbdConnectionLost } from '../../src/check/nbd-client.js';
import { SimpleReplyDecoder, applyInfo, parseGreeting, type ExportInfo, type SimpleReply } from '../../src/check/nbd-client-codec.js';
import { parseNbdUri, type NbdUri } from '../../src/check/nbd-uri.js';
import {
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EIO,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_SEND_FLUSH,
  NBD_OPT_GO,
  NBD_REP_ERR_UNKNOWN,
} from '../../src/nbd/constants.js';
import { HandshakeDecoder, encodeAck, encodeGreeting, encodeInfoExport, encodeOptionError, parseInfoRequest } from '../../src/nbd/handshake-codec.js';
import { writeSimpleReply } from '../../src/nbd/reply-codec.js';
import { RequestDecoder, type NbdRequest } from '../../src/nbd/request-decoder.js';
import { seededRandom } from '../helpers/seeded-random.js';

function simple(error: number, cookie: number, data?: Buffer): Buffer {
  const h = Buffer.alloc(16);
  writeSimpleReply(h, 0, error, 0, cookie);
  return data ? Buffer.concat([h, data]) : h;
}

describe('simple reply decoder', () => {
  // cookie 1: READ of 10 bytes; 2: WRITE; 3: READ of 4 that fails; 4: READ of 0.
  const lengths = new Map([
    [1, 10],
    [2, 0],
    [3, 4],
    [4, 0],
  ]);
  const stream = Buffer.concat([simple(0, 2), simple(0, 1, Buffer.from('0123456789')), simple(NBD_EIO, 3), simple(0, 4)]);
  const expected = [
    { cookie: 2, error: 0, data: null },
    { cookie: 1, error: 0, data: '0123456789' },
    { cookie: 3, error: NBD_EIO, data: null },
    { cookie: 4, error: 0, data: null },
  ];

  function decode(pieces: Buffer[], lookup = (c: number) => lengths.get(c)): { replies: unknown[]; violation: string | null } {
    const d = new SimpleReplyDecoder(lookup);
    const replies: unknown[] = [];
    const take = (r: SimpleReply): void => void replies.push({ ...r, data: r.data?.toString('latin1') ?? null });
    for (const p of pieces) {
      d.push(p);
      for (let r = d.next(); r !== null; r = d.next()) take(r);
    }
    return { replies, violation: d.violation };
  }

  it('decodes the stream split at every byte, and at every pair of points', () => {
    expect(decode([stream])).toEqual({ replies: expected, violation: null });
    for (let i = 0; i <= stream.length; i++) {
      expect(decode([stream.subarray(0, i), stream.subarray(i)]), `split at ${i}`).toEqual({ replies: expected, violation: null });
    }
    for (let i = 0; i <= stream.length; i += 3) {
      for (let j = i; j <= stream.length; j += 5) {
        const pieces = [stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)];
        expect(decode(pieces), `split at ${i}, ${j}`).toEqual({ replies: expected, violation: null });
      }
    }
  });

  it('decodes byte by byte and in seeded random pieces', () => {
    expect(decode([...stream].map((b) => Buffer.from([b])))).toEqual({ replies: expected, violation: null });
    const random = seededRandom(7);
    for (let round = 0; round < 50; round++) {
      const pieces: Buffer[] = [];
      for (let at = 0; at < stream.length; ) {
        const n = 1 + Math.floor(random() * 20);
        pieces.push(stream.subarray(at, at + n));
        at += n;
      }
      expect(decode(pieces)).toEqual({ replies: expected, violation: null });
    }
  });

  it('stops at a reply magic it did not negotiate, or a cookie it never sent', () => {
    const structured = Buffer.alloc(20);
    structured.writeUInt32BE(0x668e33ef, 0);
    expect(decode([structured]).violation).toMatch(/structured replies were not negotiated/);
    expect(decode([simple(0, 99)]).violation).toMatch(/cookie 99, which is not in flight/);
    const high = simple(0, 1);
    high.writeUInt32BE(1, 8);
    expect(decode([high]).violation).toMatch(/never sent/);
    // Nothing after a violation is decoded.
    expect(decode([simple(0, 99), simple(0, 2)]).replies).toEqual([]);
  });
});

describe('handshake pieces', () => {
  it('answers a fixed newstyle greeting with the flags it offered', () => {
    expect(parseGreeting(encodeGreeting())).toEqual({ ok: true, clientFlags: NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES });
    const plain = encodeGreeting();
    plain.writeUInt16BE(1, 16);
    expect(parseGreeting(plain)).toEqual({ ok: true, clientFlags: NBD_FLAG_C_FIXED_NEWSTYLE });
  });

  it('refuses anything else with a reason', () => {
    const notFixed = encodeGreeting();
    notFixed.writeUInt16BE(0, 16);
    expect(parseGreeting(notFixed)).toMatchObject({ ok: false, reason: /not fixed newstyle/ });
    const old = Buffer.concat([Buffer.from('NBDMAGIC'), Buffer.from('0000420281861253', 'hex'), Buffer.alloc(2)]);
    expect(parseGreeting(old)).toMatchObject({ ok: false, reason: /oldstyle/ });
    expect(parseGreeting(Buffer.from('SSH-2.0-OpenSSH_9.2p1\r\n').subarray(0, 18))).toMatchObject({ ok: false, reason: /not an NBD server/ });
  });

  it('reads the export and block-size infos, ignores others, refuses bad lengths', () => {
    const info: Partial<ExportInfo> = {};
    const exp = encodeInfoExport(NBD_OPT_GO, 2 ** 40 + 4096, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH).subarray(20);
    expect(applyInfo(exp, info)).toBeNull();
    const bs = Buffer.alloc(14);
    bs.writeUInt16BE(3, 0);
    bs.writeUInt32BE(1, 2);
    bs.writeUInt32BE(4096, 6);
    bs.writeUInt32BE(1 << 25, 10);
    expect(applyInfo(bs, info)).toBeNull();
    expect(applyInfo(Buffer.from([0, 1, 0x72, 0x30]), info)).toBeNull(); // NBD_INFO_NAME
    expect(info).toEqual({ sizeBytes: 2 ** 40 + 4096, transmissionFlags: NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH, blockSize: { minimum: 1, preferred: 4096, maximum: 1 << 25 } });
    expect(applyInfo(exp.subarray(0, 11), {})).toMatch(/not 12/);
    expect(applyInfo(bs.subarray(0, 13), {})).toMatch(/not 14/);
    expect(applyInfo(Buffer.alloc(1), {})).toMatch(/shorter/);
  });
});

describe('NBD URIs', () => {
  it('parses TCP and unix URIs, with the export name decoded', () => {
    expect(parseNbdUri('nbd://127.0.0.1:10810/r0')).toMatchObject({ ok: true, uri: { address: { kind: 'tcp', host: '127.0.0.1', port: 10810 }, exportName: 'r0' } });
    expect(parseNbdUri('nbd://example.com/')).toMatchObject({ ok: true, uri: { address: { kind: 'tcp', host: 'example.com', port: 10809 }, exportName: '' } });
    expect(parseNbdUri('nbd://[::1]:99/my%20disk')).toMatchObject({ ok: true, uri: { address: { kind: 'tcp', host: '::1', port: 99 }, exportName: 'my disk' } });
    expect(parseNbdUri('nbd+unix:///r0?socket=/run/x.sock')).toMatchObject({ ok: true, uri: { address: { kind: 'unix', path: '/run/x.sock' }, exportName: 'r0' } });
  });

  it('refuses what it cannot connect to, saying why', () => {
    expect(parseNbdUri('nbds://h/r0')).toMatchObject({ ok: false, reason: /TLS .* not supported/ });
    expect(parseNbdUri('http://h/r0')).toMatchObject({ ok: false, reason: /unsupported scheme http/ });
    expect(parseNbdUri('nbd+unix:///r0')).toMatchObject({ ok: false, reason: /socket=PATH/ });
    expect(parseNbdUri('nbd+unix://host/r0?socket=/x')).toMatchObject({ ok: false, reason: /no host/ });
    expect(parseNbdUri('nbd://h/r0?tls=on')).toMatchObject({ ok: false, reason: /query/ });
    expect(parseNbdUri('nbd://h/%zz')).toMatchObject({ ok: false, reason: /percent/ });
    expect(parseNbdUri('r0.img')).toMatchObject({ ok: false });
  });
});

/**
 * A scripted server on a unix socket: it negotiates like mirrorbd, then
 * hands each request to `onRequest`, which answers when and how it likes.
 */
async function scriptedServer(o: {
  refuse?: string;
  onRequest: (r: NbdRequest, s: net.Socket) => void;
}): Promise<{ uri: string; close(): Promise<void> }> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-check-client-'));
  const sock = path.join(dir, 'nbd.sock');
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.write(encodeGreeting());
    const hs = new HandshakeDecoder();
    let tx: RequestDecoder | null = null;
    s.on('data', (chunk: Buffer) => {
      if (tx === null) {
        hs.push(chunk);
        for (let e = hs.next(); e !== null; e = hs.next()) {
          if (e.kind !== 'option') continue;
          expect(e.option).toBe(NBD_OPT_GO);
          const req = parseInfoRequest(e.data);
          expect(req).toMatchObject({ kind: 'ok', name: 'r0' });
          if (o.refuse !== undefined) {
            s.end(encodeOptionError(NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, o.refuse));
            return;
          }
          s.write(Buffer.concat([encodeInfoExport(NBD_OPT_GO, 1 << 20, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH), encodeAck(NBD_OPT_GO)]));
          tx = new RequestDecoder({ extended: false, maxPayload: 1 << 20 });
          for (const rest of hs.takeRemaining()) tx.push(rest);
          break;
        }
        if (tx === null) return;
      } else {
        tx.push(chunk);
      }
      for (let r = tx.next(); r !== null; r = tx.next()) o.onRequest(r, s);
    });
  });
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  return {
    uri: `nbd+unix:///r0?socket=${sock}`,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
}

function uriOf(text: string): NbdUri {
  const r = parseNbdUri(text);
  if (!r.ok) throw new Error(r.reason);
  return r.uri;
}

describe('NBD client against a scripted server', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    while (cleanups.length > 0) await cleanups.pop()!();
  });

  it('pipelines requests and matches replies that come back in any order', async () => {
    const held: Array<{ r: NbdRequest; s: net.Socket }> = [];
    const srv = await scriptedServer({
      onRequest: (r, s) => {
        held.push({ r, s });
        if (held.length < 4) return;
        // Answer all four in reverse order, in two packets cut inside the READ's data.
        const replies = held.reverse().map(({ r: q }) => {
          if (q.type === NBD_CMD_READ) return simple(0, q.cookieLo, Buffer.alloc(q.length, 0x5a));
          if (q.type === NBD_CMD_WRITE && q.offset === 4096) return simple(NBD_EIO, q.cookieLo);
          return simple(0, q.cookieLo);
        });
        const all = Buffer.concat(replies);
        const cut = replies[0]!.length + replies[1]!.length + 20; // the READ is second: 4 bytes into its data
        s.write(all.subarray(0, cut));
        setTimeout(() => s.write(all.subarray(cut)), 5);
      },
    });
    cleanups.push(srv.close);
    const c = await NbdClient.connect(uriOf(srv.uri));
    cleanups.push(() => c.close());
    expect(c).toMatchObject({ sizeBytes: 1 << 20, canFlush: true, canFua: false, readOnly: false });
    const results = await Promise.allSettled([c.write(0, Buffer.alloc(4096, 1)), c.write(4096, Buffer.alloc(4096, 2)), c.read(8192, 100), c.flush()]);
    expect(results[0]).toEqual({ status: 'fulfilled', value: undefined });
    expect(results[1].status).toBe('rejected');
    expect((results[1] as PromiseRejectedResult).reason).toBeInstanceOf(NbdCommandError);
    expect((results[1] as PromiseRejectedResult).reason.message).toBe('WRITE failed: EIO');
    expect(results[2]).toEqual({ status: 'fulfilled', value: Buffer.alloc(100, 0x5a) });
    expect(results[3]).toEqual({ status: 'fulfilled', value: undefined });
    expect(held.map((h) => h.r.type).sort()).toEqual([NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_WRITE, NBD_CMD_FLUSH].sort());
  });

  it('fails what is in flight when the server goes away, and refuses new requests', async () => {
    const srv = await scriptedServer({ onRequest: (_r, s) => s.destroy() });
    cleanups.push(srv.close);
    const c = await NbdClient.connect(uriOf(srv.uri));
    const [w, f] = await Promise.allSettled([c.write(0, Buffer.alloc(4096)), c.flush()]);
    expect((w as PromiseRejectedResult).reason).toBeInstanceOf(NbdConnectionLost);
    expect((f as PromiseRejectedResult).reason).toBeInstanceOf(NbdConnectionLost);
    await c.closed;
    expect(c.alive).toBe(false);
    await expect(c.flush()).rejects.toBeInstanceOf(NbdConnectionLost);
  });

  it("reports the server's refusal of the export verbatim, with the URI", async () => {
    const srv = await scriptedServer({ refuse: 'r0 is Secondary here; the Primary is beta', onRequest: () => undefined });
    cleanups.push(srv.close);
    await expect(NbdClient.connect(uriOf(srv.uri))).rejects.toThrow(/nbd\+unix:.*: the server refused export "r0" \(NBD_REP_ERR_UNKNOWN\): r0 is Secondary here; the Primary is beta/);
  });

  it('names the URI when nothing listens', async () => {
    await expect(NbdClient.connect(uriOf('nbd+unix:///r0?socket=/nonexistent/nbd.sock'))).rejects.toThrow(/nbd\+unix:\/\/\/r0\?socket=\/nonexistent\/nbd.sock: cannot connect: .*ENOENT/);
  });
});
