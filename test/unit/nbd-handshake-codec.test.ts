import { describe, expect, it } from 'vitest';
import {
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_SET_META_CONTEXT,
  NBD_REP_ACK,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
} from '../../src/nbd/constants.js';
import {
  HandshakeDecoder,
  decodeNbdString,
  decodeOptionReply,
  encodeAck,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeInfoString,
  encodeMetaContextReply,
  encodeMetaContextRequest,
  encodeOption,
  encodeOptionError,
  encodeServerReply,
  parseInfoRequest,
  parseMetaContextRequest,
  type HandshakeEvent,
} from '../../src/nbd/handshake-codec.js';

function flags(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}

/** Feeds `pieces` one by one, draining events after each; returns events and the verdict. */
function decodeAll(pieces: Buffer[], limit?: number): { events: HandshakeEvent[]; violation: string | null } {
  const d = new HandshakeDecoder(limit === undefined ? {} : { maxOptionBytes: limit });
  const events: HandshakeEvent[] = [];
  for (const p of pieces) {
    d.push(p);
    for (let e = d.next(); e !== null; e = d.next()) events.push(e);
  }
  return { events, violation: d.violation };
}

const stream = Buffer.concat([
  flags(3),
  encodeOption(NBD_OPT_LIST),
  encodeOption(NBD_OPT_INFO, encodeInfoRequest('r0', [NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE])),
  encodeOption(9999, Buffer.alloc(300, 0xab)),
  encodeOption(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('r0', ['base:allocation'])),
  encodeOption(NBD_OPT_GO, encodeInfoRequest('', [])),
]);

describe('greeting', () => {
  it('is NBDMAGIC IHAVEOPT with FIXED_NEWSTYLE|NO_ZEROES', () => {
    expect(encodeGreeting().toString('hex')).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
  });
});

describe('HandshakeDecoder', () => {
  const whole = decodeAll([stream]);

  it('decodes client flags and every option with its data', () => {
    expect(whole.violation).toBeNull();
    expect(whole.events.map((e) => (e.kind === 'option' ? e.option : -1))).toEqual([-1, NBD_OPT_LIST, NBD_OPT_INFO, 9999, NBD_OPT_SET_META_CONTEXT, NBD_OPT_GO]);
    expect(whole.events[0]).toEqual({ kind: 'clientFlags', flags: 3 });
    const info = whole.events[2]!;
    expect(info.kind === 'option' && parseInfoRequest(info.data)).toEqual({ kind: 'ok', name: 'r0', infos: [NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE] });
  });

  it('gives the same result at every split point', () => {
    for (let i = 0; i <= stream.length; i++) {
      expect(decodeAll([stream.subarray(0, i), stream.subarray(i)])).toEqual(whole);
    }
  });

  it('gives the same result byte by byte', () => {
    const pieces: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) pieces.push(stream.subarray(i, i + 1));
    expect(decodeAll(pieces)).toEqual(whole);
  });

  it('rejects an oversize option from its header alone, before any data arrives', () => {
    const h = encodeOption(NBD_OPT_INFO);
    h.writeUInt32BE(0xffffffff, 12);
    const r = decodeAll([flags(1), h], 65536);
    expect(r.violation).toMatch(/exceeds the limit/);
    // Data that follows is ignored, not buffered.
    const d = new HandshakeDecoder({ maxOptionBytes: 65536 });
    d.push(Buffer.concat([flags(1), h]));
    while (d.next() !== null);
    d.push(Buffer.alloc(100000));
    expect(d.next()).toBeNull();
    expect(d.buffered()).toBe(0);
  });

  it('rejects an EXPORT_NAME longer than 4096 bytes and a bad option magic', () => {
    expect(decodeAll([flags(1), encodeOption(NBD_OPT_EXPORT_NAME, Buffer.alloc(4097, 0x61))]).violation).toMatch(/4096/);
    expect(decodeAll([flags(1), encodeOption(NBD_OPT_EXPORT_NAME, Buffer.alloc(4096, 0x61))]).violation).toBeNull();
    const bad = encodeOption(NBD_OPT_LIST);
    bad[0] = 0;
    expect(decodeAll([flags(1), bad]).violation).toBe('bad option magic');
  });

  it('hands over the bytes that follow the last option', () => {
    const d = new HandshakeDecoder();
    const tail = Buffer.from('transmission bytes');
    const all = Buffer.concat([flags(1), encodeOption(NBD_OPT_GO, encodeInfoRequest('', [])), tail]);
    d.push(all.subarray(0, 7));
    d.push(all.subarray(7, 30));
    d.push(all.subarray(30));
    expect(d.next()!.kind).toBe('clientFlags');
    expect(d.next()!.kind).toBe('option');
    expect(d.buffered()).toBe(tail.length);
    expect(Buffer.concat(d.takeRemaining()).equals(tail)).toBe(true);
    expect(d.buffered()).toBe(0);
  });
});

describe('INFO/GO and META_CONTEXT payloads', () => {
  it('round-trip', () => {
    expect(parseInfoRequest(encodeInfoRequest('disk ü', [0, 1, 2, 3]))).toEqual({ kind: 'ok', name: 'disk ü', infos: [0, 1, 2, 3] });
    expect(parseMetaContextRequest(encodeMetaContextRequest('r0', ['base:', 'qemu:x']))).toEqual({ kind: 'ok', exportName: 'r0', queries: ['base:', 'qemu:x'] });
    expect(parseMetaContextRequest(encodeMetaContextRequest('', []))).toEqual({ kind: 'ok', exportName: '', queries: [] });
  });

  it('every truncation or extension is invalid, never a throw', () => {
    const info = encodeInfoRequest('r0', [1, 3]);
    const meta = encodeMetaContextRequest('r0', ['base:allocation', 'x:y']);
    for (let i = 0; i < info.length; i++) expect(parseInfoRequest(info.subarray(0, i)).kind).toBe('invalid');
    for (let i = 0; i < meta.length; i++) expect(parseMetaContextRequest(meta.subarray(0, i)).kind).toBe('invalid');
    expect(parseInfoRequest(Buffer.concat([info, Buffer.alloc(1)])).kind).toBe('invalid');
    expect(parseMetaContextRequest(Buffer.concat([meta, Buffer.alloc(1)])).kind).toBe('invalid');
  });

  it('bounds counts and lengths by the data actually present', () => {
    const meta = encodeMetaContextRequest('r0', []);
    meta.writeUInt32BE(0xffffffff, meta.length - 4);
    expect(parseMetaContextRequest(meta)).toEqual({ kind: 'invalid', reason: 'query count runs past the option' });
    const info = encodeInfoRequest('r0', []);
    info.writeUInt32BE(0xfffffff0, 0);
    expect(parseInfoRequest(info).kind).toBe('invalid');
  });

  it('strings: at most 4096 bytes of UTF-8 without NUL', () => {
    expect(decodeNbdString(Buffer.from('ok'), 'name')).toEqual({ ok: true, value: 'ok' });
    expect(decodeNbdString(Buffer.from([0x61, 0]), 'name').ok).toBe(false);
    expect(decodeNbdString(Buffer.from([0xff, 0xfe]), 'name').ok).toBe(false);
    expect(decodeNbdString(Buffer.alloc(4097, 0x61), 'name').ok).toBe(false);
    expect(decodeNbdString(Buffer.alloc(4096, 0x61), 'name').ok).toBe(true);
  });
});

describe('option replies', () => {
  const reply = (b: Buffer) => {
    const r = decodeOptionReply(b)!;
    expect(r.used).toBe(b.length);
    return r.reply;
  };

  it('frames every reply with the option echoed and exact lengths', () => {
    expect(reply(encodeAck(NBD_OPT_GO))).toEqual({ option: NBD_OPT_GO, type: NBD_REP_ACK, data: Buffer.alloc(0) });
    const s = reply(encodeServerReply(NBD_OPT_LIST, 'r0', 'desc'));
    expect(s.type).toBe(NBD_REP_SERVER);
    expect(s.data.length).toBe(4 + 2 + 4);
    expect(s.data.readUInt32BE(0)).toBe(2);
    const ex = reply(encodeInfoExport(NBD_OPT_GO, 2 ** 40 + 5, 0x1234));
    expect(ex.type).toBe(NBD_REP_INFO);
    expect(ex.data.length).toBe(12);
    expect(ex.data.readUInt16BE(0)).toBe(NBD_INFO_EXPORT);
    expect(ex.data.readBigUInt64BE(2)).toBe(2n ** 40n + 5n);
    expect(ex.data.readUInt16BE(10)).toBe(0x1234);
    const bs = reply(encodeInfoBlockSize(NBD_OPT_GO, 1, 4096, 32 * 1024 * 1024));
    expect(bs.data.length).toBe(14);
    expect(bs.data.toString('hex')).toBe('0003' + '00000001' + '00001000' + '02000000');
    expect(reply(encodeInfoString(NBD_OPT_GO, NBD_INFO_NAME, 'r0')).data.toString('hex')).toBe('0001' + '7230');
    const m = reply(encodeMetaContextReply(NBD_OPT_SET_META_CONTEXT, 7, 'base:allocation'));
    expect(m.type).toBe(NBD_REP_META_CONTEXT);
    expect(m.data.readUInt32BE(0)).toBe(7);
    expect(m.data.subarray(4).toString()).toBe('base:allocation');
    const e = reply(encodeOptionError(NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, 'r0 is Secondary on beta'));
    expect(e.type).toBe(NBD_REP_ERR_UNKNOWN);
    expect(e.data.toString()).toBe('r0 is Secondary on beta');
  });

  it('cuts error messages at 4096 bytes on a character boundary', () => {
    const e = reply(encodeOptionError(NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, 'é'.repeat(3000)));
    expect(e.data.length).toBe(4096);
    expect(e.data.toString()).toBe('é'.repeat(2048));
  });

  it('decodeOptionReply needs every byte', () => {
    const b = encodeServerReply(NBD_OPT_LIST, 'r0', 'desc');
    for (let i = 0; i < b.length; i++) expect(decodeOptionReply(b.subarray(0, i))).toBeNull();
  });

  it('EXPORT_NAME reply is 10 bytes with NO_ZEROES, else 134 ending in zeroes', () => {
    const short = encodeExportNameReply(1 << 20, 0x0d, true);
    expect(short.toString('hex')).toBe('0000000000100000' + '000d');
    const long = encodeExportNameReply(1 << 20, 0x0d, false);
    expect(long.length).toBe(134);
    expect(long.subarray(10).equals(Buffer.alloc(124))).toBe(true);
  });
});
