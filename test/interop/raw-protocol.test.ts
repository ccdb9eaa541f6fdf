/**
 * What no real client here sends, from a raw node:net client: an explicit
 * NBD_OPT_STRUCTURED_REPLY (libnbd 1.14 has no opt_structured_reply call),
 * an unknown option, an unknown command. Each gets the error the NBD
 * specification names, and the connection goes on working.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNode, type StartedNode } from './node.js';
import {
  CMD, EINVAL, OPT, REP, RawClient, goData, handshake, openExport, option, optReplies, readOptReply, readReply, request,
} from './raw-nbd.js';

describe('raw NBD requests against a Primary', () => {
  let node: StartedNode;
  const clients: RawClient[] = [];
  const track = (c: RawClient): RawClient => (clients.push(c), c);

  beforeAll(async () => {
    node = await startNode({ sizeBytes: 16 * 1024 * 1024 });
  });
  afterAll(async () => {
    for (const c of clients) c.destroy();
    await node?.stop();
  });

  it('greets with fixed newstyle and NO_ZEROES', async () => {
    const c = track(await RawClient.connect(node.host, node.port));
    expect(await handshake(c)).toBe(3);
    c.write(option(OPT.ABORT));
    const r = await readOptReply(c);
    expect({ opt: r.opt, type: r.type, len: r.data.length }).toEqual({ opt: OPT.ABORT, type: REP.ACK, len: 0 });
    expect(await c.closedWithin(5000)).toBe(true);
  });

  it('NBD_OPT_STRUCTURED_REPLY is acknowledged and reads then come as structured chunks', async () => {
    const c = track(await RawClient.connect(node.host, node.port));
    await handshake(c);
    c.write(option(OPT.STRUCTURED_REPLY));
    const ack = await readOptReply(c);
    expect({ opt: ack.opt, type: ack.type, len: ack.data.length }).toEqual({ opt: OPT.STRUCTURED_REPLY, type: REP.ACK, len: 0 });
    // With data, the option is invalid (and the next option still parses).
    c.write(option(OPT.STRUCTURED_REPLY, Buffer.from('xx')));
    const bad = await readOptReply(c);
    expect(bad.opt).toBe(OPT.STRUCTURED_REPLY);
    expect(bad.type).toBe(REP.ERR_INVALID);
    c.write(option(OPT.GO, goData(node.resource)));
    const go = await optReplies(c);
    expect(go[go.length - 1]!.type).toBe(REP.ACK);

    const data = Buffer.alloc(4096, 0x3c);
    c.write(request(CMD.WRITE, 0, 1n, 8192n, data.length, data));
    const w = await readReply(c);
    expect({ cookie: w.cookie, error: w.error }).toEqual({ cookie: 1n, error: 0 });
    c.write(request(CMD.READ, 0, 2n, 8192n, 4096));
    const r = await readReply(c, 4096);
    expect(r.structured).toBe(true);
    expect({ cookie: r.cookie, error: r.error }).toEqual({ cookie: 2n, error: 0 });
    expect(r.data.equals(data)).toBe(true);
    // A read past the end gets a structured error, never a simple reply.
    c.write(request(CMD.READ, 0, 3n, BigInt(node.sizeBytes), 512));
    const e = await readReply(c);
    expect({ structured: e.structured, cookie: e.cookie, error: e.error }).toEqual({ structured: true, cookie: 3n, error: EINVAL });
  });

  it('an unknown option gets ERR_UNSUP, its data is skipped, and haggling goes on', async () => {
    const c = track(await RawClient.connect(node.host, node.port));
    await handshake(c);
    c.write(option(0x4242, Buffer.alloc(100, 0x41)));
    const r = await readOptReply(c);
    expect({ opt: r.opt, type: r.type }).toEqual({ opt: 0x4242, type: REP.ERR_UNSUP });
    c.write(option(OPT.LIST));
    const list = await optReplies(c);
    expect(list[list.length - 1]!.type).toBe(REP.ACK);
    const names = list.filter((x) => x.type === REP.SERVER).map((x) => x.data.subarray(4, 4 + x.data.readUInt32BE(0)).toString());
    expect(names).toContain(node.resource);
  });

  it('GO on an unknown export gets ERR_UNKNOWN, then GO on r0 succeeds', async () => {
    const c = track(await RawClient.connect(node.host, node.port));
    await handshake(c);
    c.write(option(OPT.GO, goData('no-such-export')));
    const bad = await optReplies(c);
    expect(bad.map((x) => x.type)).toEqual([REP.ERR_UNKNOWN]);
    c.write(option(OPT.GO, goData(node.resource)));
    const ok = await optReplies(c);
    const info = ok.find((x) => x.type === REP.INFO && x.data.readUInt16BE(0) === 0);
    expect(info?.data.length).toBe(12);
    expect(Number(info!.data.readBigUInt64BE(2))).toBe(node.sizeBytes);
    expect(ok[ok.length - 1]!.type).toBe(REP.ACK);
  });

  for (const structured of [false, true]) {
    it(`an unknown command gets EINVAL and the connection keeps serving (${structured ? 'structured' : 'simple'} replies)`, async () => {
      const c = track(await openExport(node.host, node.port, node.resource, structured));
      const data = Buffer.alloc(512, structured ? 0x77 : 0x66);
      c.write(request(CMD.WRITE, 0, 10n, 0n, data.length, data));
      expect((await readReply(c)).error).toBe(0);
      c.write(request(0x42, 0, 11n, 0n, 512));
      const r = await readReply(c);
      expect({ cookie: r.cookie, error: r.error }).toEqual({ cookie: 11n, error: EINVAL });
      c.write(request(CMD.READ, 0, 12n, 0n, 512));
      const after = await readReply(c, 512);
      expect({ cookie: after.cookie, error: after.error }).toEqual({ cookie: 12n, error: 0 });
      expect(after.data.equals(data)).toBe(true);
      c.write(request(CMD.DISC, 0, 13n, 0n, 0));
      expect(await c.closedWithin(5000)).toBe(true);
    });
  }
});
