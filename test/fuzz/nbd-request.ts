/**
 * Fuzz target: the NBD transmission-phase request decoder
 * (src/nbd/request-decoder.ts), compact and extended, copying and gathering.
 *
 * Beyond the unit fuzz (noise and flipped bytes), inputs here are sequences
 * of valid requests whose fields are then edited where they matter: the
 * type, the flags (PAYLOAD_LEN on and off), lengths at the limits (the
 * negotiated maximum, the discard limit, 2^32, 2^53, 2^64 - 1), payloads
 * shorter or longer than announced, the other mode's magic. Oracles:
 * - a reference decoder written here from the wire layout and the limits:
 *   the requests (fields, payload bytes, payload problem) and whether the
 *   stream is a violation must match it;
 * - random splits change nothing, in copying and in gathering mode;
 * - the allocate hook never sees more than the negotiated maximum, and is
 *   not called at all when gathering.
 */
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
  NBD_EXTENDED_REQUEST_MAGIC,
  NBD_REQUEST_MAGIC,
} from '../../src/nbd/constants.js';
import { PayloadProblem, RequestDecoder, encodeRequest, type NbdRequest } from '../../src/nbd/request-decoder.js';
import { check, interestingU32, mutateBytes, randomSplit, runInputs, sameData, show, showBytes, type FuzzBudget, type FuzzCounts, type Rng } from './fuzz-kit.js';

const TWO_POW_32 = 0x1_0000_0000;
const TYPES = [NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_DISC, NBD_CMD_FLUSH, NBD_CMD_TRIM, NBD_CMD_CACHE, NBD_CMD_WRITE_ZEROES, NBD_CMD_BLOCK_STATUS];
const FLAGS = [NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_FLAG_PAYLOAD_LEN];
/** Payload bytes actually appended are capped: the header may announce more. */
const MAX_APPENDED = 80 * 1024;

interface Limits {
  extended: boolean;
  maxPayload: number;
  maxDiscard: number;
  gather: boolean;
}

function randomLimits(rng: Rng): Limits {
  const maxPayload = rng.pick([512, 4096, 65536, rng.range(1, 70000)]);
  return { extended: rng.chance(0.5), maxPayload, maxDiscard: rng.pick([maxPayload, maxPayload * 2, 128 * 1024, rng.range(0, 200_000)]), gather: rng.chance(0.4) };
}

function payloadLengthFor(rng: Rng, l: Limits): bigint {
  const r = rng.int(12);
  const dis = Math.max(l.maxDiscard, l.maxPayload);
  switch (r) {
    case 0:
      return 0n;
    case 1:
      return BigInt(l.maxPayload);
    case 2:
      return BigInt(l.maxPayload + 1);
    case 3:
      return BigInt(dis);
    case 4:
      return BigInt(dis + 1);
    case 5:
      return BigInt(interestingU32(rng));
    case 6:
      return l.extended ? rng.pick([2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n]) : BigInt(interestingU32(rng));
    default:
      return BigInt(rng.length(Math.min(l.maxPayload, 4096)));
  }
}

/** A run of valid-looking requests, each with as much of its payload as announced (capped). */
function requestStream(rng: Rng, l: Limits): Buffer {
  const parts: Buffer[] = [];
  const count = 1 + rng.length(12);
  let appended = 0;
  for (let i = 0; i < count; i++) {
    const type = rng.chance(0.9) ? rng.pick(TYPES) : rng.int(0x10000);
    let flags = 0;
    for (const f of FLAGS) if (rng.chance(0.15)) flags |= f;
    const isWrite = type === NBD_CMD_WRITE;
    if (l.extended && isWrite && rng.chance(0.9)) flags |= NBD_CMD_FLAG_PAYLOAD_LEN;
    if (!l.extended && rng.chance(0.8)) flags &= ~NBD_CMD_FLAG_PAYLOAD_LEN;
    let length = isWrite || (flags & NBD_CMD_FLAG_PAYLOAD_LEN) !== 0 ? payloadLengthFor(rng, l) : BigInt(rng.pick([0, 512, 4096, interestingU32(rng)]));
    const useExtended = rng.chance(0.97) ? l.extended : !l.extended; // sometimes the other mode's header
    if (!useExtended && length > 0xffffffffn) length = 0xffffffffn;
    const offset = rng.pick([0n, 512n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 64n - 1n, BigInt(rng.u32())]);
    const cookie = (BigInt(rng.u32()) << 32n) | BigInt(rng.u32());
    parts.push(encodeRequest({ type, flags, cookie, offset, length }, useExtended));
    const carries = l.extended ? (flags & NBD_CMD_FLAG_PAYLOAD_LEN) !== 0 : isWrite;
    if (carries && length > 0n) {
      let n = Number(length < BigInt(MAX_APPENDED) ? length : BigInt(MAX_APPENDED));
      if (appended + n > 4 * MAX_APPENDED) n = 0;
      if (rng.chance(0.1)) n = Math.max(0, n + rng.range(-5, 5)); // shorter or longer than announced
      appended += n;
      // Random bytes are costly to draw one by one: a random block repeated is as good a payload.
      parts.push(n <= 64 ? rng.bytes(n) : Buffer.alloc(n, rng.bytes(1 + rng.int(61))));
    }
  }
  return Buffer.concat(parts);
}

/** A field-level edit of a valid stream: the header fields that steer the decoder. */
function editHeader(rng: Rng, input: Buffer, l: Limits): Buffer {
  const size = l.extended ? 32 : 28;
  if (input.length < size) return input;
  const b = Buffer.from(input);
  const at = rng.chance(0.6) ? 0 : rng.int(b.length - size + 1);
  switch (rng.int(5)) {
    case 0:
      b.writeUInt16BE(rng.pick(TYPES), at + 6);
      break;
    case 1:
      b.writeUInt16BE(b.readUInt16BE(at + 4) ^ rng.pick(FLAGS), at + 4);
      break;
    case 2:
      b.writeUInt32BE(interestingU32(rng), at + (l.extended ? 28 : 24));
      break;
    case 3:
      if (l.extended) b.writeUInt32BE(interestingU32(rng), at + 24);
      else b.writeUInt32BE(interestingU32(rng), at + 16);
      break;
    default:
      b.writeUInt32BE(rng.chance(0.5) ? NBD_REQUEST_MAGIC : NBD_EXTENDED_REQUEST_MAGIC, at);
  }
  return b;
}

// --- the reference decoder -----------------------------------------------------------

interface Decoded {
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offsetHi: number;
  offsetLo: number;
  offset: number;
  length: number;
  payload: string | null;
  problem: number;
}

interface Outcome {
  requests: Decoded[];
  violation: boolean;
}

function reference(input: Buffer, l: Limits): Outcome {
  const size = l.extended ? 32 : 28;
  const maxDiscard = Math.max(l.maxDiscard, l.maxPayload);
  const requests: Decoded[] = [];
  let pos = 0;
  while (input.length - pos >= size) {
    if (input.readUInt32BE(pos) !== (l.extended ? NBD_EXTENDED_REQUEST_MAGIC : NBD_REQUEST_MAGIC)) return { requests, violation: true };
    const flags = input.readUInt16BE(pos + 4);
    const type = input.readUInt16BE(pos + 6);
    const offsetHi = input.readUInt32BE(pos + 16);
    const offsetLo = input.readUInt32BE(pos + 20);
    const length = l.extended ? input.readUInt32BE(pos + 24) * TWO_POW_32 + input.readUInt32BE(pos + 28) : input.readUInt32BE(pos + 24);
    const r: Decoded = {
      flags,
      type,
      cookieHi: input.readUInt32BE(pos + 8),
      cookieLo: input.readUInt32BE(pos + 12),
      offsetHi,
      offsetLo,
      offset: offsetHi * TWO_POW_32 + offsetLo,
      length,
      payload: null,
      problem: PayloadProblem.None,
    };
    pos += size;
    let carried = 0;
    if (l.extended) {
      if (flags & NBD_CMD_FLAG_PAYLOAD_LEN) {
        carried = length;
        if (type !== NBD_CMD_WRITE) r.problem = PayloadProblem.Unexpected;
      } else if (type === NBD_CMD_WRITE) return { requests, violation: true };
    } else if (type === NBD_CMD_WRITE) carried = length;
    if (carried === 0) {
      if (type === NBD_CMD_WRITE) r.payload = '';
      requests.push(r);
      continue;
    }
    if (r.problem === PayloadProblem.None && carried > l.maxPayload) r.problem = PayloadProblem.TooLarge;
    if (r.problem !== PayloadProblem.None && carried > maxDiscard) return { requests, violation: true };
    if (input.length - pos < carried) break; // still waiting for the payload
    if (r.problem === PayloadProblem.None) r.payload = input.subarray(pos, pos + carried).toString('hex');
    pos += carried;
    requests.push(r);
  }
  return { requests, violation: false };
}

function decode(pieces: Buffer[], l: Limits): Outcome {
  let allocated = 0;
  const d = new RequestDecoder({
    extended: l.extended,
    maxPayload: l.maxPayload,
    maxDiscard: l.maxDiscard,
    gather: l.gather,
    allocate: (n) => {
      check(!l.gather, `allocate(${n}) called in gathering mode`);
      check(n <= l.maxPayload, `allocate(${n}) beyond the negotiated maximum ${l.maxPayload}`);
      allocated += n;
      return Buffer.allocUnsafe(n);
    },
  });
  const requests: Decoded[] = [];
  const take = (r: NbdRequest): void => {
    let payload: string | null = null;
    if (r.parts !== null) {
      check(l.gather, 'parts handed out without gather');
      check(r.payload === null, 'both payload and parts set');
      const joined = Buffer.concat(r.parts);
      check(joined.length === r.length, `gathered ${joined.length} bytes for a ${r.length}-byte payload`);
      payload = joined.toString('hex');
    } else if (r.payload !== null) {
      check(r.payload.length === r.length, `a ${r.payload.length}-byte payload for length ${r.length}`);
      payload = r.payload.toString('hex');
    }
    if (r.payloadProblem !== PayloadProblem.None) check(payload === null, 'a refused payload was delivered');
    requests.push({
      flags: r.flags,
      type: r.type,
      cookieHi: r.cookieHi,
      cookieLo: r.cookieLo,
      offsetHi: r.offsetHi,
      offsetLo: r.offsetLo,
      offset: r.offset,
      length: r.length,
      payload,
      problem: r.payloadProblem,
    });
  };
  for (const p of pieces) {
    d.push(p);
    for (let r = d.next(); r !== null; r = d.next()) take(r);
  }
  check(allocated <= 4 * MAX_APPENDED + l.maxPayload, `allocated ${allocated} bytes in total for a bounded stream`);
  if (d.violation !== null) check(d.buffered() === 0, 'a failed decoder still holds bytes');
  return { requests, violation: d.violation !== null };
}

export function fuzzNbdRequests(seed: number, budget: FuzzBudget): FuzzCounts {
  return runInputs('nbd-request', seed, budget, (rng, _i, record) => {
    const l = randomLimits(rng);
    let input = requestStream(rng, l);
    const edit = rng.int(4);
    if (edit === 1) input = editHeader(rng, input, l);
    else if (edit === 2) input = mutateBytes(rng, input, 3);
    else if (edit === 3) input = editHeader(rng, mutateBytes(rng, input, 2), l);
    if (rng.chance(0.2)) input = input.subarray(0, rng.int(input.length + 1));
    record(() => `limits ${show(l)}, stream ${showBytes(input, 200)}`);
    const want = reference(input, l);
    const whole = decode([input], l);
    check(sameData(whole, want), () => `decoder ${show(whole).slice(0, 2000)} differs from the reference ${show(want).slice(0, 2000)}`);
    const split = decode(randomSplit(rng, input), l);
    check(sameData(split, want), () => `split decoding ${show(split).slice(0, 2000)} differs from the reference ${show(want).slice(0, 2000)}`);
    return want.violation ? 'rejected' : 'accepted';
  });
}

/**
 * Where each request header starts in a stream, as the framing rules say
 * (payload lengths only; no limits), up to the first bad magic. Lets a
 * fuzzing client aimed at a live server move the offsets of its writes out
 * of a region another client owns, without changing the framing.
 */
export function requestHeaderPositions(input: Buffer, extended: boolean): Array<{ at: number; type: number }> {
  const size = extended ? 32 : 28;
  const out: Array<{ at: number; type: number }> = [];
  let pos = 0;
  while (input.length - pos >= size) {
    if (input.readUInt32BE(pos) !== (extended ? NBD_EXTENDED_REQUEST_MAGIC : NBD_REQUEST_MAGIC)) break;
    const flags = input.readUInt16BE(pos + 4);
    const type = input.readUInt16BE(pos + 6);
    const length = extended ? input.readUInt32BE(pos + 24) * TWO_POW_32 + input.readUInt32BE(pos + 28) : input.readUInt32BE(pos + 24);
    out.push({ at: pos, type });
    const carries = extended ? (flags & NBD_CMD_FLAG_PAYLOAD_LEN) !== 0 : type === NBD_CMD_WRITE;
    if (extended && type === NBD_CMD_WRITE && !carries) break;
    pos += size + (carries ? length : 0);
  }
  return out;
}

/** A stream of structured, then mutated, requests (for fuzzing a live server). */
export function fuzzRequestStream(rng: Rng, extended: boolean, maxPayload: number): Buffer {
  const l: Limits = { extended, maxPayload, maxDiscard: maxPayload, gather: false };
  let input = requestStream(rng, l);
  const edit = rng.int(3);
  if (edit === 1) input = editHeader(rng, input, l);
  else if (edit === 2) input = mutateBytes(rng, input, 3);
  return input;
}
