import { describe, expect, it } from 'vitest';
import {
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_PAYLOAD_LEN,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
} from '../../src/nbd/constants.js';
import { PayloadProblem, RequestDecoder, encodeRequest, type NbdRequest } from '../../src/nbd/request-decoder.js';
import { seededRandom as prng } from '../helpers/seeded-random.js';

const MAX_PAYLOAD = 64 * 1024;
const MAX_DISCARD = 256 * 1024;

interface Outcome {
  requests: Array<Omit<NbdRequest, 'payload'> & { payload: string | null }>;
  violation: string | null;
  maxAllocated: number;
}

function decodeAll(pieces: Buffer[], extended = false): Outcome {
  let maxAllocated = 0;
  const d = new RequestDecoder({
    extended,
    maxPayload: MAX_PAYLOAD,
    maxDiscard: MAX_DISCARD,
    allocate: (n) => {
      maxAllocated = Math.max(maxAllocated, n);
      return Buffer.allocUnsafe(n);
    },
  });
  const requests: Outcome['requests'] = [];
  for (const p of pieces) {
    d.push(p);
    for (let r = d.next(); r !== null; r = d.next()) requests.push({ ...r, payload: r.payload ? r.payload.toString('hex') : null });
  }
  return { requests, violation: d.violation, maxAllocated };
}

function payload(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

const compact = Buffer.concat([
  encodeRequest({ type: NBD_CMD_READ, cookie: 0xfedcba9876543210n, offset: 2n ** 40n + 512n, length: 4096 }),
  encodeRequest({ type: NBD_CMD_WRITE, cookie: 2n, offset: 8192, length: 100, flags: NBD_CMD_FLAG_FUA }),
  payload(100, 1),
  encodeRequest({ type: NBD_CMD_WRITE, cookie: 3n, offset: 0, length: 0 }),
  encodeRequest({ type: NBD_CMD_FLUSH, cookie: 4n, offset: 0, length: 0 }),
  encodeRequest({ type: NBD_CMD_WRITE, cookie: 5n, offset: 0, length: MAX_PAYLOAD + 1 }),
  payload(MAX_PAYLOAD + 1, 2),
  encodeRequest({ type: NBD_CMD_DISC, cookie: 6n, offset: 0, length: 0 }),
]);

const extended = Buffer.concat([
  encodeRequest({ type: NBD_CMD_TRIM, cookie: 1n, offset: 0, length: 2n ** 40n }, true),
  encodeRequest({ type: NBD_CMD_WRITE, cookie: 2n, offset: 512, length: 33, flags: NBD_CMD_FLAG_PAYLOAD_LEN }, true),
  payload(33, 3),
  encodeRequest({ type: NBD_CMD_TRIM, cookie: 3n, offset: 0, length: 7, flags: NBD_CMD_FLAG_PAYLOAD_LEN }, true),
  payload(7, 4),
  encodeRequest({ type: NBD_CMD_READ, cookie: 4n, offset: 2n ** 63n, length: 1 }, true),
]);

describe('RequestDecoder (compact)', () => {
  const whole = decodeAll([compact]);

  it('decodes every request, cookies and offsets exact, payloads attached', () => {
    expect(whole.violation).toBeNull();
    const r = whole.requests;
    expect(r.map((x) => x.type)).toEqual([NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_WRITE, NBD_CMD_DISC]);
    expect([r[0]!.cookieHi, r[0]!.cookieLo]).toEqual([0xfedcba98, 0x76543210]);
    expect(r[0]!.offset).toBe(2 ** 40 + 512);
    expect(r[0]!.length).toBe(4096);
    expect(r[0]!.payload).toBeNull();
    expect(r[1]!.payload).toBe(payload(100, 1).toString('hex'));
    expect(r[1]!.flags).toBe(NBD_CMD_FLAG_FUA);
    expect(r[2]!.payload).toBe('');
    // Too large: skipped (not buffered), flagged, and the stream stays in sync.
    expect(r[4]!.payloadProblem).toBe(PayloadProblem.TooLarge);
    expect(r[4]!.payload).toBeNull();
    expect(whole.maxAllocated).toBeLessThanOrEqual(MAX_PAYLOAD);
  });

  it('gives the same result at every split point', () => {
    for (let i = 0; i <= compact.length; i += i < 400 || i > compact.length - 400 ? 1 : 97) {
      expect(decodeAll([compact.subarray(0, i), compact.subarray(i)])).toMatchObject({ requests: whole.requests, violation: null });
    }
  });

  it('gives the same result byte by byte', () => {
    const pieces: Buffer[] = [];
    for (let i = 0; i < compact.length; i++) pieces.push(compact.subarray(i, i + 1));
    expect(decodeAll(pieces)).toMatchObject({ requests: whole.requests, violation: null });
  });

  it('hands out a view, not a copy, when a payload is inside one chunk', () => {
    const d = new RequestDecoder({ extended: false, maxPayload: MAX_PAYLOAD });
    const chunk = Buffer.concat([encodeRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 8 }), payload(8, 9)]);
    d.push(chunk);
    const r = d.next()!;
    expect(r.payload!.buffer).toBe(chunk.buffer);
  });

  it('refuses a payload beyond the discard limit from the header alone', () => {
    let allocated = 0;
    const d = new RequestDecoder({ extended: false, maxPayload: MAX_PAYLOAD, maxDiscard: MAX_DISCARD, allocate: (n) => ((allocated += n), Buffer.alloc(n)) });
    d.push(encodeRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 0xffffffff }));
    expect(d.next()).toBeNull();
    expect(d.violation).toMatch(/beyond the limit/);
    expect(allocated).toBe(0);
    d.push(Buffer.alloc(1000));
    expect(d.next()).toBeNull();
    expect(d.buffered()).toBe(0);
  });

  it('a bad magic is a violation and nothing after it is decoded', () => {
    const bad = Buffer.concat([encodeRequest({ type: NBD_CMD_FLUSH, cookie: 1n, offset: 0, length: 0 }), Buffer.alloc(28, 0x55), compact]);
    const out = decodeAll([bad]);
    expect(out.requests).toHaveLength(1);
    expect(out.violation).toBe('bad request magic 0x55555555');
    // An extended request on a compact connection is a bad magic too.
    expect(decodeAll([encodeRequest({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 1 }, true)]).violation).toMatch(/magic/);
  });
});

describe('RequestDecoder (extended)', () => {
  const whole = decodeAll([extended], true);

  it('reads 64-bit lengths, PAYLOAD_LEN payloads, and flags unexpected payloads', () => {
    expect(whole.violation).toBeNull();
    const r = whole.requests;
    expect(r).toHaveLength(4);
    expect(r[0]!.length).toBe(2 ** 40);
    expect(r[1]!.payload).toBe(payload(33, 3).toString('hex'));
    expect(r[2]!.payloadProblem).toBe(PayloadProblem.Unexpected);
    expect(r[2]!.payload).toBeNull();
    expect([r[3]!.offsetHi, r[3]!.offsetLo]).toEqual([0x80000000, 0]);
    expect(r[3]!.offset).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
  });

  it('gives the same result at every split point and byte by byte', () => {
    for (let i = 0; i <= extended.length; i++) {
      expect(decodeAll([extended.subarray(0, i), extended.subarray(i)], true)).toMatchObject({ requests: whole.requests, violation: null });
    }
    const pieces: Buffer[] = [];
    for (let i = 0; i < extended.length; i++) pieces.push(extended.subarray(i, i + 1));
    expect(decodeAll(pieces, true)).toMatchObject({ requests: whole.requests, violation: null });
  });

  it('a WRITE without PAYLOAD_LEN cannot be framed: violation', () => {
    expect(decodeAll([encodeRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 4 }, true)], true).violation).toMatch(/PAYLOAD_LEN/);
  });
});


describe('RequestDecoder fuzz', () => {
  it('never throws, never allocates beyond the limit, and splitting never changes the verdict', () => {
    const rnd = prng(0x5eed);
    const int = (n: number) => Math.floor(rnd() * n);
    const seeds = [compact, extended];
    const INPUTS = 20_000;
    let violations = 0;
    for (let i = 0; i < INPUTS; i++) {
      const ext = i % 2 === 1;
      let input: Buffer;
      const kind = int(4);
      if (kind === 0) {
        // Pure noise, sometimes starting with a valid magic.
        input = Buffer.alloc(int(200));
        for (let j = 0; j < input.length; j++) input[j] = int(256);
        if (input.length >= 4 && rnd() < 0.5) input.writeUInt32BE(ext ? 0x21e41c71 : 0x25609513, 0);
      } else {
        input = Buffer.from(seeds[ext ? 1 : 0]!.subarray(0, int(seeds[ext ? 1 : 0]!.length + 1)));
        const flips = 1 + int(6);
        for (let f = 0; f < flips && input.length > 0; f++) {
          const at = int(Math.min(input.length, 120));
          input[at] = rnd() < 0.5 ? int(256) : input[at]! ^ (1 << int(8));
        }
        if (kind === 3 && input.length > 32) {
          // A header announcing a random, possibly huge, length.
          input.writeUInt32BE(int(2 ** 32), ext ? 28 : 24);
        }
      }
      const whole = decodeAll([input], ext);
      const pieces: Buffer[] = [];
      for (let at = 0; at < input.length; ) {
        const n = 1 + int(40);
        pieces.push(input.subarray(at, at + n));
        at += n;
      }
      const split = decodeAll(pieces, ext);
      // Allocation differs (a whole chunk gives views), the decoded stream must not.
      expect({ requests: split.requests, violation: split.violation }).toEqual({ requests: whole.requests, violation: whole.violation });
      expect(split.maxAllocated).toBeLessThanOrEqual(MAX_PAYLOAD);
      expect(whole.maxAllocated).toBeLessThanOrEqual(MAX_PAYLOAD);
      for (const r of whole.requests) {
        if (r.payload !== null) expect(r.payload.length / 2).toBeLessThanOrEqual(MAX_PAYLOAD);
        if (r.payloadProblem !== PayloadProblem.None) expect(r.payload).toBeNull();
      }
      if (whole.violation !== null) violations++;
    }
    console.log(`request decoder fuzz: ${INPUTS} inputs, ${violations} protocol violations found, 0 throws`);
    expect(violations).toBeGreaterThan(0);
  });
});

describe('RequestDecoder (gather)', () => {
  const stream = Buffer.concat([
    encodeRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 3000 }),
    payload(3000, 5),
    encodeRequest({ type: NBD_CMD_FLUSH, cookie: 2n, offset: 0, length: 0 }),
    encodeRequest({ type: NBD_CMD_WRITE, cookie: 3n, offset: 4096, length: 17 }),
    payload(17, 6),
  ]);

  function gathered(pieces: Buffer[]): { payloads: string[]; parts: number[]; allocated: number } {
    let allocated = 0;
    const d = new RequestDecoder({ extended: false, maxPayload: MAX_PAYLOAD, gather: true, allocate: (n) => ((allocated += n), Buffer.alloc(n)) });
    const payloads: string[] = [];
    const parts: number[] = [];
    for (const p of pieces) {
      d.push(p);
      for (let r = d.next(); r !== null; r = d.next()) {
        if (r.type !== NBD_CMD_WRITE) continue;
        expect(r.payload === null).toBe(r.parts !== null);
        const whole = r.parts ? Buffer.concat(r.parts) : r.payload!;
        expect(whole.length).toBe(r.length);
        payloads.push(whole.toString('hex'));
        parts.push(r.parts ? r.parts.length : 1);
      }
    }
    expect(d.violation).toBeNull();
    return { payloads, parts, allocated };
  }

  it('hands a straddling payload out as views of the received chunks, never copying', () => {
    const want = [payload(3000, 5).toString('hex'), payload(17, 6).toString('hex')];
    for (let i = 0; i <= stream.length; i += 7) {
      const g = gathered([stream.subarray(0, i), stream.subarray(i)]);
      expect(g.payloads).toEqual(want);
      expect(g.allocated).toBe(0);
    }
    const bytes: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) bytes.push(stream.subarray(i, i + 1));
    const g = gathered(bytes);
    expect(g.payloads).toEqual(want);
    expect(g.parts).toEqual([3000, 17]);
  });

  it('the parts share memory with what was received', () => {
    const d = new RequestDecoder({ extended: false, maxPayload: MAX_PAYLOAD, gather: true });
    const head = Buffer.concat([encodeRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 8 }), payload(3, 1)]);
    const tail = payload(5, 2);
    d.push(head);
    expect(d.next()).toBeNull();
    d.push(tail);
    const r = d.next()!;
    expect(r.parts!.map((p) => p.buffer)).toEqual([head.buffer, tail.buffer]);
    expect(r.parts![1]).toBe(tail);
  });
});
