/**
 * A real NbdServer on loopback TCP and on a unix socket, driven by a raw
 * client through the paths users rely on and the ones attackers try.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { NbdAddress } from '../../src/config/model.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_PAYLOAD_LEN,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_EXTENDED_HEADERS,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_BLOCK_STATUS_EXT,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from '../../src/nbd/constants.js';
import type { ListenerPolicy } from '../../src/nbd/export.js';
import { encodeInfoRequest, encodeMetaContextRequest, encodeOption } from '../../src/nbd/handshake-codec.js';
import { encodeRequest } from '../../src/nbd/request-decoder.js';
import type { NbdLogger } from '../../src/nbd/logger.js';
import { NbdServer, type NbdListener } from '../../src/nbd/server.js';
import { missingTools } from '../helpers/tools.js';
import { MemoryExport } from './helpers/memory-export.js';
import { RawClient, errorChunk } from './helpers/nbd-raw-client.js';

const MiB = 1024 * 1024;
const OPEN: ListenerPolicy = { tls: 'off', allow: [] };
const execFileP = promisify(execFile);

let dir: string;
const servers: NbdServer[] = [];
const clients: RawClient[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'nbd-server-test-'));
});
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A logger that keeps warnings, to check why a connection was dropped. */
function captureLogger(): NbdLogger & { warnings: string[] } {
  const warnings: string[] = [];
  const logger: NbdLogger & { warnings: string[] } = {
    warnings,
    trace: () => {},
    debug: () => {},
    info: () => {},
    warn: (o, msg) => warnings.push(`${msg ?? ''} ${JSON.stringify(o)}`),
    error: (o, msg) => warnings.push(`${msg ?? ''} ${JSON.stringify(o)}`),
    child: () => logger,
  };
  return logger;
}

async function serve(
  exports: MemoryExport[],
  policy: ListenerPolicy = OPEN,
  address: NbdAddress = { kind: 'tcp', host: '127.0.0.1', port: 0 },
  logger?: NbdLogger,
): Promise<{ server: NbdServer; listener: NbdListener }> {
  const server = new NbdServer({ shutdownGraceMs: 500, logger });
  servers.push(server);
  const listener = await server.listen(address, policy, exports);
  return { server, listener };
}

async function connect(listener: NbdListener): Promise<RawClient> {
  const c = await RawClient.connect(listener.address);
  clients.push(c);
  return c;
}

function exp(name = 'r0', size = 16 * MiB, extra: Partial<ConstructorParameters<typeof MemoryExport>[0]> = {}): MemoryExport {
  return new MemoryExport({ name, size, ...extra });
}

let cookieSeq = 1n;
function nextCookie(): bigint {
  return cookieSeq++ * 0x1_0000_0001n; // exercise both halves of the cookie
}

async function simpleRequest(c: RawClient, type: number, offset: number, length: number, flags = 0, payload?: Buffer) {
  const cookie = nextCookie();
  if (type === NBD_CMD_READ) c.readLengths.set(cookie, length);
  c.request({ type, cookie, offset, length, flags }, payload);
  const r = await c.readReply();
  expect(r.header.cookie).toBe(cookie);
  return r;
}

describe('handshake', () => {
  it('greets with fixed newstyle and NO_ZEROES, lists exports with exact lengths', async () => {
    const { listener } = await serve([exp('r0', 16 * MiB, { description: 'first' }), exp('r1')]);
    const c = await connect(listener);
    const g = await c.greeting();
    expect(g.subarray(0, 16).toString('latin1')).toBe('NBDMAGICIHAVEOPT');
    expect(g.readUInt16BE(16)).toBe(3);
    const list = await c.option(NBD_OPT_LIST);
    expect(list.map((r) => r.type)).toEqual([NBD_REP_SERVER, NBD_REP_SERVER, NBD_REP_ACK]);
    const first = list[0]!.data;
    expect(first.readUInt32BE(0)).toBe(2);
    expect(first.subarray(4, 6).toString()).toBe('r0');
    expect(first.subarray(6).toString()).toBe('first');
    expect(list[2]!.data.length).toBe(0);
    expect(list.every((r) => r.option === NBD_OPT_LIST)).toBe(true);
  });

  it('INFO and GO send INFO_EXPORT (12 bytes), NAME, DESCRIPTION and BLOCK_SIZE (14 bytes)', async () => {
    const e = exp('r0', 16 * MiB, { description: 'the disk', maxPayload: 8 * MiB });
    const { listener } = await serve([e]);
    const c = await connect(listener);
    await c.greeting();
    const info = await c.option(NBD_OPT_INFO, encodeInfoRequest('', [NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE]));
    const byType = new Map(info.filter((r) => r.type === NBD_REP_INFO).map((r) => [r.data.readUInt16BE(0), r.data]));
    const ex = byType.get(NBD_INFO_EXPORT)!;
    expect(ex.length).toBe(12);
    expect(Number(ex.readBigUInt64BE(2))).toBe(16 * MiB);
    const flags = ex.readUInt16BE(10);
    expect(flags & NBD_FLAG_HAS_FLAGS).toBeTruthy();
    expect(flags & NBD_FLAG_SEND_FLUSH).toBeTruthy();
    expect(flags & NBD_FLAG_CAN_MULTI_CONN).toBeTruthy();
    expect(flags & NBD_FLAG_SEND_DF).toBe(0); // no structured replies agreed
    expect(byType.get(NBD_INFO_NAME)!.subarray(2).toString()).toBe('r0');
    expect(byType.get(NBD_INFO_DESCRIPTION)!.subarray(2).toString()).toBe('the disk');
    const bs = byType.get(NBD_INFO_BLOCK_SIZE)!;
    expect(bs.length).toBe(14);
    expect([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)]).toEqual([1, 4096, 8 * MiB]);
    expect(info[info.length - 1]!.type).toBe(NBD_REP_ACK);
    expect(e.opened.length).toBe(0); // INFO does not open

    // GO without info requests still gets INFO_EXPORT and BLOCK_SIZE, and no padding after.
    const go = await c.option(NBD_OPT_GO, encodeInfoRequest('r0', []));
    expect(go.map((r) => r.type)).toEqual([NBD_REP_INFO, NBD_REP_INFO, NBD_REP_ACK]);
    await new Promise((r) => setTimeout(r, 50));
    expect(c.pending).toBe(0);
    expect(e.opened.length).toBe(1);
    const r = await simpleRequest(c, NBD_CMD_READ, 0, 512);
    expect(r.header.kind).toBe('simple');
    expect(r.data.equals(Buffer.alloc(512))).toBe(true);
  });

  it('EXPORT_NAME pads 124 zero bytes unless NO_ZEROES was agreed', async () => {
    const { listener } = await serve([exp('r0', 1 * MiB)]);
    const a = await connect(listener);
    await a.greeting(NBD_FLAG_C_FIXED_NEWSTYLE);
    a.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('r0'));
    const reply = await a.read(134);
    expect(Number(reply.readBigUInt64BE(0))).toBe(1 * MiB);
    expect(reply.subarray(10).equals(Buffer.alloc(124))).toBe(true);

    const b = await connect(listener);
    await b.greeting();
    b.sendOption(NBD_OPT_EXPORT_NAME, Buffer.alloc(0)); // empty = default export
    const r2 = await b.read(10);
    expect(Number(r2.readBigUInt64BE(0))).toBe(1 * MiB);
    const w = await simpleRequest(b, NBD_CMD_WRITE, 0, 4, 0, Buffer.from('abcd'));
    expect(w.header.kind === 'simple' && w.header.error).toBe(0);
  });

  it('drops unknown client flags and non-fixed clients that send other options', async () => {
    const { listener } = await serve([exp()]);
    const a = await connect(listener);
    await a.greeting(0x80);
    expect(await a.closesWithin()).toBe(true);
    const b = await connect(listener);
    await b.greeting(0);
    b.sendOption(NBD_OPT_LIST);
    expect(await b.closesWithin()).toBe(true);
  });

  it('unknown options get ERR_UNSUP with their data drained, then negotiation continues', async () => {
    const { listener } = await serve([exp()]);
    const c = await connect(listener);
    await c.greeting();
    const r = await c.option(4242, Buffer.alloc(1000, 7));
    expect(r).toHaveLength(1);
    expect(r[0]!.type).toBe(NBD_REP_ERR_UNSUP);
    expect(r[0]!.option).toBe(4242);
    const go = await c.option(NBD_OPT_GO, encodeInfoRequest('', []));
    expect(go[go.length - 1]!.type).toBe(NBD_REP_ACK);
  });

  it('ABORT is acknowledged, then the server closes', async () => {
    const { listener } = await serve([exp()]);
    const c = await connect(listener);
    await c.greeting();
    const r = await c.option(NBD_OPT_ABORT);
    expect(r[0]!.type).toBe(NBD_REP_ACK);
    expect(r[0]!.data.length).toBe(0);
    expect(await c.closesWithin()).toBe(true);
  });

  it('unknown export: ERR_UNKNOWN for INFO/GO, hard disconnect for EXPORT_NAME', async () => {
    const { listener } = await serve([exp()]);
    const c = await connect(listener);
    await c.greeting();
    const r = await c.option(NBD_OPT_GO, encodeInfoRequest('nope', []));
    expect(r[0]!.type).toBe(NBD_REP_ERR_UNKNOWN);
    expect(r[0]!.data.toString()).toContain('nope');
    c.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('nope'));
    expect(await c.closesWithin()).toBe(true);
  });

  it('an export refusing to open tells the client why', async () => {
    const e = exp();
    e.refusal = 'r0 is Secondary on beta';
    const { listener } = await serve([e]);
    const c = await connect(listener);
    await c.greeting();
    const r = await c.option(NBD_OPT_GO, encodeInfoRequest('r0', []));
    expect(r).toHaveLength(1);
    expect(r[0]!.type).toBe(NBD_REP_ERR_UNKNOWN);
    expect(r[0]!.data.toString()).toBe('r0 is Secondary on beta');
    const i = await c.option(NBD_OPT_INFO, encodeInfoRequest('r0', []));
    expect(i[0]!.data.toString()).toBe('r0 is Secondary on beta');
    c.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('r0'));
    expect(await c.closesWithin()).toBe(true);
    expect(e.opened).toHaveLength(0);
  });

  it('rejects malformed INFO/GO/META data and bad names with ERR_INVALID', async () => {
    const { listener } = await serve([exp()]);
    const c = await connect(listener);
    await c.greeting();
    const bad = encodeInfoRequest('r0', [1]);
    bad.writeUInt32BE(100, 0); // name length runs past the option
    expect((await c.option(NBD_OPT_GO, bad))[0]!.type).toBe(NBD_REP_ERR_INVALID);
    expect((await c.option(NBD_OPT_GO, encodeInfoRequest('r\u00000', [])))[0]!.type).toBe(NBD_REP_ERR_INVALID);
    const badUtf8 = Buffer.concat([Buffer.from([0, 0, 0, 2, 0xc3, 0x28]), Buffer.from([0, 0])]);
    expect((await c.option(NBD_OPT_INFO, badUtf8))[0]!.type).toBe(NBD_REP_ERR_INVALID);
    const longName = encodeInfoRequest('x'.repeat(5000), []);
    expect((await c.option(NBD_OPT_INFO, longName))[0]!.type).toBe(NBD_REP_ERR_INVALID);
    const meta = encodeMetaContextRequest('r0', ['base:allocation']);
    meta.writeUInt32BE(999, meta.length - 'base:allocation'.length - 4);
    expect((await c.option(NBD_OPT_LIST_META_CONTEXT, meta))[0]!.type).toBe(NBD_REP_ERR_INVALID);
    expect((await c.option(NBD_OPT_LIST, Buffer.from('x')))[0]!.type).toBe(NBD_REP_ERR_INVALID);
    // Still negotiating fine afterwards.
    const go = await c.option(NBD_OPT_GO, encodeInfoRequest('r0', []));
    expect(go[go.length - 1]!.type).toBe(NBD_REP_ACK);
  });

  it('oversize options and too many options end the connection', async () => {
    const { listener } = await serve([exp()]);
    const a = await connect(listener);
    await a.greeting();
    const h = encodeOption(NBD_OPT_INFO);
    h.writeUInt32BE(0x7fffffff, 12); // 2 GiB of option data announced
    a.write(h);
    expect(await a.closesWithin()).toBe(true);

    const b = await connect(listener);
    await b.greeting();
    const longName = encodeOption(NBD_OPT_EXPORT_NAME, Buffer.alloc(4097, 0x61));
    b.write(longName);
    expect(await b.closesWithin()).toBe(true);

    const c = await connect(listener);
    await c.greeting();
    let answered = 0;
    let dropped = false;
    for (let i = 0; i < 80; i++) {
      c.sendOption(4242);
      try {
        await c.readOptionReply();
        answered++;
      } catch {
        dropped = true;
        break;
      }
    }
    expect(dropped).toBe(true);
    expect(answered).toBe(64);
  });

  it('a client that never chooses an export is dropped after the handshake timeout', async () => {
    const server = new NbdServer({ handshakeTimeoutMs: 200 });
    servers.push(server);
    const listener = await server.listen({ kind: 'tcp', host: '127.0.0.1', port: 0 }, OPEN, [exp()]);
    const idle = await connect(listener);
    await idle.greeting();
    const busy = await connect(listener);
    await busy.negotiate();
    expect(await idle.closesWithin(2000)).toBe(true);
    // One that reached transmission is not.
    expect((await simpleRequest(busy, NBD_CMD_READ, 0, 4)).data.length).toBe(4);
  });

  it('a bad option magic ends the connection', async () => {
    const { listener } = await serve([exp()]);
    const c = await connect(listener);
    await c.greeting();
    c.write(Buffer.alloc(16, 0x41));
    expect(await c.closesWithin()).toBe(true);
  });

  it('meta contexts: LIST wildcard, SET needs structured replies, unknown namespaces ignored', async () => {
    const { listener } = await serve([exp()]);
    const c = await connect(listener);
    await c.greeting();
    const list = await c.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('r0', ['base:']));
    expect(list.map((r) => r.type)).toEqual([NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    expect(list[0]!.data.readUInt32BE(0)).toBe(0);
    expect(list[0]!.data.subarray(4).toString()).toBe('base:allocation');
    const all = await c.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('r0', []));
    expect(all.map((r) => r.type)).toEqual([NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    const early = await c.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('r0', ['base:allocation']));
    expect(early[0]!.type).toBe(NBD_REP_ERR_INVALID);
    expect((await c.option(NBD_OPT_STRUCTURED_REPLY))[0]!.type).toBe(NBD_REP_ACK);
    const other = await c.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('r0', ['qemu:dirty-bitmap:x', 'base:']));
    expect(other.map((r) => r.type)).toEqual([NBD_REP_ACK]);
    const set = await c.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('r0', ['base:allocation']));
    expect(set.map((r) => r.type)).toEqual([NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    expect(set[0]!.data.readUInt32BE(0)).not.toBe(0);
  });
});

describe('transmission', () => {
  it('serves reads, writes, trim, zeroes, flush and cache with simple replies', async () => {
    const e = exp();
    const { listener } = await serve([e]);
    const c = await connect(listener);
    await c.negotiate();
    const data = Buffer.alloc(8192, 0x5a);
    expect((await simpleRequest(c, NBD_CMD_WRITE, 4096, data.length, NBD_CMD_FLAG_FUA, data)).header).toMatchObject({ error: 0 });
    expect(e.lastWriteFua).toBe(true);
    expect((await simpleRequest(c, NBD_CMD_READ, 4096, 8192)).data.equals(data)).toBe(true);
    expect((await simpleRequest(c, NBD_CMD_WRITE_ZEROES, 4096, 4096, NBD_CMD_FLAG_NO_HOLE)).header).toMatchObject({ error: 0 });
    expect(e.lastZeroOpts).toEqual({ noHole: true, fua: false, fastZero: false });
    expect((await simpleRequest(c, NBD_CMD_WRITE_ZEROES, 0, 512, NBD_CMD_FLAG_FAST_ZERO)).header).toMatchObject({ error: 0 });
    expect(e.lastZeroOpts).toEqual({ noHole: false, fua: false, fastZero: true });
    const back = (await simpleRequest(c, NBD_CMD_READ, 4096, 8192)).data;
    expect(back.subarray(0, 4096).equals(Buffer.alloc(4096))).toBe(true);
    expect(back.subarray(4096).equals(data.subarray(4096))).toBe(true);
    expect((await simpleRequest(c, NBD_CMD_TRIM, 0, 1 * MiB)).header).toMatchObject({ error: 0 });
    expect((await simpleRequest(c, NBD_CMD_FLUSH, 0, 0)).header).toMatchObject({ error: 0 });
    expect(e.flushes).toBe(1);
    expect((await simpleRequest(c, NBD_CMD_CACHE, 0, 4096)).header).toMatchObject({ error: 0 });
    // FUA is accepted on any command.
    expect((await simpleRequest(c, NBD_CMD_FLUSH, 0, 0, NBD_CMD_FLAG_FUA)).header).toMatchObject({ error: 0 });
    // Zero-length requests are answered, not punished.
    expect((await simpleRequest(c, NBD_CMD_READ, 0, 0)).header).toMatchObject({ error: 0 });
    expect((await simpleRequest(c, NBD_CMD_WRITE, 0, 0, 0, Buffer.alloc(0))).header).toMatchObject({ error: 0 });
  });

  it('answers every error path without dropping the connection', async () => {
    const e = exp('r0', 1 * MiB, { maxPayload: 64 * 1024 });
    const { listener } = await serve([e]);
    const c = await connect(listener);
    await c.negotiate();
    const err = async (type: number, offset: number, length: number, flags = 0, payload?: Buffer) => {
      const r = await simpleRequest(c, type, offset, length, flags, payload);
      return r.header.kind === 'simple' ? r.header.error : -1;
    };
    expect(await err(NBD_CMD_READ, 1 * MiB - 512, 1024)).toBe(NBD_EINVAL);
    expect(await err(NBD_CMD_READ, 2 ** 60, 512)).toBe(NBD_EINVAL);
    expect(await err(NBD_CMD_WRITE, 1 * MiB, 4, 0, Buffer.alloc(4))).toBe(NBD_ENOSPC);
    expect(await err(NBD_CMD_WRITE_ZEROES, 1 * MiB - 4096, 8192)).toBe(NBD_ENOSPC);
    expect(await err(NBD_CMD_TRIM, 2 * MiB, 1)).toBe(NBD_EINVAL);
    expect(await err(NBD_CMD_FLUSH, 4096, 0)).toBe(NBD_EINVAL);
    expect(await err(99, 0, 0)).toBe(NBD_EINVAL);
    expect(await err(NBD_CMD_READ, 0, 512, 0x4000)).toBe(NBD_EINVAL);
    expect(await err(NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_DF)).toBe(NBD_EINVAL); // DF needs structured replies
    expect(await err(NBD_CMD_BLOCK_STATUS, 0, 512)).toBe(NBD_EINVAL);
    e.featureSet = { ...e.featureSet, canFastZero: false };
    expect(await err(NBD_CMD_WRITE_ZEROES, 0, 512, NBD_CMD_FLAG_FAST_ZERO)).toBe(NBD_EINVAL);
    expect(await err(NBD_CMD_READ, 0, 128 * 1024)).toBe(NBD_EINVAL); // beyond the maximum payload
    // A WRITE beyond the maximum payload is read and discarded, then refused.
    expect(await err(NBD_CMD_WRITE, 0, 128 * 1024, 0, Buffer.alloc(128 * 1024, 1))).toBe(NBD_EINVAL);
    // The export's own errors are mapped.
    e.store.failWith('ENOSPC', ['write']);
    expect(await err(NBD_CMD_WRITE, 0, 4, 0, Buffer.alloc(4))).toBe(NBD_ENOSPC);
    e.store.failWith('EWHATEVER', ['read']);
    expect(await err(NBD_CMD_READ, 0, 4)).toBe(NBD_EIO);
    e.store.failWith(undefined);
    expect((await simpleRequest(c, NBD_CMD_READ, 0, 4)).data.length).toBe(4);
  });

  it('a read-only export refuses writes with EPERM and does not advertise them', async () => {
    const e = exp('ro', 1 * MiB, { features: { readOnly: true } });
    const { listener } = await serve([e]);
    const c = await connect(listener);
    const go = await c.negotiate();
    const flags = go[0]!.data.readUInt16BE(10);
    expect(flags & NBD_FLAG_READ_ONLY).toBeTruthy();
    expect(flags & NBD_FLAG_SEND_TRIM).toBe(0);
    expect(flags & NBD_FLAG_SEND_WRITE_ZEROES).toBe(0);
    for (const [type, payload] of [[NBD_CMD_WRITE, Buffer.alloc(4)], [NBD_CMD_TRIM, undefined], [NBD_CMD_WRITE_ZEROES, undefined]] as const) {
      const r = await simpleRequest(c, type, 0, 4, 0, payload);
      expect(r.header.kind === 'simple' && r.header.error).toBe(NBD_EPERM);
    }
  });

  it('a WRITE far beyond any limit ends the connection', async () => {
    const { listener } = await serve([exp()]);
    const c = await connect(listener);
    await c.negotiate();
    c.request({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 0xffffffff });
    expect(await c.closesWithin()).toBe(true);
  });

  it('structured replies: OFFSET_DATA reads, error chunks with messages, DF, block status', async () => {
    const e = exp('r0', 4 * MiB);
    const { listener } = await serve([e]);
    const c = await connect(listener);
    const go = await c.negotiate({ structured: true, meta: true });
    expect(go[0]!.data.readUInt16BE(10) & NBD_FLAG_SEND_DF).toBeTruthy();
    await simpleRequest(c, NBD_CMD_WRITE, 1 * MiB, 4096, 0, Buffer.alloc(4096, 9));

    const read = await simpleRequest(c, NBD_CMD_READ, 1 * MiB, 4096, NBD_CMD_FLAG_DF);
    expect(read.header).toMatchObject({ kind: 'structured', type: NBD_REPLY_TYPE_OFFSET_DATA, flags: NBD_REPLY_FLAG_DONE });
    expect(Number(read.data.readBigUInt64BE(0))).toBe(1 * MiB);
    expect(read.data.subarray(8).equals(Buffer.alloc(4096, 9))).toBe(true);

    const bad = await simpleRequest(c, NBD_CMD_READ, 4 * MiB, 512);
    expect(bad.header).toMatchObject({ kind: 'structured', type: NBD_REPLY_TYPE_ERROR, flags: NBD_REPLY_FLAG_DONE });
    expect(errorChunk(bad.data)).toEqual({ error: NBD_EINVAL, message: 'read beyond the end of the export' });

    const zero = await simpleRequest(c, NBD_CMD_READ, 0, 0);
    expect(zero.header).toMatchObject({ kind: 'structured', type: NBD_REPLY_TYPE_NONE });

    const bs = await simpleRequest(c, NBD_CMD_BLOCK_STATUS, 0, 4 * MiB);
    expect(bs.header).toMatchObject({ kind: 'structured', type: NBD_REPLY_TYPE_BLOCK_STATUS, flags: NBD_REPLY_FLAG_DONE });
    const ext: [number, number][] = [];
    for (let p = 4; p < bs.data.length; p += 8) ext.push([bs.data.readUInt32BE(p), bs.data.readUInt32BE(p + 4)]);
    expect(ext.reduce((s, [l]) => s + l, 0)).toBe(4 * MiB);
    const allocated = ext.find(([, f]) => f === 0);
    expect(allocated).toBeDefined();
    expect(ext[0]![1]).toBe(NBD_STATE_HOLE | NBD_STATE_ZERO);

    const one = await simpleRequest(c, NBD_CMD_BLOCK_STATUS, 0, 4096, NBD_CMD_FLAG_REQ_ONE);
    expect(one.data.length).toBe(12);
    expect(one.data.readUInt32BE(4)).toBe(4096);

    const bsBad = await simpleRequest(c, NBD_CMD_BLOCK_STATUS, 4 * MiB, 512);
    expect(errorChunk(bsBad.data).error).toBe(NBD_EINVAL);
  });

  it('extended headers: 32-byte requests and replies, BLOCK_STATUS_EXT, no EXPORT_NAME', async () => {
    const { listener } = await serve([exp('r0', 4 * MiB)]);
    const c = await connect(listener);
    await c.negotiate({ extended: true, meta: true });
    const w = await simpleRequest(c, NBD_CMD_WRITE, 8192, 4096, NBD_CMD_FLAG_PAYLOAD_LEN, Buffer.alloc(4096, 3));
    expect(w.header).toMatchObject({ kind: 'extended', type: NBD_REPLY_TYPE_NONE, flags: NBD_REPLY_FLAG_DONE, offset: 8192n });
    const r = await simpleRequest(c, NBD_CMD_READ, 8192, 4096);
    expect(r.header).toMatchObject({ kind: 'extended', type: NBD_REPLY_TYPE_OFFSET_DATA, offset: 8192n });
    expect(r.data.subarray(8).equals(Buffer.alloc(4096, 3))).toBe(true);
    const bs = await simpleRequest(c, NBD_CMD_BLOCK_STATUS, 0, 4 * MiB);
    expect(bs.header).toMatchObject({ kind: 'extended', type: NBD_REPLY_TYPE_BLOCK_STATUS_EXT });
    const n = bs.data.readUInt32BE(4);
    expect(bs.data.length).toBe(8 + 16 * n);
    let sum = 0n;
    for (let i = 0; i < n; i++) sum += bs.data.readBigUInt64BE(8 + 16 * i);
    expect(sum).toBe(BigInt(4 * MiB));
    // A payload on a command that takes none is consumed and refused.
    const bad = await simpleRequest(c, NBD_CMD_TRIM, 0, 16, NBD_CMD_FLAG_PAYLOAD_LEN, Buffer.alloc(16));
    expect(errorChunk(bad.data).error).toBe(NBD_EINVAL);
    expect((await simpleRequest(c, NBD_CMD_FLUSH, 0, 0)).header).toMatchObject({ type: NBD_REPLY_TYPE_NONE });

    const d = await connect(listener);
    await d.greeting();
    expect((await d.option(NBD_OPT_EXTENDED_HEADERS))[0]!.type).toBe(NBD_REP_ACK);
    d.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('r0'));
    expect(await d.closesWithin()).toBe(true);
  });

  it('pipelined requests complete out of order, each reply whole', async () => {
    const e = exp();
    const { listener } = await serve([e]);
    const c = await connect(listener);
    await c.negotiate({ structured: true });
    for (let i = 0; i < 8; i++) e.store.write(i * 4096, Buffer.alloc(4096, i + 1));
    e.hold(0);
    const batch: Buffer[] = [];
    for (let i = 0; i < 8; i++) batch.push(encodeRequest({ type: NBD_CMD_READ, cookie: BigInt(i + 100), offset: i * 4096, length: 4096 }));
    c.write(Buffer.concat(batch)); // one segment: the server must split it
    const seen: bigint[] = [];
    for (let i = 0; i < 7; i++) {
      const r = await c.readReply();
      const idx = Number(r.header.cookie) - 100;
      expect(r.data.subarray(8).equals(Buffer.alloc(4096, idx + 1))).toBe(true);
      seen.push(r.header.cookie);
    }
    expect(seen).not.toContain(100n);
    e.release(0);
    const last = await c.readReply();
    expect(last.header.cookie).toBe(100n);
    expect(last.data.subarray(8).equals(Buffer.alloc(4096, 1))).toBe(true);
  });

  it('many requests in flight: backpressure without losing any reply', async () => {
    const e = exp();
    const { listener } = await serve([e]);
    const c = await connect(listener);
    await c.negotiate();
    const N = 500;
    const batch: Buffer[] = [];
    for (let i = 0; i < N; i++) {
      const cookie = BigInt(i + 1);
      c.readLengths.set(cookie, 65536);
      batch.push(encodeRequest({ type: NBD_CMD_READ, cookie, offset: (i % 200) * 65536, length: 65536 }));
    }
    c.write(Buffer.concat(batch));
    const got = new Set<bigint>();
    for (let i = 0; i < N; i++) {
      const r = await c.readReply();
      expect(r.header.kind === 'simple' && r.header.error).toBe(0);
      expect(r.data.length).toBe(65536);
      got.add(r.header.cookie);
    }
    expect(got.size).toBe(N);
    // The window bounds concurrency (64 requests), and requests do overlap.
    expect(e.maxReadsRunning).toBeLessThanOrEqual(64);
    expect(e.maxReadsRunning).toBeGreaterThan(8);
  });

  it('reads into lent buffers, each reused only after the socket has sent it', async () => {
    const e = new LendingExport({ name: 'r0', size: 16 * MiB });
    const N = 1000;
    const LEN = 4096;
    // Filled at once, before the read resolves: a buffer the pool handed out
    // again while its reply still waited in the cork would be overwritten.
    e.fill = (offset, into) => into.fill(((offset / LEN) % 251) + 1);
    const { listener } = await serve([e]);
    const c = await connect(listener);
    await c.negotiate();
    const batch: Buffer[] = [];
    for (let i = 0; i < N; i++) {
      const cookie = BigInt(i + 1);
      c.readLengths.set(cookie, LEN);
      batch.push(encodeRequest({ type: NBD_CMD_READ, cookie, offset: i * LEN, length: LEN }));
    }
    c.write(Buffer.concat(batch));
    for (let i = 0; i < N; i++) {
      const r = await c.readReply();
      const idx = Number(r.header.cookie) - 1;
      expect(r.data.equals(Buffer.alloc(LEN, (idx % 251) + 1))).toBe(true);
    }
    expect(e.reads).toBe(N);
    expect(e.reusedBuffers).toBeGreaterThan(N / 2);
  });

  it('a client that stops reading replies stalls the server: bounded reads in flight, none lent twice', async () => {
    const e = new LendingExport({ name: 'r0', size: 32 * MiB });
    const N = 300;
    const LEN = 65536;
    for (let i = 0; i < N; i++) e.store.write(i * LEN, Buffer.alloc(LEN, (i % 251) + 1));
    const { listener } = await serve([e]);
    const c = await connect(listener);
    await c.negotiate();
    const batch: Buffer[] = [];
    for (let i = 0; i < N; i++) {
      const cookie = BigInt(i + 1);
      c.readLengths.set(cookie, LEN);
      batch.push(encodeRequest({ type: NBD_CMD_READ, cookie, offset: i * LEN, length: LEN }));
    }
    c.pauseReading();
    c.write(Buffer.concat(batch));
    await new Promise((r) => setTimeout(r, 300));
    // Not reading: the socket fills, the writer blocks, the server stops
    // taking requests (and so stops lending buffers).
    const readsWhileStalled = e.reads;
    expect(readsWhileStalled).toBeLessThan(N);
    await new Promise((r) => setTimeout(r, 100));
    expect(e.reads).toBe(readsWhileStalled);
    expect(e.maxReadsRunning).toBeLessThanOrEqual(64);
    c.resumeReading();
    for (let i = 0; i < N; i++) {
      const r = await c.readReply();
      const idx = Number(r.header.cookie) - 1;
      expect(r.data.equals(Buffer.alloc(LEN, (idx % 251) + 1))).toBe(true);
    }
    expect(e.reads).toBe(N);
    expect(e.lentTwice).toBe(0);
  });

  it('a payload that arrives in pieces reaches writev as those pieces', async () => {
    const e = new LendingExport({ name: 'r0', size: 16 * MiB });
    const { listener } = await serve([e]);
    const c = await connect(listener);
    await c.negotiate();
    const data = Buffer.alloc(2 * MiB);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32BE(i, i);
    const r = await simpleRequest(c, NBD_CMD_WRITE, 4096, data.length, 0, data);
    expect(r.header.kind === 'simple' && r.header.error).toBe(0);
    expect(e.writevCalls).toBeGreaterThan(0);
    expect((await e.store.read(4096, data.length)).equals(data)).toBe(true);
  });

  it('DISC finishes in-flight requests, then closes without a reply', async () => {
    const e = exp();
    const { listener } = await serve([e]);
    const c = await connect(listener);
    await c.negotiate();
    e.hold(4096);
    c.readLengths.set(7n, 512);
    c.request({ type: NBD_CMD_READ, cookie: 7n, offset: 4096, length: 512 });
    c.request({ type: NBD_CMD_DISC, cookie: 8n, offset: 0, length: 0 });
    await new Promise((r) => setTimeout(r, 50));
    expect(c.pending).toBe(0);
    e.release(4096);
    const r = await c.readReply();
    expect(r.header.cookie).toBe(7n);
    expect(await c.closesWithin()).toBe(true);
    expect(c.pending).toBe(0);
    expect(e.closedClients).toHaveLength(1);
  });

  it('a bad request magic closes only that connection', async () => {
    const { listener } = await serve([exp()]);
    const good = await connect(listener);
    await good.negotiate();
    const bad = await connect(listener);
    await bad.negotiate();
    bad.write(Buffer.alloc(28, 0xee));
    expect(await bad.closesWithin()).toBe(true);
    // The other client is unaffected, also while the bad one reconnects and misbehaves again.
    const again = await connect(listener);
    await again.greeting(0xffff);
    const w = await simpleRequest(good, NBD_CMD_WRITE, 0, 3, 0, Buffer.from('ok!'));
    expect(w.header).toMatchObject({ error: 0 });
    expect((await simpleRequest(good, NBD_CMD_READ, 0, 3)).data.toString()).toBe('ok!');
  });
});

describe('lifecycle and policy', () => {
  it('serves over a unix socket, replaces a stale socket file and removes it at close', async () => {
    const path = join(dir, 'stale.sock');
    // Leave a stale socket file behind, as a killed process would.
    const child = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    expect(child.signal).toBe('SIGKILL');
    expect(existsSync(path)).toBe(true);

    const e = exp();
    const { server, listener } = await serve([e], OPEN, { kind: 'unix', path });
    expect(listener.address).toEqual({ kind: 'unix', path });
    const c = await connect(listener);
    await c.negotiate();
    expect(listener.clients()).toHaveLength(1);
    expect(listener.clients()[0]!.remote).toBe('unix');
    expect((await simpleRequest(c, NBD_CMD_WRITE, 0, 2, 0, Buffer.from('hi'))).header).toMatchObject({ error: 0 });

    // A second listener on the same live path is refused clearly.
    const other = new NbdServer();
    await expect(other.listen({ kind: 'unix', path }, OPEN, [e])).rejects.toThrow(/address already in use/);
    await server.close();
    expect(existsSync(path)).toBe(false);
  });

  it('refuses a TCP port in use with a clear message', async () => {
    const { listener } = await serve([exp()]);
    const a = listener.address;
    if (a.kind !== 'tcp') throw new Error('tcp expected');
    const other = new NbdServer();
    await expect(other.listen({ kind: 'tcp', host: '127.0.0.1', port: a.port }, OPEN, [exp()])).rejects.toMatchObject({
      code: 'ERR_ADDRESS_IN_USE',
      message: expect.stringContaining(`127.0.0.1:${a.port}`),
    });
  });

  it('the allow-list refuses other addresses at accept and admits listed ones (IPv4 and IPv6)', async () => {
    const denied = await serve([exp()], { tls: 'off', allow: ['10.0.0.0/8', 'fd00::/8'] });
    const c = await connect(denied.listener);
    expect(await c.closesWithin()).toBe(true);
    expect(c.pending).toBe(0); // not even a greeting

    const allowed = await serve([exp()], { tls: 'off', allow: ['127.0.0.0/8'] });
    const d = await connect(allowed.listener);
    expect((await d.greeting()).subarray(0, 8).toString()).toBe('NBDMAGIC');

    const v6 = await serve([exp()], { tls: 'off', allow: ['::1/128'] }, { kind: 'tcp', host: '::1', port: 0 }).catch(() => null);
    if (v6) {
      const e = await connect(v6.listener);
      expect((await e.greeting()).subarray(0, 8).toString()).toBe('NBDMAGIC');
    }
    await expect(new NbdServer().listen({ kind: 'tcp', host: '127.0.0.1', port: 0 }, { tls: 'off', allow: ['not-an-ip'] }, [exp()])).rejects.toThrow(/not-an-ip/);
  });

  it('close(): in-flight requests finish, new ones get ESHUTDOWN, options get ERR_SHUTDOWN', async () => {
    const e = exp();
    const { server, listener } = await serve([e]);
    const c = await connect(listener);
    await c.negotiate({ structured: true });
    const h = await connect(listener);
    await h.greeting();
    e.hold(0);
    c.request({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 512 });
    await new Promise((r) => setTimeout(r, 30));
    const closing = server.close();
    c.request({ type: NBD_CMD_WRITE, cookie: 2n, offset: 0, length: 4 }, Buffer.alloc(4));
    const refused = await c.readReply();
    expect(refused.header.cookie).toBe(2n);
    expect(errorChunk(refused.data).error).toBe(NBD_ESHUTDOWN);
    const opt = await h.option(NBD_OPT_GO, encodeInfoRequest('', []));
    expect(opt[0]!.type).toBe(NBD_REP_ERR_SHUTDOWN);
    e.release(0);
    const first = await c.readReply();
    expect(first.header).toMatchObject({ cookie: 1n, type: NBD_REPLY_TYPE_OFFSET_DATA });
    expect(await c.closesWithin()).toBe(true);
    await closing;
    expect(await h.closesWithin()).toBe(true);
    expect(e.closedClients).toHaveLength(1);
  });

  it('close(): requests waiting behind a full window were received, so each gets ESHUTDOWN before the connection ends', async () => {
    const e = exp();
    const { server, listener } = await serve([e]);
    const c = await connect(listener);
    await c.negotiate({ structured: true });
    e.hold(0);
    // 64 held reads fill the window; 10 more wait behind it, unread or undecoded
    for (let i = 1; i <= 64; i++) c.request({ type: NBD_CMD_READ, cookie: BigInt(i), offset: 0, length: 512 });
    for (let i = 65; i <= 74; i++) c.request({ type: NBD_CMD_READ, cookie: BigInt(i), offset: 4096, length: 512 });
    await new Promise((r) => setTimeout(r, 50));
    expect(e.maxReadsRunning).toBe(64);
    const closing = server.close();
    const errors = new Map<bigint, number>();
    for (let i = 0; i < 10; i++) {
      const r = await c.readReply();
      errors.set(r.header.cookie, errorChunk(r.data).error);
    }
    expect([...errors.keys()].sort((a, b) => Number(a - b))).toEqual(Array.from({ length: 10 }, (_, i) => BigInt(65 + i)));
    expect(new Set(errors.values())).toEqual(new Set([NBD_ESHUTDOWN]));
    e.release(0);
    for (let i = 0; i < 64; i++) expect((await c.readReply()).header).toMatchObject({ type: NBD_REPLY_TYPE_OFFSET_DATA });
    expect(await c.closesWithin()).toBe(true);
    await closing;
  });

  it('disconnectClients() ends only that export\'s sessions', async () => {
    const a = exp('a');
    const b = exp('b');
    const { server, listener } = await serve([a, b]);
    const ca = await connect(listener);
    await ca.negotiate({ name: 'a' });
    const cb = await connect(listener);
    await cb.negotiate({ name: 'b' });
    expect(listener.clients()).toHaveLength(2);
    await server.disconnectClients('a', 'demoted');
    expect(await ca.closesWithin()).toBe(true);
    expect(a.closedClients).toHaveLength(1);
    expect((await simpleRequest(cb, NBD_CMD_READ, 0, 4)).data.length).toBe(4);
    expect(listener.clients()).toHaveLength(1);
  });
});

describe('STARTTLS', () => {
  let key: Buffer | null = null;
  let cert: Buffer | null = null;

  beforeAll(() => {
    if (missingTools('openssl').length > 0) return;
    const keyPath = join(dir, 'key.pem');
    const certPath = join(dir, 'cert.pem');
    const r = spawnSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', keyPath, '-out', certPath, '-days', '1', '-subj', '/CN=localhost',
    ], { stdio: 'ignore' });
    if (r.status !== 0) throw new Error('openssl req failed');
    key = readFileSync(keyPath);
    cert = readFileSync(certPath);
  });

  const policy = (tls: 'optional' | 'required'): ListenerPolicy => ({ tls, tlsKey: key!, tlsCert: cert!, allow: [] });

  it('upgrades in place, forgets what was agreed in the clear, refuses a second STARTTLS', async (ctx) => {
    if (!key) return ctx.skip();
    const { listener } = await serve([exp()], policy('optional'));
    const c = await connect(listener);
    await c.greeting();
    expect((await c.option(NBD_OPT_STRUCTURED_REPLY))[0]!.type).toBe(NBD_REP_ACK);
    expect((await c.option(NBD_OPT_STARTTLS))[0]!.type).toBe(NBD_REP_ACK);
    await c.startTls();
    expect((await c.option(NBD_OPT_STARTTLS))[0]!.type).toBe(NBD_REP_ERR_INVALID);
    const go = await c.option(NBD_OPT_GO, encodeInfoRequest('', []));
    expect(go[go.length - 1]!.type).toBe(NBD_REP_ACK);
    // Structured replies were negotiated before TLS: gone now, so no DF and simple replies.
    expect(go[0]!.data.readUInt16BE(10) & NBD_FLAG_SEND_DF).toBe(0);
    await simpleRequest(c, NBD_CMD_WRITE, 0, 5, 0, Buffer.from('tls!!'));
    const r = await simpleRequest(c, NBD_CMD_READ, 0, 5);
    expect(r.header.kind).toBe('simple');
    expect(r.data.toString()).toBe('tls!!');
    expect(listener.clients()[0]!.tls).toBe(true);
  });

  it('required: every option but STARTTLS and ABORT gets ERR_TLS_REQD; EXPORT_NAME is a disconnect', async (ctx) => {
    if (!key) return ctx.skip();
    const { listener } = await serve([exp()], policy('required'));
    const c = await connect(listener);
    await c.greeting();
    for (const [opt, data] of [[NBD_OPT_LIST, undefined], [NBD_OPT_GO, encodeInfoRequest('', [])], [NBD_OPT_INFO, encodeInfoRequest('', [])], [NBD_OPT_STRUCTURED_REPLY, undefined]] as const) {
      const r = await c.option(opt, data);
      expect(r).toHaveLength(1);
      expect(r[0]!.type).toBe(NBD_REP_ERR_TLS_REQD);
    }
    expect((await c.option(NBD_OPT_STARTTLS))[0]!.type).toBe(NBD_REP_ACK);
    await c.startTls();
    const go = await c.option(NBD_OPT_GO, encodeInfoRequest('', []));
    expect(go[go.length - 1]!.type).toBe(NBD_REP_ACK);

    const d = await connect(listener);
    await d.greeting();
    d.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('r0'));
    expect(await d.closesWithin()).toBe(true);

    const a = await connect(listener);
    await a.greeting();
    expect((await a.option(NBD_OPT_ABORT))[0]!.type).toBe(NBD_REP_ACK);
  });

  it('plaintext pipelined behind STARTTLS is never acted on: the connection is dropped', async (ctx) => {
    if (!key) return ctx.skip();
    const e = exp();
    const log = captureLogger();
    const { listener } = await serve([e], policy('optional'), undefined, log);
    const c = await connect(listener);
    await c.greeting();
    c.write(Buffer.concat([encodeOption(NBD_OPT_STARTTLS), encodeOption(NBD_OPT_GO, encodeInfoRequest('', []))]));
    const ack = await c.readOptionReply();
    expect(ack.type).toBe(NBD_REP_ACK);
    expect(await c.closesWithin()).toBe(true);
    expect(c.pending).toBe(0);
    expect(e.opened).toHaveLength(0);
    expect(log.warnings.join('\n')).toContain('plaintext data after STARTTLS');
  });

  it('with a CA, only clients holding a certificate it signed get through', async (ctx) => {
    if (!key) return ctx.skip();
    const { listener } = await serve([exp()], { ...policy('required'), tlsCa: cert! });
    const anon = await connect(listener);
    await anon.greeting();
    expect((await anon.option(NBD_OPT_STARTTLS))[0]!.type).toBe(NBD_REP_ACK);
    // TLS 1.3 reports the refusal after the handshake: either way, no option gets an answer.
    const refused = await anon.startTls().then(
      async () => {
        anon.sendOption(NBD_OPT_LIST);
        return anon.readOptionReply().then(() => false, () => true);
      },
      () => true,
    );
    expect(refused).toBe(true);

    const known = await connect(listener);
    await known.greeting();
    expect((await known.option(NBD_OPT_STARTTLS))[0]!.type).toBe(NBD_REP_ACK);
    await known.startTls({ key: key!, cert: cert! });
    const go = await known.option(NBD_OPT_GO, encodeInfoRequest('', []));
    expect(go[go.length - 1]!.type).toBe(NBD_REP_ACK);

    // A certificate from elsewhere is refused after the handshake.
    const r = spawnSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', join(dir, 'k2.pem'), '-out', join(dir, 'c2.pem'), '-days', '1', '-subj', '/CN=stranger',
    ], { stdio: 'ignore' });
    expect(r.status).toBe(0);
    const stranger = await connect(listener);
    await stranger.greeting();
    expect((await stranger.option(NBD_OPT_STARTTLS))[0]!.type).toBe(NBD_REP_ACK);
    await stranger.startTls({ key: readFileSync(join(dir, 'k2.pem')), cert: readFileSync(join(dir, 'c2.pem')) }).catch(() => undefined);
    expect(await stranger.closesWithin()).toBe(true);
  });

  it('off: STARTTLS gets ERR_POLICY and negotiation goes on', async () => {
    const { listener } = await serve([exp()]);
    const c = await connect(listener);
    await c.greeting();
    expect((await c.option(NBD_OPT_STARTTLS))[0]!.type).toBe(NBD_REP_ERR_POLICY);
    const go = await c.option(NBD_OPT_GO, encodeInfoRequest('', []));
    expect(go[go.length - 1]!.type).toBe(NBD_REP_ACK);
  });
});

describe('real clients (sanity; the broad interop suite drives the daemon)', () => {
  it('nbdinfo reads the export, its flags and its allocation map', async (ctx) => {
    if (missingTools('nbdinfo').length > 0) return ctx.skip();
    const e = exp('r0', 8 * MiB, { description: 'sanity' });
    await e.store.write(0, Buffer.alloc(65536, 1));
    const { listener } = await serve([e]);
    if (listener.address.kind !== 'tcp') throw new Error('tcp expected');
    const uri = `nbd://127.0.0.1:${listener.address.port}/r0`;
    const { stdout } = await execFileP('nbdinfo', ['--json', uri]);
    const info = JSON.parse(stdout) as { exports: Array<Record<string, unknown>> };
    const x = info.exports[0]!;
    expect(x['export-size']).toBe(8 * MiB);
    expect(x['can_flush']).toBe(true);
    expect(x['can_multi_conn']).toBe(true);
    expect(x['is_read_only']).toBe(false);
    expect(x['block_size_maximum']).toBe(32 * MiB);
    const map = await execFileP('nbdinfo', ['--map', uri]);
    expect(map.stdout).toMatch(/^\s*0\s+65536\s+0\s+data/m);
    expect(map.stdout).toMatch(/65536\s+8323072\s+3\s+hole,zero/);
  });

  it('nbdcopy round-trips 16 MiB through the server over a unix socket', async (ctx) => {
    if (missingTools('nbdcopy').length > 0) return ctx.skip();
    const e = exp('r0', 16 * MiB);
    const path = join(dir, 'copy.sock');
    await serve([e], OPEN, { kind: 'unix', path });
    const src = join(dir, 'src.img');
    const dst = join(dir, 'dst.img');
    const data = Buffer.alloc(16 * MiB);
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32BE(i, i);
    writeFileSync(src, data);
    const uri = `nbd+unix:///r0?socket=${path}`;
    await execFileP('nbdcopy', [src, uri]);
    await execFileP('nbdcopy', [uri, dst]);
    expect(readFileSync(dst).equals(data)).toBe(true);
  });
});

/** Reads into the buffer the server lends, checks it is never lent twice at once, and takes writev. */
class LendingExport extends MemoryExport {
  reads = 0;
  lentTwice = 0;
  reusedBuffers = 0;
  writevCalls = 0;
  /** When set, reads fill the lent buffer with this at once instead of reading the store. */
  fill: ((offset: number, into: Buffer) => void) | null = null;
  private readonly seen = new WeakSet<ArrayBufferLike>();
  private readonly inUse = new Set<ArrayBufferLike>();

  override async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (into === undefined || into.length !== length) throw new Error('the server lent no buffer of the right length');
    const mem = into.buffer;
    if (this.inUse.has(mem)) this.lentTwice++;
    if (this.seen.has(mem)) this.reusedBuffers++;
    this.seen.add(mem);
    if (this.fill) {
      this.fill(offset, into);
      this.reads++;
      return into;
    }
    this.inUse.add(mem);
    try {
      const data = await super.read(offset, length);
      data.copy(into);
      this.reads++;
      return into;
    } finally {
      this.inUse.delete(mem);
    }
  }

  async writev(offset: number, parts: readonly Buffer[], fua: boolean): Promise<void> {
    this.writevCalls++;
    await this.write(offset, Buffer.concat(parts), fua);
  }
}
