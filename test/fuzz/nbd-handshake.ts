/**
 * Fuzz target: NBD option haggling (src/nbd/handshake-codec.ts).
 *
 * Streams of client flags and options are built as structures (option code,
 * declared length, data shaped like INFO/GO and META_CONTEXT requests), then
 * mutated at that level (wrong declared lengths, name lengths that run past
 * the option, huge counts, bad magics, oversized options) and at the byte
 * level. Oracles:
 * - a reference decoder written here from the wire layout: the events, the
 *   verdict and the bytes left for the transmission phase must match it;
 * - feeding the same stream in random pieces changes nothing;
 * - no option is buffered beyond the decoder's limit;
 * - the INFO/GO and META_CONTEXT parsers never throw, and whatever they
 *   accept encodes back to exactly the bytes they were given.
 */
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAX_OPTION_BYTES,
  NBD_MAX_STRING_BYTES,
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
  NBD_OPTS_MAGIC,
} from '../../src/nbd/constants.js';
import {
  HandshakeDecoder,
  decodeNbdString,
  encodeInfoRequest,
  encodeMetaContextRequest,
  parseInfoRequest,
  parseMetaContextRequest,
  type HandshakeEvent,
} from '../../src/nbd/handshake-codec.js';
import { check, interestingU32, mutateBytes, randomSplit, runInputs, sameData, show, showBytes, type FuzzBudget, type FuzzCounts, type Rng } from './fuzz-kit.js';

const OPTION_CODES = [
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPT_INFO,
  NBD_OPT_GO,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_EXTENDED_HEADERS,
];
const INFO_TYPES = [NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE];
const NAMES = ['', 'r0', 'export', 'données', 'a'.repeat(NBD_MAX_STRING_BYTES), 'a'.repeat(NBD_MAX_STRING_BYTES + 1), 'nul\0inside', '\u{1f4be}'];
const QUERIES = ['base:allocation', 'base:', 'qemu:dirty-bitmap:x', '', 'x'.repeat(300)];

// --- structured options ---------------------------------------------------------

interface Option {
  code: number;
  data: Buffer;
  /** Declared length when it lies about the data (else data.length). */
  declared?: number;
}

function name(rng: Rng): string {
  return rng.chance(0.7) ? rng.pick(NAMES.slice(0, 4)) : rng.pick(NAMES);
}

function infoData(rng: Rng): Buffer {
  const infos = Array.from({ length: rng.length(8) }, () => (rng.chance(0.8) ? rng.pick(INFO_TYPES) : rng.int(0x10000)));
  const b = encodeInfoRequest(name(rng), infos);
  if (rng.chance(0.3) && b.length >= 4) b.writeUInt32BE(interestingU32(rng), 0); // name length lies
  if (rng.chance(0.2) && b.length >= 6) {
    const at = 4 + Math.min(b.readUInt32BE(0), b.length - 6);
    b.writeUInt16BE(interestingU32(rng) & 0xffff, at); // count lies
  }
  return b;
}

function metaData(rng: Rng): Buffer {
  const queries = Array.from({ length: rng.length(6) }, () => rng.pick(QUERIES));
  const b = encodeMetaContextRequest(name(rng), queries);
  if (rng.chance(0.2)) b.writeUInt32BE(interestingU32(rng), 0);
  if (rng.chance(0.3)) {
    // Count or one query length lies.
    const at = 4 + Math.min(b.readUInt32BE(0), b.length - 8);
    b.writeUInt32BE(interestingU32(rng), rng.chance(0.5) ? at : Math.min(b.length - 4, at + 4 + 4 * rng.int(3)));
  }
  return b;
}

function optionData(rng: Rng, code: number): Buffer {
  switch (code) {
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
      return infoData(rng);
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
      return metaData(rng);
    case NBD_OPT_EXPORT_NAME:
      return Buffer.from(name(rng), 'utf8');
    default:
      return rng.chance(0.8) ? Buffer.alloc(0) : rng.bytes(rng.length(64));
  }
}

function randomOption(rng: Rng): Option {
  const code = rng.chance(0.9) ? rng.pick(OPTION_CODES) : interestingU32(rng);
  const opt: Option = { code, data: optionData(rng, rng.chance(0.9) ? code : rng.pick(OPTION_CODES)) };
  const r = rng.float();
  if (r < 0.05) opt.declared = interestingU32(rng);
  else if (r < 0.1) opt.declared = opt.data.length + rng.range(-3, 3);
  else if (r < 0.13) opt.declared = NBD_MAX_OPTION_BYTES + rng.range(-1, 1);
  if (opt.declared !== undefined && (opt.declared < 0 || opt.declared > 0xffffffff)) opt.declared = undefined;
  return opt;
}

function encodeStream(rng: Rng, flags: number, options: Option[]): Buffer {
  const parts: Buffer[] = [];
  const f = Buffer.alloc(4);
  f.writeUInt32BE(flags >>> 0);
  parts.push(f);
  for (const o of options) {
    const h = Buffer.alloc(16);
    if (rng.chance(0.97)) NBD_OPTS_MAGIC.copy(h, 0);
    else rng.bytes(8).copy(h, 0);
    h.writeUInt32BE(o.code >>> 0, 8);
    h.writeUInt32BE(o.declared ?? o.data.length, 12);
    parts.push(h, o.data);
  }
  return Buffer.concat(parts);
}

/** Client flags and options, structured then mutated (also used against a live server). */
export function randomStream(rng: Rng): Buffer {
  const flags = rng.chance(0.8) ? NBD_FLAG_C_FIXED_NEWSTYLE | (rng.chance(0.5) ? NBD_FLAG_C_NO_ZEROES : 0) : interestingU32(rng);
  const options = Array.from({ length: rng.length(10) }, () => randomOption(rng));
  // Structure-level edits: drop, duplicate, reorder.
  if (options.length > 1 && rng.chance(0.2)) options.splice(rng.int(options.length), 1);
  if (options.length > 0 && rng.chance(0.2)) options.push(options[rng.int(options.length)]!);
  if (options.length > 1 && rng.chance(0.2)) options.reverse();
  let stream = encodeStream(rng, flags, options);
  if (rng.chance(0.5)) stream = mutateBytes(rng, stream);
  // Trailing bytes stand for the transmission phase.
  if (rng.chance(0.2)) stream = Buffer.concat([stream, rng.bytes(rng.length(40))]);
  return stream;
}

// --- the reference decoder -----------------------------------------------------------

interface Outcome {
  events: Array<{ kind: string; flags?: number; option?: number; data?: string }>;
  violation: boolean;
  /** Undecoded bytes left for the transmission phase (when no violation). */
  remaining: string;
}

function reference(input: Buffer, maxOptionBytes: number): Outcome {
  const events: Outcome['events'] = [];
  if (input.length < 4) return { events, violation: false, remaining: input.toString('hex') };
  events.push({ kind: 'clientFlags', flags: input.readUInt32BE(0) });
  let pos = 4;
  for (;;) {
    if (input.length - pos < 16) break;
    if (!input.subarray(pos, pos + 8).equals(NBD_OPTS_MAGIC)) return { events, violation: true, remaining: '' };
    const option = input.readUInt32BE(pos + 8);
    const length = input.readUInt32BE(pos + 12);
    if (length > maxOptionBytes) return { events, violation: true, remaining: '' };
    if (option === NBD_OPT_EXPORT_NAME && length > NBD_MAX_STRING_BYTES) return { events, violation: true, remaining: '' };
    if (input.length - pos - 16 < length) {
      pos += 16; // the header is consumed; its data is still to come
      break;
    }
    events.push({ kind: 'option', option, data: input.subarray(pos + 16, pos + 16 + length).toString('hex') });
    pos += 16 + length;
  }
  return { events, violation: false, remaining: input.subarray(pos).toString('hex') };
}

function decode(pieces: Buffer[], maxOptionBytes: number): Outcome & { decoded: HandshakeEvent[] } {
  const d = new HandshakeDecoder({ maxOptionBytes });
  const decoded: HandshakeEvent[] = [];
  const events: Outcome['events'] = [];
  for (const p of pieces) {
    d.push(p);
    for (let e = d.next(); e !== null; e = d.next()) {
      decoded.push(e);
      if (e.kind === 'option') check(e.data.length <= maxOptionBytes, `option data of ${e.data.length} bytes beyond the limit ${maxOptionBytes}`);
      events.push(e.kind === 'clientFlags' ? { kind: e.kind, flags: e.flags } : { kind: e.kind, option: e.option, data: e.data.toString('hex') });
    }
  }
  check(d.next() === null, 'next() after null returned an event');
  const violation = d.violation !== null;
  const remaining = violation ? '' : Buffer.concat(d.takeRemaining()).toString('hex');
  if (violation) check(d.buffered() === 0, 'a failed decoder still holds bytes');
  return { events, violation, remaining, decoded };
}

// --- the option parsers --------------------------------------------------------------

function checkParsers(option: number, data: Buffer): boolean {
  let ok = true;
  // Both parsers run on every option's data: neither may depend on the option code.
  const r = parseInfoRequest(data);
  if (r.kind === 'ok') {
    check(decodeNbdString(Buffer.from(r.name, 'utf8'), 'name').ok, `INFO accepted an invalid name ${show(r.name)}`);
    const again = encodeInfoRequest(r.name, r.infos);
    check(again.equals(data), () => `INFO request ${showBytes(data)} parsed as ${show(r)} which encodes to ${showBytes(again)}`);
  } else if (option === NBD_OPT_INFO || option === NBD_OPT_GO) ok = false;
  const m = parseMetaContextRequest(data);
  if (m.kind === 'ok') {
    const again = encodeMetaContextRequest(m.exportName, m.queries);
    check(again.equals(data), () => `META_CONTEXT request ${showBytes(data)} parsed as ${show(m)} which encodes to ${showBytes(again)}`);
    for (const q of m.queries) check(Buffer.byteLength(q) <= NBD_MAX_STRING_BYTES && !q.includes('\0'), `META_CONTEXT accepted query ${show(q)}`);
  } else if (option === NBD_OPT_LIST_META_CONTEXT || option === NBD_OPT_SET_META_CONTEXT) ok = false;
  // Every parser must agree with itself on the same bytes.
  check(sameData(parseInfoRequest(data), parseInfoRequest(Buffer.from(data))), 'parseInfoRequest is not a function of its bytes');
  return ok;
}

export function fuzzNbdHandshake(seed: number, budget: FuzzBudget): FuzzCounts {
  return runInputs('nbd-handshake', seed, budget, (rng, _i, record) => {
    const mode = rng.int(10);
    if (mode === 0) {
      // The parsers alone, on structured and on raw option data.
      const data = rng.chance(0.5) ? infoData(rng) : rng.chance(0.5) ? metaData(rng) : rng.bytes(rng.length(300));
      record(() => `option data ${showBytes(data)}`);
      const option = rng.pick([NBD_OPT_INFO, NBD_OPT_GO, NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT]);
      return checkParsers(option, data) ? 'accepted' : 'rejected';
    }
    const input = mode === 1 ? rng.bytes(rng.length(200)) : randomStream(rng);
    const maxOptionBytes = rng.chance(0.8) ? NBD_MAX_OPTION_BYTES : rng.range(0, 600);
    record(() => `maxOptionBytes ${maxOptionBytes}, stream ${showBytes(input, 400)}`);
    const want = reference(input, maxOptionBytes);
    const whole = decode([input], maxOptionBytes);
    const split = decode(randomSplit(rng, input), maxOptionBytes);
    const summary = (o: Outcome) => ({ events: o.events, violation: o.violation, remaining: o.remaining });
    check(sameData(summary(whole), want), () => `decoder ${show(summary(whole))} differs from the reference ${show(want)}`);
    check(sameData(summary(split), want), () => `split decoding ${show(summary(split))} differs from whole ${show(want)}`);
    for (const e of whole.decoded) if (e.kind === 'option') checkParsers(e.option, e.data);
    return whole.violation ? 'rejected' : 'accepted';
  });
}
