/**
 * Fuzz target: the peer packet decoder (src/replication/wire/decoder.ts) in
 * every phase a link uses: the 'hello' gate on an accepted connection
 * ('from-hello') and on each channel we opened ('data', 'meta'), and
 * 'established' on each channel, with and without integrity digests.
 *
 * Streams are built from random packets of every kind (fields at their
 * limits), arranged the way a peer would send them (the opening, then
 * packets of the stream's channel), then edited at the packet level (drop,
 * repeat, swap, a packet of the other channel, a second HELLO, a header
 * whose type, length or digest flag lies) and at the byte level. Oracles:
 * - random splits change nothing (packets and verdict); with
 *   gatherPayloads, a DATA, RS_DATA_REPLY or RS_BATCH_REPLY may come as pieces
 *   instead of one payload, and the pieces hold the same bytes;
 * - every RS_BATCH_REQUEST and RS_BATCH_REPLY decoded names 1..MAX_BATCH_RUNS
 *   ascending, disjoint, non-empty runs, and a reply's payload is exactly
 *   their bytes;
 * - the allocate hook never sees more than the length limit;
 * - the gate holds: the opening comes first and in order, handshake packets
 *   never after it, nothing after DISCONNECT, every established packet
 *   belongs to the stream's channel;
 * - every decoded packet encodes back to a packet that decodes the same, in
 *   exactly as many bytes as the decoder consumed (reserved bytes are
 *   ignored on receipt, so bytes may differ only there).
 */
import {
  AUTH_BYTES,
  DEFAULT_MAX_PACKET_LENGTH,
  HEADER_FLAG_DIGEST,
  HEADER_SIZE,
  KNOWN_PARAMS_FLAGS,
  KNOWN_UUID_FLAGS,
  KNOWN_WRITE_FLAGS,
  MAX_BATCH_RUNS,
  MAX_DIGEST_BYTES,
  PACKET_SPECS,
  PacketDecoder,
  TWOPC_CHANGES,
  TWOPC_REFUSALS,
  WIRE_DISK_STATES,
  WIRE_MAGIC,
  WIRE_ROLES,
  encodePacket,
  encodedLength,
  runsBytes,
  runsProblem,
  specOfKind,
  type Channel,
  type Packet,
  type PacketDecoderOptions,
  type PacketKind,
  type ResyncRun,
} from '../../src/replication/wire/index.js';
import { SYNC_RULES, SYNC_STRATEGIES } from '../../src/replication/sync-decision.js';
import { check, interestingU32, mutateBytes, randomSplit, runInputs, sameData, show, showBytes, type FuzzBudget, type FuzzCounts, type Rng } from './fuzz-kit.js';

const U53 = [0, 1, 4096, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1];
const OPENING: PacketKind[] = ['hello', 'auth-challenge', 'auth-response', 'auth-ok'];
const HANDSHAKE = new Set<PacketKind>(OPENING);

function u53(rng: Rng): number {
  return rng.chance(0.5) ? rng.pick(U53) : rng.int(2 ** 40);
}

function text(rng: Rng, max: number): string {
  const r = rng.int(5);
  if (r === 0) return '';
  if (r === 1) return 'x'.repeat(max);
  if (r === 2) return 'é'.repeat(Math.floor(max / 2));
  return Array.from({ length: rng.int(Math.min(max, 20)) + 1 }, () => String.fromCharCode(97 + rng.int(26))).join('');
}

function payload(rng: Rng, max: number): Buffer {
  return rng.chance(0.2) ? Buffer.alloc(0) : rng.bytes(rng.length(max));
}

/**
 * Runs that follow the rule: ascending, disjoint, non-empty, below 2^53;
 * adjacent now and then, near 2^53 now and then. With `maxBytes`, at most
 * that many bytes together (a reply's payload); without, lengths up to
 * 2^32-1.
 */
function randomRuns(rng: Rng, maxBytes?: number): ResyncRun[] {
  const count = rng.chance(0.1) ? MAX_BATCH_RUNS : 1 + rng.int(rng.chance(0.5) ? 4 : MAX_BATCH_RUNS);
  const runs: ResyncRun[] = [];
  let left = maxBytes ?? Number.POSITIVE_INFINITY;
  let at = rng.chance(0.1) ? 2 ** 53 - 2 ** 42 : rng.chance(0.5) ? 0 : rng.int(2 ** 40);
  for (let i = 0; i < count && left > 0; i++) {
    const wide = maxBytes === undefined && rng.chance(0.1) ? Math.max(1, interestingU32(rng)) : 1 + rng.int(4096);
    const length = Math.min(wide, left);
    if (length > 2 ** 53 - at) break;
    left -= length;
    runs.push({ offset: at, length });
    at += length + (rng.chance(0.3) ? 0 : rng.int(2 ** 20));
  }
  return runs.length > 0 ? runs : [{ offset: 0, length: 1 }];
}

/** A packet of `kind` with random fields that the encoder accepts. */
function randomPacket(rng: Rng, kind: PacketKind, channel: Channel, maxPayload: number): Packet {
  switch (kind) {
    case 'hello':
      return { kind, protocolMin: rng.int(3), protocolMax: 2 + rng.int(3), features: interestingU32(rng), sessionId: BigInt(rng.u32()) << 32n, nodeId: rng.int(32), channel, resource: text(rng, 255) };
    case 'auth-challenge':
      return { kind, challenge: rng.bytes(AUTH_BYTES) };
    case 'auth-response':
      return { kind, response: rng.bytes(AUTH_BYTES) };
    case 'auth-ok':
    case 'sync-pause':
    case 'sync-resume':
    case 'sync-done':
    case 'ping':
    case 'ping-ack':
      return { kind } as Packet;
    case 'params':
      return { kind, protocol: rng.pick(['A', 'B', 'C'] as const), flags: rng.int(KNOWN_PARAMS_FLAGS + 1), csumsAlg: text(rng, 63), verifyAlg: text(rng, 63) };
    case 'sizes':
      return { kind, dataSizeBytes: u53(rng), maxPayloadBytes: interestingU32(rng) };
    case 'uuids':
      return { kind, current: BigInt(rng.u32()), bitmap: 2n ** 64n - 1n, history: [0n, BigInt(rng.u32()) << 32n], flags: rng.int(KNOWN_UUID_FLAGS + 1), dirtyBlocks: u53(rng) };
    case 'state':
      return { kind, role: rng.pick(WIRE_ROLES), disk: rng.pick(WIRE_DISK_STATES) };
    case 'decision':
      return { kind, strategy: rng.pick(SYNC_STRATEGIES), rule: rng.pick(SYNC_RULES) };
    case 'twopc-prepare':
      return { kind, txId: u53(rng), change: rng.pick(TWOPC_CHANGES), initiatorNodeId: rng.int(32), lostPrimaryNodeId: rng.chance(0.3) ? 0xff : rng.int(32), lastSeq: u53(rng) };
    case 'peers-in-sync':
      return { kind, epoch: interestingU32(rng) };
    case 'twopc-reply': {
      const yes = rng.chance(0.5);
      return { kind, txId: u53(rng), yes, reason: yes ? 'none' : rng.pick(TWOPC_REFUSALS.slice(1)), primaryNodeId: rng.chance(0.3) ? 0xff : rng.int(32) };
    }
    case 'twopc-commit':
    case 'twopc-abort':
      return { kind, txId: u53(rng) };
    case 'bitmap':
      return { kind, last: rng.chance(0.5), startBit: u53(rng), payload: payload(rng, maxPayload) };
    case 'data':
      return { kind, seq: u53(rng), epoch: interestingU32(rng), offset: u53(rng), flags: rng.int(KNOWN_WRITE_FLAGS + 1), payload: payload(rng, maxPayload) };
    case 'zeroes':
    case 'trim':
      return { kind, seq: u53(rng), epoch: interestingU32(rng), offset: u53(rng), length: interestingU32(rng), flags: rng.int(KNOWN_WRITE_FLAGS + 1) };
    case 'recv-ack':
    case 'write-ack':
      return { kind, seq: u53(rng) };
    case 'neg-ack':
      return { kind, seq: u53(rng), errno: interestingU32(rng) };
    case 'barrier':
      return { kind, epoch: interestingU32(rng) };
    case 'barrier-ack':
      return { kind, epoch: interestingU32(rng), writes: interestingU32(rng) };
    case 'flush':
    case 'flush-ack':
    case 'rs-write-ack':
      return { kind, id: u53(rng) };
    case 'out-of-sync':
      return { kind, offset: u53(rng), length: interestingU32(rng) };
    case 'rs-data-request':
    case 'rs-is-in-sync':
    case 'ov-request':
    case 'data-request':
      return { kind, id: u53(rng), offset: u53(rng), length: interestingU32(rng) };
    case 'rs-data-reply':
    case 'data-reply':
      return { kind, id: u53(rng), offset: u53(rng), payload: payload(rng, maxPayload) };
    case 'csum-rs-request':
    case 'ov-reply':
      return { kind, id: u53(rng), offset: u53(rng), length: interestingU32(rng), digest: rng.bytes(rng.pick([0, 4, 32, MAX_DIGEST_BYTES, rng.int(MAX_DIGEST_BYTES + 1)])) };
    case 'neg-rs-reply':
    case 'neg-data-reply':
      return { kind, id: u53(rng), errno: interestingU32(rng) };
    case 'disconnect':
      return { kind, reason: text(rng, 255) };
    case 'rs-batch-request':
      return { kind, id: u53(rng), runs: randomRuns(rng) };
    case 'rs-batch-reply': {
      const runs = randomRuns(rng, Math.max(1, Math.min(maxPayload, 4 * MAX_BATCH_RUNS)));
      return { kind, id: u53(rng), runs, payload: rng.bytes(runsBytes(runs)) };
    }
  }
}

const KINDS_BY_CHANNEL: Record<Channel, PacketKind[]> = {
  data: PACKET_SPECS.filter((s) => s.channel !== 'meta' && !HANDSHAKE.has(s.kind) && s.kind !== 'disconnect').map((s) => s.kind),
  meta: PACKET_SPECS.filter((s) => s.channel !== 'data' && !HANDSHAKE.has(s.kind) && s.kind !== 'disconnect').map((s) => s.kind),
};
const ALL_KINDS = PACKET_SPECS.map((s) => s.kind);

interface Setup {
  options: PacketDecoderOptions;
  /** The channel the peer's packets are for (what a HELLO in the stream names). */
  channel: Channel;
}

function randomSetup(rng: Rng): Setup {
  const channel: Channel = rng.chance(0.5) ? 'data' : 'meta';
  const phase = rng.pick(['hello', 'hello', 'established'] as const);
  const opened = phase === 'hello' ? rng.pick(['from-hello', 'data', 'meta'] as const) : channel;
  const maxLength = rng.pick([DEFAULT_MAX_PACKET_LENGTH, 4096 + 28, 64 * 1024, rng.range(0, 2000)]);
  return { options: { channel: opened, phase, integrity: rng.chance(0.4), maxLength, gatherPayloads: rng.chance(0.5) }, channel };
}

function randomStream(rng: Rng, setup: Setup): Buffer {
  const { options, channel } = setup;
  const maxPayload = Math.min(options.maxLength ?? DEFAULT_MAX_PACKET_LENGTH, 8192);
  const packets: Packet[] = [];
  if (options.phase === 'hello') for (const k of OPENING) packets.push(randomPacket(rng, k, channel, maxPayload));
  const n = rng.length(20);
  for (let i = 0; i < n; i++) {
    const kind = rng.chance(0.9) ? rng.pick(KINDS_BY_CHANNEL[channel]) : rng.pick(ALL_KINDS);
    packets.push(randomPacket(rng, kind, rng.chance(0.9) ? channel : channel === 'data' ? 'meta' : 'data', maxPayload));
  }
  if (rng.chance(0.15)) packets.push(randomPacket(rng, 'disconnect', channel, 0));
  // Packet-level edits.
  if (packets.length > 1 && rng.chance(0.15)) packets.splice(rng.int(packets.length), 1);
  if (packets.length > 0 && rng.chance(0.15)) packets.splice(rng.int(packets.length), 0, packets[rng.int(packets.length)]!);
  if (packets.length > 1 && rng.chance(0.15)) {
    const a = rng.int(packets.length);
    const b = rng.int(packets.length);
    [packets[a], packets[b]] = [packets[b]!, packets[a]!];
  }
  const frames = packets.map((p) => Buffer.concat(encodePacket(p, { integrity: options.integrity ?? false })));
  // Header-level lies in one frame.
  if (frames.length > 0 && rng.chance(0.3)) {
    const i = rng.int(frames.length);
    const f = Buffer.from(frames[i]!);
    switch (rng.int(4)) {
      case 0:
        f.writeUInt16BE(rng.chance(0.9) ? rng.pick(PACKET_SPECS).code : rng.int(0x10000), 4);
        break;
      case 1:
        f.writeUInt16BE(f.readUInt16BE(6) ^ (rng.chance(0.8) ? HEADER_FLAG_DIGEST : 1 << rng.int(16)), 6);
        break;
      case 2:
        f.writeUInt32BE(rng.chance(0.5) ? interestingU32(rng) : Math.max(0, f.length - HEADER_SIZE + rng.range(-4, 4)), 8);
        break;
      default:
        f.writeUInt32BE(rng.chance(0.5) ? WIRE_MAGIC ^ 1 : rng.u32(), 0);
    }
    frames[i] = f;
  }
  let stream: Buffer = Buffer.concat(frames);
  if (rng.chance(0.3)) stream = mutateBytes(rng, stream, 3);
  if (rng.chance(0.15)) stream = stream.subarray(0, rng.int(stream.length + 1));
  return stream;
}

// --- oracles -------------------------------------------------------------------------

/** Packets with Buffers as hex: comparable, and safe from later reuse of chunks. */
function plain(p: Packet): Record<string, unknown> {
  if (p.kind === 'rs-batch-request' || p.kind === 'rs-batch-reply') {
    check(runsProblem(p.runs) === null, () => `${p.kind} decoded with runs that break the rule: ${runsProblem(p.runs)}`);
    if (p.kind === 'rs-batch-reply') {
      const bytes = (p.parts ?? [p.payload]).reduce((n, b) => n + b.length, 0);
      check(bytes === runsBytes(p.runs), `${p.kind} decoded with ${bytes} bytes for runs of ${runsBytes(p.runs)}`);
    }
  }
  if ((p.kind === 'data' || p.kind === 'rs-data-reply' || p.kind === 'rs-batch-reply') && p.parts !== undefined) {
    // Gathered: the same packet as one payload (splitting only moves where the pieces end).
    check(p.payload.length === 0, `a gathered ${p.kind} also has a payload`);
    check(p.parts.every((b) => b.length > 0), `a gathered ${p.kind} has an empty piece`);
    const { parts, ...rest } = p;
    return plain({ ...rest, payload: Buffer.concat(parts) } as Packet);
  }
  return Object.fromEntries(Object.entries(p).map(([k, v]) => [k, Buffer.isBuffer(v) ? `hex:${v.toString('hex')}` : Array.isArray(v) ? [...(v as unknown[])] : v]));
}

interface Outcome {
  packets: Array<Record<string, unknown>>;
  /** Bytes each packet took on the wire. */
  sizes: number[];
  violation: boolean;
}

function decode(pieces: Buffer[], options: PacketDecoderOptions): Outcome {
  const limit = options.maxLength ?? DEFAULT_MAX_PACKET_LENGTH;
  const d = new PacketDecoder({
    ...options,
    allocate: (n) => {
      check(n <= limit, `allocate(${n}) beyond the length limit ${limit}`);
      return Buffer.allocUnsafe(n);
    },
  });
  const packets: Outcome['packets'] = [];
  const sizes: number[] = [];
  let consumed = 0;
  let pushed = 0;
  for (const piece of pieces) {
    d.push(piece);
    pushed += piece.length;
    for (let p = d.next(); p !== null; p = d.next()) {
      packets.push(plain(p));
      const now = pushed - d.buffered();
      sizes.push(now - consumed);
      consumed = now;
    }
  }
  if (d.violation !== null) check(d.buffered() === 0, 'a failed decoder still holds bytes');
  return { packets, sizes, violation: d.violation !== null };
}

function checkGate(out: Outcome, setup: Setup): void {
  const { options } = setup;
  let phaseIndex = options.phase === 'hello' ? 0 : OPENING.length;
  let bound: Channel | null = options.channel === 'data' || options.channel === 'meta' ? options.channel : null;
  let closed = false;
  for (const p of out.packets) {
    const kind = p.kind as PacketKind;
    check(!closed, `${kind} decoded after DISCONNECT`);
    if (kind === 'disconnect') {
      closed = true;
      continue;
    }
    if (phaseIndex < OPENING.length) {
      check(kind === OPENING[phaseIndex], `${kind} decoded where the opening expects ${OPENING[phaseIndex]}`);
      if (kind === 'hello') {
        const ch = p.channel as Channel;
        check(bound === null || bound === ch, `hello for ${ch} accepted on the ${bound} connection`);
        bound = ch;
      }
      phaseIndex++;
      continue;
    }
    check(!HANDSHAKE.has(kind), `${kind} decoded after the opening`);
    const spec = specOfKind(kind);
    check(bound !== null, `${kind} decoded before the channel is known`);
    check(spec.channel === 'both' || spec.channel === bound, `${kind} (a ${spec.channel} packet) decoded on the ${bound} connection`);
  }
}

/** Every decoded packet encodes to as many bytes as it took, and that decodes the same. */
function checkRoundTrip(out: Outcome, setup: Setup, original: Packet[]): void {
  const integrity = setup.options.integrity ?? false;
  original.forEach((p, i) => {
    const length = encodedLength(p, { integrity });
    check(length === out.sizes[i], () => `${p.kind} took ${out.sizes[i]} bytes on the wire but encodes to ${length}`);
    const again = decode([Buffer.concat(encodePacket(p, { integrity }))], { channel: 'any', phase: 'unchecked', integrity });
    check(!again.violation && again.packets.length === 1, () => `${p.kind} ${show(plain(p))} does not decode after encoding`);
    check(sameData(again.packets[0], plain(p)), () => `${p.kind} re-decodes as ${show(again.packets[0])}, was ${show(plain(p))}`);
  });
}

export function fuzzPeerPackets(seed: number, budget: FuzzBudget): FuzzCounts {
  return runInputs('peer-packet', seed, budget, (rng, _i, record) => {
    const setup = randomSetup(rng);
    const input = rng.chance(0.05) ? rng.bytes(rng.length(300)) : randomStream(rng, setup);
    record(() => `options ${show(setup.options)}, stream ${showBytes(input, 300)}`);
    // Decode once keeping the packets themselves (for the round trip).
    const originals: Packet[] = [];
    const keep = new PacketDecoder({ ...setup.options });
    keep.push(Buffer.from(input));
    for (let p = keep.next(); p !== null; p = keep.next()) originals.push(p);
    const whole = decode([input], setup.options);
    check(originals.length === whole.packets.length, 'two decoders disagree on the same bytes');
    const split = decode(randomSplit(rng, input), setup.options);
    check(sameData(split.packets, whole.packets) && split.violation === whole.violation, () => `split decoding ${show(split).slice(0, 1500)} differs from whole ${show(whole).slice(0, 1500)}`);
    checkGate(whole, setup);
    checkRoundTrip(whole, setup, originals);
    return whole.violation ? 'rejected' : 'accepted';
  });
}
