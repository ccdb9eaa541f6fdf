import { describe, expect, it } from 'vitest';
import {
  DEFAULT_MAX_PACKET_LENGTH,
  FEATURES,
  HEADER_FLAG_DIGEST,
  HEADER_SIZE,
  MAX_BATCH_RUNS,
  PACKET_SPECS,
  PARAMS_FLAGS,
  PacketDecoder,
  PacketType,
  UUID_FLAGS,
  WIRE_MAGIC,
  WRITE_FLAGS,
  encodeInto,
  encodePacket,
  encodedLength,
  type Packet,
  type PacketDecoderOptions,
  type PacketKind,
} from '../../src/replication/wire/index.js';
import { seededRandom as prng } from '../helpers/seeded-random.js';

function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** One packet of every kind, fields chosen to exercise widths (u64 above 2^32, max u32, UTF-8). */
const SAMPLES: Packet[] = [
  { kind: 'hello', protocolMin: 1, protocolMax: 3, features: (FEATURES.INTEGRITY_CRC32C | FEATURES.TRIM | 0x8000_0000) >>> 0, sessionId: 0xfedc_ba98_7654_3210n, nodeId: 31, channel: 'meta', resource: 'r0-données' },
  { kind: 'auth-challenge', challenge: bytes(32, 1) },
  { kind: 'auth-response', response: bytes(32, 2) },
  { kind: 'auth-ok' },
  { kind: 'params', protocol: 'B', flags: PARAMS_FLAGS.DISCARD_MY_DATA, csumsAlg: 'sha256', verifyAlg: '' },
  { kind: 'sizes', dataSizeBytes: 2 ** 52 + 4096, maxPayloadBytes: 0xffff_ffff },
  { kind: 'uuids', current: 0xffff_ffff_ffff_ffffn, bitmap: 1n, history: [0x1234_5678_9abc_def0n, 0n], flags: UUID_FLAGS.CONSISTENT | UUID_FLAGS.CRASHED_PRIMARY, dirtyBlocks: 2 ** 40 + 7 },
  { kind: 'state', role: 'Primary', disk: 'UpToDate' },
  { kind: 'bitmap', last: true, startBit: 2 ** 35, payload: bytes(9, 3) },
  { kind: 'decision', strategy: 'target-use-bitmap', rule: 'bitmap-peer' },
  { kind: 'data', seq: 2 ** 53 - 1, epoch: 0xffff_ffff, offset: 2 ** 41 + 512, flags: WRITE_FLAGS.FUA | WRITE_FLAGS.SEND_WRITE_ACK, payload: bytes(100, 4) },
  { kind: 'zeroes', seq: 5, epoch: 2, offset: 4096, length: 0xffff_f000, flags: WRITE_FLAGS.NO_HOLE },
  { kind: 'trim', seq: 6, epoch: 2, offset: 8192, length: 65536, flags: WRITE_FLAGS.SEND_RECV_ACK },
  { kind: 'recv-ack', seq: 5 },
  { kind: 'write-ack', seq: 2 ** 33 },
  { kind: 'neg-ack', seq: 7, errno: 5 },
  { kind: 'barrier', epoch: 2 },
  { kind: 'barrier-ack', epoch: 2, writes: 3 },
  { kind: 'flush', id: 9 },
  { kind: 'flush-ack', id: 9 },
  { kind: 'out-of-sync', offset: 12288, length: 4096 },
  { kind: 'rs-data-request', id: 10, offset: 2 ** 40, length: 131072 },
  { kind: 'rs-data-reply', id: 10, offset: 2 ** 40, payload: bytes(64, 5) },
  { kind: 'csum-rs-request', id: 11, offset: 0, length: 4096, digest: bytes(32, 6) },
  { kind: 'rs-is-in-sync', id: 11, offset: 0, length: 4096 },
  { kind: 'rs-write-ack', id: 10 },
  { kind: 'neg-rs-reply', id: 12, errno: 61 },
  { kind: 'ov-request', id: 13, offset: 4096, length: 4096 },
  { kind: 'ov-reply', id: 13, offset: 4096, length: 4096, digest: bytes(4, 7) },
  { kind: 'sync-pause' },
  { kind: 'sync-resume' },
  { kind: 'sync-done' },
  { kind: 'rs-batch-request', id: 2 ** 50, runs: [{ offset: 0, length: 4096 }, { offset: 2 ** 40, length: 0xffff_ffff }, { offset: 2 ** 53 - 4096, length: 4096 }] },
  { kind: 'rs-batch-reply', id: 2 ** 50, runs: [{ offset: 4096, length: 3 }, { offset: 4099, length: 1 }, { offset: 2 ** 33, length: 5 }], payload: bytes(9, 10) },
  { kind: 'data-request', id: 14, offset: 512, length: 1024 },
  { kind: 'data-reply', id: 14, offset: 512, payload: bytes(3, 8) },
  { kind: 'neg-data-reply', id: 15, errno: 5 },
  { kind: 'ping' },
  { kind: 'ping-ack' },
  { kind: 'disconnect', reason: 'shutting down — bye' },
  { kind: 'twopc-prepare', txId: 2 ** 53 - 1, change: 'promote', initiatorNodeId: 31, lostPrimaryNodeId: 0, lastSeq: 2 ** 53 - 1 },
  { kind: 'peers-in-sync', epoch: 0xffffffff },
  { kind: 'twopc-reply', txId: 7, yes: false, reason: 'primary-exists', primaryNodeId: 2 },
  { kind: 'twopc-commit', txId: 7 },
  { kind: 'twopc-abort', txId: 8 },
];

/** Empty payloads and digests are legal too. */
const EDGE_SAMPLES: Packet[] = [
  { kind: 'data', seq: 0, epoch: 0, offset: 0, flags: 0, payload: Buffer.alloc(0) },
  { kind: 'bitmap', last: false, startBit: 0, payload: Buffer.alloc(0) },
  { kind: 'csum-rs-request', id: 0, offset: 0, length: 0, digest: Buffer.alloc(0) },
  { kind: 'ov-reply', id: 0, offset: 0, length: 0, digest: bytes(64, 9) },
  { kind: 'hello', protocolMin: 0, protocolMax: 0, features: 0, sessionId: 0n, nodeId: 0, channel: 'data', resource: 'x'.repeat(255) },
  { kind: 'disconnect', reason: '' },
  { kind: 'twopc-reply', txId: 0, yes: true, reason: 'none', primaryNodeId: 0xff },
  { kind: 'twopc-prepare', txId: 0, change: 'promote', initiatorNodeId: 0, lostPrimaryNodeId: 0xff, lastSeq: 0 },
  { kind: 'params', protocol: 'C', flags: 0, csumsAlg: 'a'.repeat(63), verifyAlg: 'b'.repeat(63) },
  // A batch of one range.
  { kind: 'rs-batch-request', id: 0, runs: [{ offset: 2 ** 53 - 1, length: 1 }] },
  { kind: 'rs-batch-reply', id: 0, runs: [{ offset: 0, length: 1 }], payload: bytes(1, 11) },
];

const ALL = [...SAMPLES, ...EDGE_SAMPLES];

interface Outcome {
  packets: Packet[];
  violation: string | null;
  maxAllocated: number;
}

const CODEC: PacketDecoderOptions = { channel: 'any', phase: 'unchecked' };

function decodeAll(pieces: Buffer[], options: Partial<PacketDecoderOptions> = {}): Outcome {
  let maxAllocated = 0;
  const d = new PacketDecoder({
    ...CODEC,
    ...options,
    allocate: (n) => {
      maxAllocated = Math.max(maxAllocated, n);
      return Buffer.allocUnsafe(n);
    },
  });
  const packets: Packet[] = [];
  for (const piece of pieces) {
    d.push(piece);
    // Payload views may point into reused chunks in a real link; copy for comparison.
    for (let p = d.next(); p !== null; p = d.next()) packets.push(snapshot(p));
  }
  return { packets, violation: d.violation, maxAllocated };
}

/** A copy whose Buffers own their bytes (a decoded payload may be a view of an input chunk). */
function snapshot(p: Packet): Packet {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(p)) out[k] = Buffer.isBuffer(v) ? Buffer.from(v) : Array.isArray(v) ? [...v] : v;
  return out as unknown as Packet;
}

function wire(packets: Packet[], integrity = false): Buffer {
  return Buffer.concat(packets.flatMap((p) => encodePacket(p, { integrity })));
}

/** Deep equality that treats Buffers (and their clones) by content. */
function normalise(packets: Packet[]): unknown {
  return packets.map((p) => Object.fromEntries(Object.entries(p).map(([k, v]) => [k, Buffer.isBuffer(v) ? `hex:${v.toString('hex')}` : v])));
}

describe('peer packet codec: round trips', () => {
  it('has one sample of every packet kind', () => {
    expect(new Set(SAMPLES.map((p) => p.kind))).toEqual(new Set(PACKET_SPECS.map((s) => s.kind)));
    expect(new Set(PACKET_SPECS.map((s) => s.code)).size).toBe(PACKET_SPECS.length);
  });

  for (const p of ALL) {
    it(`round-trips ${p.kind}${EDGE_SAMPLES.includes(p) ? ' (edge values)' : ''}`, () => {
      const parts = encodePacket(p);
      const flat = Buffer.concat(parts);
      expect(flat.length).toBe(encodedLength(p));
      expect(flat.readUInt32BE(0)).toBe(WIRE_MAGIC);
      expect(flat.readUInt32BE(8)).toBe(flat.length - HEADER_SIZE);
      const out = decodeAll([flat]);
      expect(out.violation).toBeNull();
      expect(normalise(out.packets)).toEqual(normalise([p]));
      // encodeInto writes the same bytes at any offset.
      const target = Buffer.alloc(flat.length + 7, 0xee);
      expect(encodeInto(p, target, 3)).toBe(flat.length);
      expect(target.subarray(3, 3 + flat.length)).toEqual(flat);
    });
  }

  it('hands the payload out as separate views: header never copies it', () => {
    const payload = bytes(4096, 1);
    const p: Packet = { kind: 'data', seq: 1, epoch: 1, offset: 0, flags: 0, payload };
    const parts = encodePacket(p);
    expect(parts).toHaveLength(2);
    expect(parts[1]).toBe(payload);
    const withDigest = encodePacket(p, { integrity: true });
    expect(withDigest).toHaveLength(3);
    expect(withDigest[1]).toBe(payload);
    // The digest lives in the header's allocation (one allocation per packet).
    expect(withDigest[2]!.buffer).toBe(withDigest[0]!.buffer);
    expect(Buffer.concat(withDigest).readUInt16BE(6)).toBe(HEADER_FLAG_DIGEST);
  });

  it('decodes a payload inside one chunk as a view of that chunk', () => {
    const chunk = wire([SAMPLES.find((p) => p.kind === 'data')!]);
    const d = new PacketDecoder(CODEC);
    d.push(chunk);
    const p = d.next();
    expect(p?.kind).toBe('data');
    expect(p!.kind === 'data' && p.payload.buffer === chunk.buffer).toBe(true);
  });

  it('refuses to encode out-of-range fields (a caller bug), with a RangeError', () => {
    expect(() => encodePacket({ kind: 'recv-ack', seq: 2 ** 53 })).toThrow(RangeError);
    expect(() => encodePacket({ kind: 'recv-ack', seq: -1 })).toThrow(RangeError);
    expect(() => encodePacket({ kind: 'barrier', epoch: 2 ** 32 })).toThrow(RangeError);
    expect(() => encodePacket({ kind: 'auth-challenge', challenge: Buffer.alloc(31) })).toThrow(RangeError);
    expect(() => encodePacket({ kind: 'disconnect', reason: 'é'.repeat(128) })).toThrow(RangeError);
    expect(() => encodePacket({ ...(SAMPLES[0] as Extract<Packet, { kind: 'hello' }>), nodeId: 32 })).toThrow(RangeError);
    expect(() => encodePacket({ kind: 'data', seq: 1, epoch: 1, offset: 0, flags: 0x100, payload: Buffer.alloc(1) })).toThrow(RangeError);
    expect(() => encodePacket({ kind: 'ov-reply', id: 1, offset: 0, length: 1, digest: Buffer.alloc(65) })).toThrow(RangeError);
    expect(() => encodeInto({ kind: 'ping' }, Buffer.alloc(11), 0)).toThrow(RangeError);
  });
});

describe('peer packet codec: TCP may cut anywhere', () => {
  for (const integrity of [false, true]) {
    const stream = wire(ALL, integrity);
    const whole = decodeAll([stream], { integrity });

    it(`decodes the stream of every packet kind whole${integrity ? ' (with digests)' : ''}`, () => {
      expect(whole.violation).toBeNull();
      expect(normalise(whole.packets)).toEqual(normalise(ALL));
    });

    it(`gives the same packets at every split point${integrity ? ' (with digests)' : ''}`, () => {
      for (let i = 0; i <= stream.length; i++) {
        const out = decodeAll([stream.subarray(0, i), stream.subarray(i)], { integrity });
        expect(out.violation).toBeNull();
        expect(out.packets).toEqual(whole.packets);
      }
    });

    it(`gives the same packets byte by byte${integrity ? ' (with digests)' : ''}`, () => {
      const pieces: Buffer[] = [];
      for (let i = 0; i < stream.length; i++) pieces.push(stream.subarray(i, i + 1));
      const out = decodeAll(pieces, { integrity });
      expect(out.violation).toBeNull();
      expect(out.packets).toEqual(whole.packets);
    });
  }

  it('every packet alone, at every split point and byte by byte', () => {
    for (const p of ALL) {
      const flat = wire([p], true);
      const expected = normalise([p]);
      for (let i = 0; i <= flat.length; i++) {
        const out = decodeAll([flat.subarray(0, i), flat.subarray(i)], { integrity: true });
        expect(out.violation, `${p.kind} split at ${i}`).toBeNull();
        expect(normalise(out.packets), `${p.kind} split at ${i}`).toEqual(expected);
      }
      const pieces = [...flat].map((_, i) => flat.subarray(i, i + 1));
      expect(normalise(decodeAll(pieces, { integrity: true }).packets)).toEqual(expected);
    }
  });
});

/** A header for `kind` with any length and flags. */
function header(code: number, length: number, flags = 0, magic = WIRE_MAGIC): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  h.writeUInt32BE(magic, 0);
  h.writeUInt16BE(code, 4);
  h.writeUInt16BE(flags, 6);
  h.writeUInt32BE(length, 8);
  return h;
}

function violationOf(input: Buffer, options: Partial<PacketDecoderOptions> = {}): string | null {
  const out = decodeAll([input], options);
  return out.violation;
}

describe('peer packet codec: violations, never throws', () => {
  it('bad magic', () => {
    expect(violationOf(header(PacketType.PING, 0, 0, 0x16030100))).toBe('bad magic 0x16030100');
  });

  it('an impossible length is refused from the header alone, before any buffering', () => {
    let allocated = 0;
    const d = new PacketDecoder({ ...CODEC, maxLength: 1 << 20, allocate: (n) => ((allocated += n), Buffer.alloc(n)) });
    d.push(header(PacketType.DATA, (1 << 20) + 1));
    expect(d.next()).toBeNull();
    expect(d.violation).toBe(`data length ${(1 << 20) + 1} is beyond the limit of ${1 << 20}`);
    d.push(Buffer.alloc(4096));
    expect(d.next()).toBeNull();
    expect(d.buffered()).toBe(0);
    expect(allocated).toBe(0);
    expect(violationOf(header(PacketType.DATA, 0xffff_ffff))).toMatch(`beyond the limit of ${DEFAULT_MAX_PACKET_LENGTH}`);
  });

  it('setMaxLength tightens the limit between packets', () => {
    const d = new PacketDecoder(CODEC);
    d.push(wire([SAMPLES.find((p) => p.kind === 'data')!]));
    expect(d.next()?.kind).toBe('data');
    d.setMaxLength(24 + 64);
    d.push(wire([{ kind: 'data', seq: 1, epoch: 1, offset: 0, flags: 0, payload: bytes(65, 1) }]));
    expect(d.next()).toBeNull();
    expect(d.violation).toBe('data length 89 is beyond the limit of 88');
  });

  it('a length shorter than the fixed part, or not the exact size, is refused', () => {
    expect(violationOf(header(PacketType.DATA, 23))).toBe('data length 23 is shorter than its fixed part of 24 bytes');
    expect(violationOf(header(PacketType.UUIDS, 43))).toBe('uuids length 43 is shorter than its fixed part of 44 bytes');
    expect(violationOf(header(PacketType.UUIDS, 45))).toBe('uuids length 45, expected 44');
    expect(violationOf(header(PacketType.PING, 1))).toBe('ping length 1, expected 0');
    expect(violationOf(header(PacketType.HELLO, 500))).toBe('hello length 500 is beyond its maximum of 274');
    expect(violationOf(header(PacketType.DATA, 24, HEADER_FLAG_DIGEST), { integrity: true })).toBe('data length 24 is shorter than its fixed part of 28 bytes');
  });

  it('truncated variable fields are refused', () => {
    // HELLO whose name length says 10 but the body has 3 name bytes.
    const hello = Buffer.concat(encodePacket({ kind: 'hello', protocolMin: 1, protocolMax: 1, features: 0, sessionId: 1n, nodeId: 1, channel: 'data', resource: 'abc' }));
    hello[HEADER_SIZE + 18] = 10;
    expect(violationOf(hello)).toBe('hello resource name length 10 does not fill the body of 22 bytes');
    const disc = Buffer.concat(encodePacket({ kind: 'disconnect', reason: 'ab' }));
    disc[HEADER_SIZE] = 1;
    expect(violationOf(disc)).toMatch(/disconnect reason length 1 does not fill/);
    const ov = Buffer.concat(encodePacket({ kind: 'ov-reply', id: 1, offset: 0, length: 1, digest: bytes(4, 1) }));
    ov[HEADER_SIZE + 20] = 5;
    expect(violationOf(ov)).toMatch(/ov-reply digest length 5 does not fill/);
    const params = Buffer.concat(encodePacket({ kind: 'params', protocol: 'C', flags: 0, csumsAlg: 'md5', verifyAlg: '' }));
    params[HEADER_SIZE + 8] = 200;
    expect(violationOf(params)).toMatch(/params csums-alg length 200/);
  });

  it('unknown type, unknown flags and bad field values are refused with their names', () => {
    expect(violationOf(header(0x7777, 0))).toBe('unknown packet type 0x7777');
    expect(violationOf(header(PacketType.PING, 0, 0x8000))).toBe('ping has unknown header flags 0x8000');
    const state = Buffer.concat(encodePacket({ kind: 'state', role: 'Primary', disk: 'Failed' }));
    state[HEADER_SIZE + 1] = 7;
    expect(violationOf(state)).toBe('state disk 7 is unknown');
    const ack = Buffer.concat(encodePacket({ kind: 'write-ack', seq: 1 }));
    ack.writeUInt32BE(0x0020_0000, HEADER_SIZE);
    expect(violationOf(ack)).toBe('write-ack seq is beyond 2^53');
    const hello = Buffer.concat(encodePacket(SAMPLES[0]!));
    hello[HEADER_SIZE + 17] = 2;
    expect(violationOf(hello)).toBe('hello channel 2 is neither data (0) nor meta (1)');
    const name = Buffer.concat(encodePacket({ kind: 'disconnect', reason: 'ab' }));
    name[HEADER_SIZE + 1] = 0xff;
    expect(violationOf(name)).toBe('disconnect reason is not UTF-8');
    const uuids = Buffer.concat(encodePacket(SAMPLES.find((p) => p.kind === 'uuids')!));
    uuids.writeUInt32BE(0x200, HEADER_SIZE + 32);
    expect(violationOf(uuids)).toBe('uuids has unknown flags 0x200');
    const decision = Buffer.concat(encodePacket({ kind: 'decision', strategy: 'no-sync', rule: 'equal' }));
    decision[HEADER_SIZE] = 200;
    expect(violationOf(decision)).toBe('decision strategy 200 is unknown');
  });

  it('nothing after a violation is decoded, and later pushes are dropped', () => {
    const d = new PacketDecoder(CODEC);
    d.push(Buffer.concat([...encodePacket({ kind: 'ping' }), header(0x7777, 0), ...encodePacket({ kind: 'ping-ack' })]));
    expect(d.next()).toEqual({ kind: 'ping' });
    expect(d.next()).toBeNull();
    expect(d.violation).toBe('unknown packet type 0x7777');
    d.push(Buffer.concat(encodePacket({ kind: 'ping' })));
    expect(d.next()).toBeNull();
    expect(d.buffered()).toBe(0);
  });
});

describe('peer packet codec: integrity digest', () => {
  const data: Packet = { kind: 'data', seq: 1, epoch: 1, offset: 4096, flags: 0, payload: bytes(4096, 2) };

  it('a flipped payload byte is detected, at any split', () => {
    const flat = wire([data], true);
    for (const at of [HEADER_SIZE + 24, HEADER_SIZE + 24 + 2048, flat.length - 5]) {
      const bad = Buffer.from(flat);
      bad[at]! ^= 0x01;
      expect(violationOf(bad, { integrity: true })).toMatch(/^data failed its integrity digest/);
      const split = decodeAll([bad.subarray(0, 100), bad.subarray(100)], { integrity: true });
      expect(split.violation).toMatch(/integrity digest/);
      expect(split.packets).toEqual([]);
    }
  });

  it('a flipped offset bit is detected too (the digest covers the fixed fields)', () => {
    const bad = wire([data], true);
    bad[HEADER_SIZE + 16 + 7]! ^= 0x10;
    expect(violationOf(bad, { integrity: true })).toMatch(/integrity digest/);
  });

  it('the digest flag must match what was agreed, and only block-data packets carry it', () => {
    expect(violationOf(wire([data], false), { integrity: true })).toBe('data lacks the integrity digest that was agreed');
    expect(violationOf(wire([data], true), { integrity: false })).toBe('data carries a digest but integrity-crc32c was not agreed');
    expect(violationOf(header(PacketType.PING, 4, HEADER_FLAG_DIGEST), { integrity: true })).toBe('ping has the digest flag but carries no block data');
    // Non-data packets are unaffected by integrity.
    expect(decodeAll([wire([{ kind: 'ping' }, { kind: 'bitmap', last: true, startBit: 0, payload: bytes(5, 1) }], true)], { integrity: true }).violation).toBeNull();
  });

  it('setIntegrity switches the requirement between packets', () => {
    const d = new PacketDecoder(CODEC);
    d.push(wire([data], false));
    expect(d.next()?.kind).toBe('data');
    d.setIntegrity(true);
    d.push(wire([data], true));
    expect(d.next()?.kind).toBe('data');
    expect(d.violation).toBeNull();
  });
});

describe('peer packet codec: who may send what, when', () => {
  const hello = (channel: 'data' | 'meta'): Packet => ({ kind: 'hello', protocolMin: 1, protocolMax: 1, features: 0, sessionId: 7n, nodeId: 1, channel, resource: 'r0' });
  const opening = (channel: 'data' | 'meta'): Packet[] => [hello(channel), { kind: 'auth-challenge', challenge: bytes(32, 1) }, { kind: 'auth-response', response: bytes(32, 2) }, { kind: 'auth-ok' }];

  it('accepts the opening in order, then the packets of its connection', () => {
    const d = decodeAll([wire([...opening('data'), SAMPLES[4]!, SAMPLES[10]!])], { channel: 'data', phase: 'hello' });
    expect(d.violation).toBeNull();
    expect(d.packets.map((p) => p.kind)).toEqual(['hello', 'auth-challenge', 'auth-response', 'auth-ok', 'params', 'data']);
    const m = decodeAll([wire([...opening('meta'), { kind: 'ping' }, { kind: 'write-ack', seq: 1 }])], { channel: 'meta', phase: 'hello' });
    expect(m.violation).toBeNull();
  });

  it('nothing but the opening before AUTH_OK: a violation decided at the header, before the body is buffered', () => {
    let allocated = 0;
    const d = new PacketDecoder({ channel: 'data', allocate: (n) => ((allocated += n), Buffer.alloc(n)) });
    d.push(wire([hello('data'), { kind: 'auth-challenge', challenge: bytes(32, 1) }]));
    d.push(header(PacketType.DATA, 1 << 20));
    const got: string[] = [];
    for (let p = d.next(); p !== null; p = d.next()) got.push(p.kind);
    expect(got).toEqual(['hello', 'auth-challenge']);
    expect(d.violation).toBe('data before authentication completed (expected auth-response)');
    expect(allocated).toBe(0);
    expect(violationOf(wire([{ kind: 'ping' }]), { channel: 'meta', phase: 'hello' })).toBe('ping before authentication completed (expected hello)');
    expect(violationOf(wire([hello('data'), { kind: 'auth-ok' }]), { channel: 'data', phase: 'hello' })).toBe('auth-ok before authentication completed (expected auth-challenge)');
  });

  it('packets on the wrong connection and handshake packets after AUTH_OK are violations', () => {
    expect(violationOf(wire([...opening('data'), { kind: 'ping' }]), { channel: 'data', phase: 'hello' })).toBe('ping belongs on the meta connection, not the data connection');
    expect(violationOf(wire([...opening('meta'), SAMPLES[10]!]), { channel: 'meta', phase: 'hello' })).toBe('data belongs on the data connection, not the meta connection');
    expect(violationOf(wire([...opening('data'), hello('data')]), { channel: 'data', phase: 'hello' })).toBe('hello after authentication completed');
    expect(violationOf(wire([hello('meta')]), { channel: 'data', phase: 'hello' })).toBe('hello for the meta connection arrived on the data connection');
  });

  it('an accepted connection learns its channel from HELLO', () => {
    const d = new PacketDecoder({ channel: 'from-hello' });
    expect(d.channel).toBeNull();
    d.push(wire([...opening('meta'), { kind: 'ping' }, SAMPLES[10]!]));
    const kinds: string[] = [];
    for (let p = d.next(); p !== null; p = d.next()) kinds.push(p.kind);
    expect(d.channel).toBe('meta');
    expect(kinds).toEqual(['hello', 'auth-challenge', 'auth-response', 'auth-ok', 'ping']);
    expect(d.violation).toBe('data belongs on the data connection, not the meta connection');
  });

  it('DISCONNECT is accepted at any point and nothing may follow it', () => {
    const early = decodeAll([wire([hello('data'), { kind: 'disconnect', reason: 'authentication failed' }])], { channel: 'data', phase: 'hello' });
    expect(early.violation).toBeNull();
    expect(early.packets.at(-1)).toEqual({ kind: 'disconnect', reason: 'authentication failed' });
    expect(violationOf(wire([{ kind: 'disconnect', reason: '' }, { kind: 'ping' }]), { phase: 'established' })).toBe('ping after DISCONNECT');
  });
});


describe('peer packet codec: fuzz', () => {
  it('never throws, never allocates beyond the limit, and splitting never changes the verdict', () => {
    const rnd = prng(0x3eed);
    const int = (n: number) => Math.floor(rnd() * n);
    const LIMIT = 4096;
    const plain = wire(ALL, false);
    const digested = wire(ALL, true);
    // A real opening followed by everything: exercises the gate (which refuses the meta packets).
    const opening: Packet[] = [
      { kind: 'hello', protocolMin: 1, protocolMax: 1, features: 0, sessionId: 7n, nodeId: 1, channel: 'data', resource: 'r0' },
      { kind: 'auth-challenge', challenge: bytes(32, 1) },
      { kind: 'auth-response', response: bytes(32, 2) },
      { kind: 'auth-ok' },
    ];
    const gated = wire([...opening, ...ALL], false);
    const codes = PACKET_SPECS.map((s) => s.code);
    const INPUTS = 20_000;
    let violations = 0;
    let decoded = 0;
    const seen = new Set<PacketKind>();
    for (let i = 0; i < INPUTS; i++) {
      const integrity = i % 3 === 1;
      const withGate = i % 3 === 2;
      const seed = integrity ? digested : withGate ? gated : plain;
      let input: Buffer;
      const kind = int(5);
      if (kind === 0) {
        // Noise behind a plausible header: right magic, a real type, a random length.
        input = Buffer.alloc(HEADER_SIZE + int(300));
        for (let j = 0; j < input.length; j++) input[j] = int(256);
        header(codes[int(codes.length)]!, rnd() < 0.5 ? int(400) : int(2 ** 32), rnd() < 0.8 ? 0 : HEADER_FLAG_DIGEST).copy(input);
      } else {
        // A slice of the valid stream with a few flipped bytes.
        const start = kind === 4 ? int(seed.length) : 0;
        input = Buffer.from(seed.subarray(start, start + int(seed.length - start + 1)));
        const flips = 1 + int(4);
        for (let f = 0; f < flips && input.length > 0; f++) {
          const at = int(input.length);
          input[at] = rnd() < 0.5 ? int(256) : input[at]! ^ (1 << int(8));
        }
      }
      const options: Partial<PacketDecoderOptions> = withGate
        ? { integrity, maxLength: LIMIT, channel: 'from-hello', phase: 'hello' }
        : { integrity, maxLength: LIMIT };
      const whole = decodeAll([input], options);
      const pieces: Buffer[] = [];
      for (let at = 0; at < input.length; ) {
        const n = 1 + int(64);
        pieces.push(input.subarray(at, at + n));
        at += n;
      }
      const split = decodeAll(pieces, options);
      expect(normalise(split.packets)).toEqual(normalise(whole.packets));
      expect(split.violation).toBe(whole.violation);
      expect(split.maxAllocated).toBeLessThanOrEqual(LIMIT);
      expect(whole.maxAllocated).toBeLessThanOrEqual(LIMIT);
      if (whole.violation !== null) violations++;
      decoded += whole.packets.length;
      if (!withGate) for (const p of whole.packets) seen.add(p.kind);
    }
    console.log(`peer packet decoder fuzz: ${INPUTS} inputs, ${decoded} packets decoded, ${violations} violations, 0 throws`);
    expect(violations).toBeGreaterThan(INPUTS / 2);
    expect(seen.size).toBe(PACKET_SPECS.length);
  });
});

describe('peer packet codec: gathered payloads of replicated and resync data (gatherPayloads)', () => {
  const reply: Packet = { kind: 'rs-data-reply', id: 2 ** 40 + 3, offset: 2 ** 33, payload: bytes(3000, 9) };
  const batch: Packet = { kind: 'rs-batch-reply', id: 5, runs: [{ offset: 0, length: 1000 }, { offset: 8192, length: 1500 }, { offset: 2 ** 41, length: 500 }], payload: bytes(3000, 13) };
  const data: Packet = { kind: 'data', seq: 77, epoch: 3, offset: 2 ** 34, flags: 5, payload: bytes(2500, 17) };
  const around: Packet[] = [{ kind: 'rs-write-ack', id: 1 }, reply, { kind: 'sync-done' }, data, { ...reply, id: 4, payload: Buffer.alloc(0) }, batch];
  const gathers = (p: Packet): p is Extract<Packet, { kind: 'data' | 'rs-data-reply' | 'rs-batch-reply' }> =>
    p.kind === 'data' || p.kind === 'rs-data-reply' || p.kind === 'rs-batch-reply';

  /** The packet as if its payload had come whole (pieces concatenated). */
  function whole(p: Packet): Packet {
    if (!gathers(p) || p.parts === undefined) return p;
    const { parts, ...rest } = p;
    return { ...rest, payload: Buffer.concat(parts) } as Packet;
  }

  for (const integrity of [false, true]) {
    it(`gives the same packets at every split point, as pieces that are views of the input, never allocating${integrity ? ' (with digests)' : ''}`, () => {
      const stream = wire(around, integrity);
      for (let i = 0; i <= stream.length; i++) {
        for (const pieces of [[stream.subarray(0, i), stream.subarray(i)], [stream.subarray(0, i), stream.subarray(i, i + 700), stream.subarray(i + 700)]]) {
          let allocated = 0;
          const d = new PacketDecoder({ ...CODEC, integrity, gatherPayloads: true, allocate: (n) => ((allocated += n), Buffer.alloc(n)) });
          const out: Packet[] = [];
          for (const piece of pieces) {
            d.push(piece);
            for (let p = d.next(); p !== null; p = d.next()) out.push(p);
          }
          expect(d.violation, `split at ${i}`).toBeNull();
          expect(allocated, `split at ${i}`).toBe(0);
          expect(normalise(out.map(whole)), `split at ${i}`).toEqual(normalise(around));
          for (const p of out) {
            if (!gathers(p) || p.parts === undefined) continue;
            expect(p.payload.length).toBe(0);
            expect(p.parts.length).toBeGreaterThan(1);
            for (const part of p.parts) expect(part.buffer).toBe(stream.buffer);
          }
        }
      }
    });
  }

  it('a flipped byte in a gathered payload fails the digest, at any split', () => {
    const flat = wire([reply], true);
    for (const at of [HEADER_SIZE + 16, HEADER_SIZE + 16 + 1500, flat.length - 5]) {
      const bad = Buffer.from(flat);
      bad[at]! ^= 0x01;
      for (const cut of [HEADER_SIZE + 17, HEADER_SIZE + 1000, flat.length - 2]) {
        const out = decodeAll([bad.subarray(0, cut), bad.subarray(cut)], { integrity: true, gatherPayloads: true });
        expect(out.violation, `flip at ${at}, cut at ${cut}`).toMatch(/^rs-data-reply failed its integrity digest/);
        expect(out.packets).toEqual([]);
      }
    }
  });

  it('only DATA and the resync replies are gathered: a DATA_REPLY payload still comes as one buffer', () => {
    const others: Packet[] = [{ kind: 'data-reply', id: 1, offset: 0, payload: bytes(2000, 2) }];
    const stream = wire(others);
    const out = decodeAll([stream.subarray(0, 100), stream.subarray(100, 2100), stream.subarray(2100)], { gatherPayloads: true });
    expect(out.violation).toBeNull();
    expect(out.packets.every((p) => !('parts' in p))).toBe(true);
    expect(normalise(out.packets)).toEqual(normalise(others));
  });

  it('the encoder takes the pieces as the payload: the same bytes as one payload, for encodePacket and encodeInto', () => {
    const p = reply as Extract<Packet, { kind: 'rs-data-reply' }>;
    const pieces: Packet = { kind: 'rs-data-reply', id: p.id, offset: p.offset, payload: Buffer.alloc(0), parts: [p.payload.subarray(0, 1), p.payload.subarray(1, 2000), p.payload.subarray(2000)] };
    for (const integrity of [false, true]) {
      const expected = wire([reply], integrity);
      const parts = encodePacket(pieces, { integrity });
      expect(Buffer.concat(parts)).toEqual(expected);
      // the pieces themselves go out, not copies
      expect(parts.some((b) => b === (pieces as { parts: Buffer[] }).parts[1])).toBe(true);
      expect(encodedLength(pieces, { integrity })).toBe(expected.length);
      const into = Buffer.alloc(expected.length + 3);
      expect(encodeInto(pieces, into, 3, { integrity })).toBe(expected.length);
      expect(into.subarray(3)).toEqual(expected);
    }
    expect(() => encodePacket({ ...pieces, payload: Buffer.alloc(1) })).toThrow(RangeError);
  });
});

describe('peer packet codec: batched resync (RS_BATCH_REQUEST, RS_BATCH_REPLY)', () => {
  const runs = [{ offset: 4096, length: 4096 }, { offset: 65536, length: 8192 }];
  const request: Packet = { kind: 'rs-batch-request', id: 7, runs };
  const reply: Packet = { kind: 'rs-batch-reply', id: 7, runs, payload: bytes(12288, 3) };

  it('lays the runs out as the specification says: count, reserved, then offset u64 and length u32 each', () => {
    const flat = wire([request]);
    expect(flat.readUInt16BE(4)).toBe(PacketType.RS_BATCH_REQUEST);
    expect(flat.readUInt32BE(8)).toBe(12 + 2 * 12);
    expect(flat.readUInt16BE(HEADER_SIZE + 8)).toBe(2);
    expect(flat.readUInt16BE(HEADER_SIZE + 10)).toBe(0);
    expect(flat.readUInt32BE(HEADER_SIZE + 12 + 4)).toBe(4096);
    expect(flat.readUInt32BE(HEADER_SIZE + 12 + 8)).toBe(4096);
    expect(flat.readUInt32BE(HEADER_SIZE + 24 + 4)).toBe(65536);
    expect(flat.readUInt32BE(HEADER_SIZE + 24 + 8)).toBe(8192);
    const r = wire([reply], true);
    expect(r.readUInt16BE(4)).toBe(PacketType.RS_BATCH_REPLY);
    expect(r.readUInt16BE(6)).toBe(HEADER_FLAG_DIGEST);
    expect(r.length).toBe(HEADER_SIZE + 12 + 24 + 12288 + 4);
  });

  it('the most runs a batch may name: the same packet at every split point and byte by byte', () => {
    const most: Packet[] = [
      { kind: 'rs-batch-request', id: 2 ** 53 - 1, runs: Array.from({ length: MAX_BATCH_RUNS }, (_, i) => ({ offset: i * 8192, length: 4096 })) },
      { kind: 'rs-batch-reply', id: 1, runs: Array.from({ length: MAX_BATCH_RUNS }, (_, i) => ({ offset: 2 ** 52 + i * 3, length: 2 })), payload: bytes(2 * MAX_BATCH_RUNS, 12) },
    ];
    // Compared as text: 256 runs per packet, at thousands of split points.
    const text = (q: Packet): string =>
      JSON.stringify({ ...q, payload: q.kind === 'rs-batch-reply' ? Buffer.concat(q.parts ?? [q.payload]).toString('hex') : undefined, parts: undefined });
    for (const p of most) {
      const flat = wire([p], true);
      const expected = text(p);
      for (let i = 0; i <= flat.length; i++) {
        // as the link decodes: a batch reply's payload gathered as pieces
        const d = new PacketDecoder({ ...CODEC, integrity: true, gatherPayloads: true });
        const out: string[] = [];
        for (const piece of [flat.subarray(0, i), flat.subarray(i)]) {
          d.push(piece);
          for (let q = d.next(); q !== null; q = d.next()) out.push(text(q));
        }
        expect(d.violation, `${p.kind} split at ${i}`).toBeNull();
        expect(out, `${p.kind} split at ${i}`).toEqual([expected]);
      }
      const pieces = [...flat].map((_, i) => flat.subarray(i, i + 1));
      expect(decodeAll(pieces, { integrity: true }).packets.map(text)).toEqual([expected]);
    }
  });

  it('the payload goes out untouched, after the head with the runs', () => {
    const payload = bytes(12288, 4);
    const parts = encodePacket({ ...reply, payload } as Packet);
    expect(parts).toHaveLength(2);
    expect(parts[1]).toBe(payload);
  });

  it('a flipped run in a reply fails the digest (the digest covers the runs)', () => {
    const bad = wire([reply], true);
    bad[HEADER_SIZE + 12 + 7]! ^= 0x10;
    expect(violationOf(bad, { integrity: true })).toMatch(/^rs-batch-reply failed its integrity digest/);
  });

  it('runs that break the rule are refused by the encoder (a caller bug)', () => {
    const bad = (r: Array<{ offset: number; length: number }>): Packet => ({ kind: 'rs-batch-request', id: 1, runs: r });
    expect(() => encodePacket(bad([]))).toThrow(/0 runs/);
    expect(() => encodePacket(bad(Array.from({ length: MAX_BATCH_RUNS + 1 }, (_, i) => ({ offset: i * 2, length: 1 }))))).toThrow(/257 runs/);
    expect(() => encodePacket(bad([{ offset: 0, length: 0 }]))).toThrow(/length 0/);
    expect(() => encodePacket(bad([{ offset: 8192, length: 1 }, { offset: 4096, length: 1 }]))).toThrow(/not after the end/);
    expect(() => encodePacket(bad([{ offset: 0, length: 4097 }, { offset: 4096, length: 1 }]))).toThrow(/not after the end/);
    expect(() => encodePacket(bad([{ offset: 2 ** 53, length: 1 }]))).toThrow(RangeError);
    expect(() => encodePacket(bad([{ offset: 2 ** 53 - 1, length: 2 }]))).toThrow(/beyond 2\^53/);
    expect(() => encodePacket({ ...reply, payload: bytes(12287, 1) } as Packet)).toThrow(/12287 bytes for runs of 12288/);
  });

  /** The request's bytes with the run list replaced (count and body length follow). */
  function requestWith(list: Array<[number, number]>, count = list.length): Buffer {
    const body = Buffer.alloc(12 + 12 * list.length);
    body.writeUInt32BE(7, 4);
    body.writeUInt16BE(count, 8);
    list.forEach(([offset, length], i) => {
      body.writeUInt32BE(Math.floor(offset / 2 ** 32), 12 + 12 * i);
      body.writeUInt32BE(offset >>> 0, 12 + 12 * i + 4);
      body.writeUInt32BE(length, 12 + 12 * i + 8);
    });
    return Buffer.concat([header(PacketType.RS_BATCH_REQUEST, body.length), body]);
  }

  it('a request whose runs break the rule is a violation that names the run', () => {
    expect(violationOf(requestWith([[0, 4096]]))).toBeNull();
    expect(violationOf(requestWith([]))).toBe('rs-batch-request 0 runs, not 1..256');
    expect(violationOf(requestWith([[0, 4096]], 2))).toBe('rs-batch-request of 2 runs does not fill the body of 24 bytes');
    expect(violationOf(requestWith([[0, 0]]))).toBe('rs-batch-request run 0 length 0 is not in 1..2^32-1');
    expect(violationOf(requestWith([[8192, 1], [4096, 1]]))).toBe('rs-batch-request run 1 at 4096 is not after the end of run 0 (8193)');
    expect(violationOf(requestWith([[0, 4097], [4096, 1]]))).toMatch(/run 1 at 4096 is not after the end of run 0/);
    expect(violationOf(requestWith([[2 ** 53, 1]]))).toBe('rs-batch-request run 0 offset is beyond 2^53');
    expect(violationOf(requestWith([[2 ** 53 - 1, 2]]))).toBe('rs-batch-request run 0 ends beyond 2^53');
    // beyond the most runs: refused from the header, before the body is buffered
    expect(violationOf(header(PacketType.RS_BATCH_REQUEST, 12 + 12 * (MAX_BATCH_RUNS + 1)))).toBe(`rs-batch-request length ${12 + 12 * (MAX_BATCH_RUNS + 1)} is beyond its maximum of ${12 + 12 * MAX_BATCH_RUNS}`);
  });

  /** A reply's bytes: fixed part with `count`, the runs, then `payload` bytes. */
  function replyWith(list: Array<[number, number]>, payload: number, count = list.length): Buffer {
    const head = Buffer.alloc(12 + 12 * list.length);
    head.writeUInt32BE(7, 4);
    head.writeUInt16BE(count, 8);
    list.forEach(([offset, length], i) => {
      head.writeUInt32BE(offset >>> 0, 12 + 12 * i + 4);
      head.writeUInt32BE(length, 12 + 12 * i + 8);
    });
    return Buffer.concat([header(PacketType.RS_BATCH_REPLY, head.length + payload), head, Buffer.alloc(payload)]);
  }

  it('a reply is checked piece by piece: its count before the runs are buffered, its runs before the payload', () => {
    expect(violationOf(replyWith([[0, 3], [8, 2]], 5))).toBeNull();
    expect(violationOf(replyWith([], 0))).toBe('rs-batch-reply has 0 runs, not 1..256');
    expect(violationOf(replyWith([[0, 1]], 1, MAX_BATCH_RUNS + 1))).toBe('rs-batch-reply has 257 runs, not 1..256');
    // 100 runs announced in a body of 12 + 12 bytes: refused at the count, with nothing more buffered
    let allocated = 0;
    const d = new PacketDecoder({ ...CODEC, gatherPayloads: true, allocate: (n) => ((allocated += n), Buffer.alloc(n)) });
    const short = replyWith([[0, 1]], 0, 100);
    d.push(short.subarray(0, HEADER_SIZE + 12));
    expect(d.next()).toBeNull();
    expect(d.violation).toBe('rs-batch-reply length 24 cannot hold its 100 runs');
    expect(d.buffered()).toBe(0);
    expect(allocated).toBe(0);
    expect(violationOf(replyWith([[0, 3], [8, 2]], 4))).toBe('rs-batch-reply carries 4 bytes for runs of 5');
    expect(violationOf(replyWith([[0, 3], [8, 2]], 6))).toBe('rs-batch-reply carries 6 bytes for runs of 5');
    expect(violationOf(replyWith([[8, 3], [0, 2]], 5))).toBe('rs-batch-reply run 1 at 0 is not after the end of run 0 (11)');
  });

  it('a batch reply without the agreed digest, or with one not agreed, is refused from its header', () => {
    expect(violationOf(wire([reply], false), { integrity: true })).toBe('rs-batch-reply lacks the integrity digest that was agreed');
    expect(violationOf(wire([reply], true), { integrity: false })).toBe('rs-batch-reply carries a digest but integrity-crc32c was not agreed');
    expect(violationOf(wire([request], true), { integrity: true })).toBeNull();
  });

  it('both travel on the data connection only', () => {
    const opening: Packet[] = [
      { kind: 'hello', protocolMin: 1, protocolMax: 1, features: FEATURES.RS_BATCH, sessionId: 7n, nodeId: 1, channel: 'meta', resource: 'r0' },
      { kind: 'auth-challenge', challenge: bytes(32, 1) },
      { kind: 'auth-response', response: bytes(32, 2) },
      { kind: 'auth-ok' },
    ];
    expect(violationOf(wire([...opening, request]), { channel: 'meta', phase: 'hello' })).toBe('rs-batch-request belongs on the data connection, not the meta connection');
    expect(violationOf(wire([...opening, reply]), { channel: 'meta', phase: 'hello' })).toBe('rs-batch-reply belongs on the data connection, not the meta connection');
  });
});
