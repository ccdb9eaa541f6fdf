/**
 * The peer packet decoder: an explicit, pull-based state machine. Bytes go in
 * with push() in whatever pieces TCP delivers; next() hands out typed packets
 * until it returns null, and then `violation` says whether the peer broke the
 * protocol (the connection must be dropped) or more bytes are needed.
 *
 * Everything a header says is checked before a byte of the body is buffered:
 * the magic, a known type, known flags, the length against the decoder's
 * limit and against the type's framing, the digest flag against what was
 * agreed, and whether this packet may arrive now (stream-gate.ts). The only
 * allocation is a payload that straddles chunks (at most the limit); a
 * payload inside one chunk is handed out as a view of it.
 *
 * It never throws on input: every problem becomes a violation with a reason
 * that names the packet and the field.
 */
import { isUtf8 } from 'node:buffer';
import CRC32C from 'crc-32/crc32c.js';
import {
  AUTH_BYTES,
  DEFAULT_MAX_PACKET_LENGTH,
  DIGEST_SIZE,
  HEADER_FLAG_DIGEST,
  HEADER_SIZE,
  KNOWN_HEADER_FLAGS,
  KNOWN_PARAMS_FLAGS,
  KNOWN_UUID_FLAGS,
  KNOWN_WRITE_FLAGS,
  MAX_ALG_NAME_BYTES,
  MAX_BATCH_RUNS,
  MAX_DIGEST_BYTES,
  MAX_NODE_ID,
  NO_NODE,
  RUN_BYTES,
  TWOPC_CHANGES,
  TWOPC_REFUSALS,
  WIRE_MAGIC,
} from './constants.js';
import {
  MAX_VARIABLE_BODY,
  PACKET_SPECS,
  WIRE_DISK_STATES,
  WIRE_ROLES,
  specOfCode,
  type BitmapPacket,
  type Channel,
  type DataPacket,
  type DataReplyPacket,
  type Packet,
  type PacketSpec,
  type ResyncRun,
  type RsBatchReplyPacket,
  type RsDataReplyPacket,
} from './packets.js';
import { runsBytes, runsProblem } from './runs.js';
import { StreamGate, type StreamPhase } from './stream-gate.js';
import { SYNC_RULES, SYNC_STRATEGIES } from '../sync-decision.js';

const TWO_POW_32 = 0x1_0000_0000;
/** hi half of a u64 at or above 2^53. */
const U53_HI_LIMIT = 0x20_0000;

export interface PacketDecoderOptions {
  /**
   * The connection this stream arrives on: 'from-hello' for an accepted
   * connection (the peer's HELLO says which), 'any' for tools and tests.
   */
  channel: Channel | 'from-hello' | 'any';
  /**
   * Where the stream starts; default 'hello' (a link always starts there).
   * 'established' skips the opening; 'unchecked' admits any packet at any
   * time (codec tests and tools).
   */
  phase?: 'hello' | 'established' | 'unchecked';
  /** Largest header length field accepted (default 64 MiB + 4 KiB). */
  maxLength?: number;
  /** integrity-crc32c agreed (also settable later with setIntegrity). */
  integrity?: boolean;
  /** Payload allocator (tests spy on it to prove the limit holds). */
  allocate?: (size: number) => Buffer;
  /**
   * An RS_DATA_REPLY or RS_BATCH_REPLY payload that straddles received
   * chunks is handed out as the list of its pieces (`parts`, views of the
   * chunks) instead of being copied into one new buffer: a resync of a
   * whole disk then neither copies every byte once more nor allocates a
   * buffer per request.
   */
  gatherPayloads?: boolean;
}

const enum ReadState {
  /** Collecting the 12-byte header. */
  Header,
  /** Collecting a whole fixed or variable body (small: at most MAX_VARIABLE_BODY). */
  Body,
  /** Collecting the fixed fields of a payload or runs packet. */
  Fixed,
  /** Collecting the run list of a runs packet (at most MAX_BATCH_RUNS x RUN_BYTES). */
  Runs,
  /** Copying a payload that straddles chunks into `payload`. */
  Payload,
  /** Collecting views of the chunks a gathered payload straddles (`parts`). */
  Gather,
  /** Collecting the 4-byte digest after a payload. */
  Digest,
  /** A violation was found; nothing more is decoded. */
  Failed,
}

type PayloadPacket = DataPacket | RsDataReplyPacket | RsBatchReplyPacket | DataReplyPacket | BitmapPacket;
/** The payload packets whose payload may be gathered as pieces. */
type GatheredPacket = DataPacket | RsDataReplyPacket | RsBatchReplyPacket;

const EMPTY = Buffer.alloc(0);
const SCRATCH_SIZE = Math.max(MAX_VARIABLE_BODY, HEADER_SIZE, ...PACKET_SPECS.map((s) => s.fixed));

export class PacketDecoder {
  private readonly chunks: Buffer[] = [];
  /** Bytes consumed from chunks[0]. */
  private head = 0;
  private total = 0;
  private state = ReadState.Header;
  /** Headers and small bodies that straddle chunks are gathered here (reused). */
  private readonly scratch = Buffer.alloc(SCRATCH_SIZE);
  private readonly gate: StreamGate;
  private maxLength: number;
  private readonly allocate: (size: number) => Buffer;
  private readonly gatherPayloads: boolean;
  /** The pieces of a gathered payload, and how many bytes they hold so far. */
  private parts: Buffer[] = [];
  private integrity: boolean;
  // The packet being read.
  private spec: PacketSpec = PACKET_SPECS[0]!;
  private bodyLength = 0;
  private hasDigest = false;
  private pending: PayloadPacket | null = null;
  private filled = 0;
  /** Bytes of the payload being gathered. */
  private gatherLength = 0;
  /** Runs the runs packet being read announced. */
  private runCount = 0;
  /** The running crc already covers the payload (it was gathered). */
  private crcHasPayload = false;
  /** Running crc32c of the body read so far (digest packets only). */
  private crc = 0;
  /** Where the bytes of the last take() start in the buffer it returned. */
  private takenAt = 0;
  /** Non-null once the stream broke the protocol: the connection must close. */
  violation: string | null = null;

  constructor(options: PacketDecoderOptions) {
    this.gate = new StreamGate(options.channel, options.phase ?? 'hello');
    this.maxLength = options.maxLength ?? DEFAULT_MAX_PACKET_LENGTH;
    this.integrity = options.integrity ?? false;
    this.allocate = options.allocate ?? Buffer.allocUnsafe;
    this.gatherPayloads = options.gatherPayloads ?? false;
  }

  /** After HELLOs are exchanged: whether block-data packets must carry the digest. */
  setIntegrity(agreed: boolean): void {
    this.integrity = agreed;
  }

  /**
   * Tightens (or relaxes) the length limit, e.g. to the agreed maximum
   * payload plus the largest fixed part and the digest after SIZES.
   */
  setMaxLength(bytes: number): void {
    this.maxLength = bytes;
  }

  /** Where the stream is in its opening (stream-gate.ts). */
  get phase(): StreamPhase {
    return this.gate.phase;
  }

  /** The connection this stream belongs to, once known. */
  get channel(): Channel | null {
    return this.gate.boundChannel;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0 || this.state === ReadState.Failed) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Bytes received but not yet decoded. */
  buffered(): number {
    return this.total;
  }

  /** The next complete packet, or null (then check `violation`). */
  next(): Packet | null {
    for (;;) {
      switch (this.state) {
        case ReadState.Failed:
          return null;
        case ReadState.Header:
          if (this.total < HEADER_SIZE) return null;
          if (!this.readHeader()) return null;
          continue;
        case ReadState.Body: {
          if (this.total < this.bodyLength) return null;
          const b = this.take(this.bodyLength);
          const p = this.parseBody(b, this.takenAt);
          if (p === null) return null;
          this.state = ReadState.Header;
          return p;
        }
        case ReadState.Fixed: {
          if (this.total < this.spec.fixed) return null;
          if (!this.readFixed()) return null;
          // A payload that was already here (or empty) and no digest: done.
          if ((this.state as ReadState) === ReadState.Header) return this.finishPayload();
          continue;
        }
        case ReadState.Runs: {
          if (this.total < this.runCount * RUN_BYTES) return null;
          if (!this.readRuns()) return null;
          if ((this.state as ReadState) === ReadState.Header) return this.finishPayload();
          continue;
        }
        case ReadState.Payload:
          if (!this.fillPayload()) return null;
          this.state = this.hasDigest ? ReadState.Digest : ReadState.Header;
          if (this.state === ReadState.Header) return this.finishPayload();
          continue;
        case ReadState.Gather:
          if (!this.gatherPieces()) return null;
          // One piece is a plain payload (a view, as for a payload inside one chunk).
          if (this.parts.length === 1) this.pending!.payload = this.parts[0]!;
          else (this.pending as GatheredPacket).parts = this.parts;
          this.parts = [];
          this.crcHasPayload = true;
          this.state = this.hasDigest ? ReadState.Digest : ReadState.Header;
          if (this.state === ReadState.Header) return this.finishPayload();
          continue;
        case ReadState.Digest: {
          if (this.total < DIGEST_SIZE) return null;
          const got = this.take(DIGEST_SIZE).readUInt32BE(this.takenAt);
          const p = this.pending!;
          // A gathered payload was added to the running crc piece by piece.
          const want = (this.crcHasPayload ? this.crc : CRC32C.buf(p.payload, this.crc)) >>> 0;
          if (got !== want) {
            return this.fail(`${p.kind} failed its integrity digest (got 0x${hex8(got)}, computed 0x${hex8(want)})`);
          }
          this.state = ReadState.Header;
          return this.finishPayload();
        }
      }
    }
  }

  /** Checks a header; moves to Body or Fixed; false on violation. */
  private readHeader(): boolean {
    const h = this.take(HEADER_SIZE);
    const at = this.takenAt;
    const magic = h.readUInt32BE(at);
    const code = h.readUInt16BE(at + 4);
    const flags = h.readUInt16BE(at + 6);
    const length = h.readUInt32BE(at + 8);
    if (magic !== WIRE_MAGIC) return this.failed(`bad magic 0x${hex8(magic)}`);
    const spec = specOfCode(code);
    if (spec === undefined) return this.failed(`unknown packet type 0x${code.toString(16).padStart(4, '0')}`);
    const kind = spec.kind;
    if (flags & ~KNOWN_HEADER_FLAGS) return this.failed(`${kind} has unknown header flags 0x${flags.toString(16)}`);
    if (length > this.maxLength) return this.failed(`${kind} length ${length} is beyond the limit of ${this.maxLength}`);
    const digest = (flags & HEADER_FLAG_DIGEST) !== 0;
    if (digest && !spec.digest) return this.failed(`${kind} has the digest flag but carries no block data`);
    if (spec.digest && digest !== this.integrity) {
      return this.failed(
        this.integrity ? `${kind} lacks the integrity digest that was agreed` : `${kind} carries a digest but integrity-crc32c was not agreed`,
      );
    }
    const min = spec.fixed + (digest ? DIGEST_SIZE : 0);
    if (length < min) return this.failed(`${kind} length ${length} is shorter than its fixed part of ${min} bytes`);
    if (spec.layout === 'fixed' && length !== spec.fixed) return this.failed(`${kind} length ${length}, expected ${spec.fixed}`);
    if (spec.layout === 'variable' && length > spec.maxBody) return this.failed(`${kind} length ${length} is beyond its maximum of ${spec.maxBody}`);
    const refused = this.gate.admit(spec);
    if (refused !== null) return this.failed(refused);
    this.spec = spec;
    this.bodyLength = length;
    this.hasDigest = digest;
    this.state = spec.layout === 'payload' || spec.layout === 'runs' ? ReadState.Fixed : ReadState.Body;
    return true;
  }

  /** Parses the fixed part of a payload packet and starts on its payload (or its runs). */
  private readFixed(): boolean {
    const s = this.spec;
    const b = this.take(s.fixed);
    const at = this.takenAt;
    // The view costs an object, but only on a connection that agreed to digests.
    if (this.hasDigest) this.crc = CRC32C.buf(b.subarray(at, at + s.fixed));
    this.crcHasPayload = false;
    let p: PayloadPacket;
    switch (s.kind) {
      case 'data': {
        const seq = readU53(b, at);
        const offset = readU53(b, at + 16);
        const flags = b.readUInt16BE(at + 12);
        if (seq < 0) return this.failed('data seq is beyond 2^53');
        if (offset < 0) return this.failed('data offset is beyond 2^53');
        if (flags & ~KNOWN_WRITE_FLAGS) return this.failed(`data has unknown flags 0x${flags.toString(16)}`);
        p = { kind: 'data', seq, epoch: b.readUInt32BE(at + 8), offset, flags, payload: EMPTY };
        break;
      }
      case 'rs-data-reply':
      case 'data-reply': {
        const id = readU53(b, at);
        const offset = readU53(b, at + 8);
        if (id < 0) return this.failed(`${s.kind} id is beyond 2^53`);
        if (offset < 0) return this.failed(`${s.kind} offset is beyond 2^53`);
        p = { kind: s.kind, id, offset, payload: EMPTY };
        break;
      }
      case 'bitmap': {
        const last = b[at]!;
        const startBit = readU53(b, at + 4);
        if (last > 1) return this.failed(`bitmap last is ${last}, not 0 or 1`);
        if (startBit < 0) return this.failed('bitmap startBit is beyond 2^53');
        p = { kind: 'bitmap', last: last === 1, startBit, payload: EMPTY };
        break;
      }
      case 'rs-batch-reply': {
        const id = readU53(b, at);
        const count = b.readUInt16BE(at + 8);
        if (id < 0) return this.failed('rs-batch-reply id is beyond 2^53');
        if (count < 1 || count > MAX_BATCH_RUNS) return this.failed(`rs-batch-reply has ${count} runs, not 1..${MAX_BATCH_RUNS}`);
        // Checked before the runs are buffered: they must fit the body.
        if (s.fixed + count * RUN_BYTES + (this.hasDigest ? DIGEST_SIZE : 0) > this.bodyLength) {
          return this.failed(`rs-batch-reply length ${this.bodyLength} cannot hold its ${count} runs`);
        }
        this.pending = { kind: 'rs-batch-reply', id, runs: [], payload: EMPTY };
        this.runCount = count;
        this.state = ReadState.Runs;
        return true;
      }
      default:
        return this.failed(`${s.kind} is not a payload packet`);
    }
    this.pending = p;
    return this.startPayload(this.bodyLength - s.fixed - (this.hasDigest ? DIGEST_SIZE : 0));
  }

  /** Parses the runs of a runs packet (all buffered) and starts on its payload. */
  private readRuns(): boolean {
    const n = this.runCount * RUN_BYTES;
    const b = this.take(n);
    const at = this.takenAt;
    if (this.hasDigest) this.crc = CRC32C.buf(b.subarray(at, at + n), this.crc);
    const p = this.pending as RsBatchReplyPacket;
    const runs = parseRuns(b, at, this.runCount);
    if (typeof runs === 'string') return this.failed(`${p.kind} ${runs}`);
    p.runs = runs;
    const payload = this.bodyLength - this.spec.fixed - n - (this.hasDigest ? DIGEST_SIZE : 0);
    const covered = runsBytes(runs);
    if (covered !== payload) return this.failed(`${p.kind} carries ${payload} bytes for runs of ${covered}`);
    return this.startPayload(payload);
  }

  /** The pending packet's payload of n bytes comes next: a view, pieces or a copy. */
  private startPayload(n: number): boolean {
    const p = this.pending!;
    if (n === 0) {
      this.state = this.hasDigest ? ReadState.Digest : ReadState.Header;
      return true;
    }
    const c = this.chunks[0];
    if (c !== undefined && c.length - this.head >= n) {
      // The payload is inside one received chunk: a view, no copy.
      p.payload = c.subarray(this.head, this.head + n);
      this.consume(n);
      this.state = this.hasDigest ? ReadState.Digest : ReadState.Header;
      return true;
    }
    if (this.gatherPayloads && (p.kind === 'data' || p.kind === 'rs-data-reply' || p.kind === 'rs-batch-reply')) {
      // No allocation and no copy: the pieces stay views of the chunks.
      this.parts = [];
      this.filled = 0;
      this.gatherLength = n;
      this.state = ReadState.Gather;
      return true;
    }
    // n <= maxLength: the header check bounded it before anything was buffered.
    p.payload = this.allocate(n);
    this.filled = 0;
    this.state = ReadState.Payload;
    return true;
  }

  /** The payload packet is complete (state is back at Header): hand it out. */
  private finishPayload(): Packet | null {
    const p = this.pending;
    this.pending = null;
    return p;
  }

  /** Takes views of what has arrived of a gathered payload; true when complete. */
  private gatherPieces(): boolean {
    while (this.filled < this.gatherLength && this.chunks.length > 0) {
      const c = this.chunks[0]!;
      const n = Math.min(c.length - this.head, this.gatherLength - this.filled);
      const piece = c.subarray(this.head, this.head + n);
      if (this.hasDigest) this.crc = CRC32C.buf(piece, this.crc);
      this.parts.push(piece);
      this.filled += n;
      this.consume(n);
    }
    return this.filled === this.gatherLength;
  }

  /** Copies what has arrived into the pending payload; true when complete. */
  private fillPayload(): boolean {
    const dst = this.pending!.payload;
    while (this.filled < dst.length && this.chunks.length > 0) {
      const c = this.chunks[0]!;
      const copied = c.copy(dst, this.filled, this.head, Math.min(c.length, this.head + (dst.length - this.filled)));
      this.filled += copied;
      this.consume(copied);
    }
    return this.filled === dst.length;
  }

  /** A fixed or variable body, whole, at b[at .. at + bodyLength). */
  private parseBody(b: Buffer, at: number): Packet | null {
    const s = this.spec;
    const n = this.bodyLength;
    switch (s.kind) {
      case 'hello': {
        const protocolMin = b.readUInt16BE(at);
        const protocolMax = b.readUInt16BE(at + 2);
        const nodeId = b[at + 16]!;
        const channelCode = b[at + 17]!;
        if (protocolMin > protocolMax) return this.fail(`hello protocolMin ${protocolMin} is above protocolMax ${protocolMax}`);
        if (nodeId > MAX_NODE_ID) return this.fail(`hello nodeId ${nodeId} is not 0..${MAX_NODE_ID}`);
        if (channelCode > 1) return this.fail(`hello channel ${channelCode} is neither data (0) nor meta (1)`);
        if (19 + b[at + 18]! !== n) return this.fail(`hello resource name length ${b[at + 18]} does not fill the body of ${n} bytes`);
        const resource = readString(b, at + 18, at + n, 'resource');
        if (typeof resource !== 'string') return this.fail(`hello ${resource.error}`);
        const channel: Channel = channelCode === 0 ? 'data' : 'meta';
        const refused = this.gate.onHello(channel);
        if (refused !== null) return this.fail(refused);
        return {
          kind: 'hello',
          protocolMin,
          protocolMax,
          features: b.readUInt32BE(at + 4),
          sessionId: b.readBigUInt64BE(at + 8),
          nodeId,
          channel,
          resource,
        };
      }
      case 'auth-challenge':
        return { kind: 'auth-challenge', challenge: Buffer.from(b.subarray(at, at + AUTH_BYTES)) };
      case 'auth-response':
        return { kind: 'auth-response', response: Buffer.from(b.subarray(at, at + AUTH_BYTES)) };
      case 'auth-ok':
        return { kind: 'auth-ok' };
      case 'params': {
        const proto = b[at]!;
        if (proto !== 0x41 && proto !== 0x42 && proto !== 0x43) return this.fail(`params protocol 0x${proto.toString(16)} is not A, B or C`);
        const flags = b.readUInt32BE(at + 4);
        if (flags & ~KNOWN_PARAMS_FLAGS) return this.fail(`params has unknown flags 0x${flags.toString(16)}`);
        const csumsLen = b[at + 8]!;
        if (csumsLen > MAX_ALG_NAME_BYTES || at + 9 + csumsLen >= at + n) return this.fail(`params csums-alg length ${csumsLen} does not fit`);
        const verifyAt = at + 9 + csumsLen;
        const verifyLen = b[verifyAt]!;
        if (verifyLen > MAX_ALG_NAME_BYTES || verifyAt + 1 + verifyLen !== at + n) {
          return this.fail(`params verify-alg length ${verifyLen} does not fill the body`);
        }
        const csumsAlg = readString(b, at + 8, verifyAt, 'csums-alg');
        const verifyAlg = readString(b, verifyAt, at + n, 'verify-alg');
        if (typeof csumsAlg !== 'string') return this.fail(`params ${csumsAlg.error}`);
        if (typeof verifyAlg !== 'string') return this.fail(`params ${verifyAlg.error}`);
        return { kind: 'params', protocol: proto === 0x41 ? 'A' : proto === 0x42 ? 'B' : 'C', flags, csumsAlg, verifyAlg };
      }
      case 'sizes': {
        const dataSizeBytes = readU53(b, at);
        if (dataSizeBytes < 0) return this.fail('sizes dataSizeBytes is beyond 2^53');
        return { kind: 'sizes', dataSizeBytes, maxPayloadBytes: b.readUInt32BE(at + 8) };
      }
      case 'uuids': {
        const flags = b.readUInt32BE(at + 32);
        const dirtyBlocks = readU53(b, at + 36);
        if (flags & ~KNOWN_UUID_FLAGS) return this.fail(`uuids has unknown flags 0x${flags.toString(16)}`);
        if (dirtyBlocks < 0) return this.fail('uuids dirtyBlocks is beyond 2^53');
        return {
          kind: 'uuids',
          current: b.readBigUInt64BE(at),
          bitmap: b.readBigUInt64BE(at + 8),
          history: [b.readBigUInt64BE(at + 16), b.readBigUInt64BE(at + 24)],
          flags,
          dirtyBlocks,
        };
      }
      case 'state': {
        const role = WIRE_ROLES[b[at]!];
        const disk = WIRE_DISK_STATES[b[at + 1]!];
        if (role === undefined) return this.fail(`state role ${b[at]} is unknown`);
        if (disk === undefined) return this.fail(`state disk ${b[at + 1]} is unknown`);
        return { kind: 'state', role, disk };
      }
      case 'decision': {
        const strategy = SYNC_STRATEGIES[b[at]!];
        const rule = SYNC_RULES[b[at + 1]!];
        if (strategy === undefined) return this.fail(`decision strategy ${b[at]} is unknown`);
        if (rule === undefined) return this.fail(`decision rule ${b[at + 1]} is unknown`);
        return { kind: 'decision', strategy, rule };
      }
      case 'zeroes':
      case 'trim': {
        const seq = readU53(b, at);
        const offset = readU53(b, at + 16);
        const flags = b.readUInt16BE(at + 12);
        if (seq < 0) return this.fail(`${s.kind} seq is beyond 2^53`);
        if (offset < 0) return this.fail(`${s.kind} offset is beyond 2^53`);
        if (flags & ~KNOWN_WRITE_FLAGS) return this.fail(`${s.kind} has unknown flags 0x${flags.toString(16)}`);
        return { kind: s.kind, seq, epoch: b.readUInt32BE(at + 8), offset, length: b.readUInt32BE(at + 24), flags };
      }
      case 'recv-ack':
      case 'write-ack': {
        const seq = readU53(b, at);
        if (seq < 0) return this.fail(`${s.kind} seq is beyond 2^53`);
        return { kind: s.kind, seq };
      }
      case 'neg-ack': {
        const seq = readU53(b, at);
        if (seq < 0) return this.fail('neg-ack seq is beyond 2^53');
        return { kind: 'neg-ack', seq, errno: b.readUInt32BE(at + 8) };
      }
      case 'barrier':
        return { kind: 'barrier', epoch: b.readUInt32BE(at) };
      case 'barrier-ack':
        return { kind: 'barrier-ack', epoch: b.readUInt32BE(at), writes: b.readUInt32BE(at + 4) };
      case 'flush':
      case 'flush-ack':
      case 'rs-write-ack': {
        const id = readU53(b, at);
        if (id < 0) return this.fail(`${s.kind} id is beyond 2^53`);
        return { kind: s.kind, id };
      }
      case 'out-of-sync': {
        const offset = readU53(b, at);
        if (offset < 0) return this.fail('out-of-sync offset is beyond 2^53');
        return { kind: 'out-of-sync', offset, length: b.readUInt32BE(at + 8) };
      }
      case 'rs-data-request':
      case 'rs-is-in-sync':
      case 'ov-request':
      case 'data-request': {
        const id = readU53(b, at);
        const offset = readU53(b, at + 8);
        if (id < 0) return this.fail(`${s.kind} id is beyond 2^53`);
        if (offset < 0) return this.fail(`${s.kind} offset is beyond 2^53`);
        return { kind: s.kind, id, offset, length: b.readUInt32BE(at + 16) };
      }
      case 'csum-rs-request':
      case 'ov-reply': {
        const id = readU53(b, at);
        const offset = readU53(b, at + 8);
        const digestLength = b[at + 20]!;
        if (id < 0) return this.fail(`${s.kind} id is beyond 2^53`);
        if (offset < 0) return this.fail(`${s.kind} offset is beyond 2^53`);
        if (digestLength > MAX_DIGEST_BYTES || 21 + digestLength !== n) {
          return this.fail(`${s.kind} digest length ${digestLength} does not fill the body of ${n} bytes`);
        }
        const digest = Buffer.from(b.subarray(at + 21, at + n));
        return { kind: s.kind, id, offset, length: b.readUInt32BE(at + 16), digest };
      }
      case 'neg-rs-reply':
      case 'neg-data-reply': {
        const id = readU53(b, at);
        if (id < 0) return this.fail(`${s.kind} id is beyond 2^53`);
        return { kind: s.kind, id, errno: b.readUInt32BE(at + 8) };
      }
      case 'rs-batch-request': {
        const id = readU53(b, at);
        const count = b.readUInt16BE(at + 8);
        if (id < 0) return this.fail('rs-batch-request id is beyond 2^53');
        if (s.fixed + count * RUN_BYTES !== n) return this.fail(`rs-batch-request of ${count} runs does not fill the body of ${n} bytes`);
        const runs = parseRuns(b, at + s.fixed, count);
        if (typeof runs === 'string') return this.fail(`rs-batch-request ${runs}`);
        return { kind: 'rs-batch-request', id, runs };
      }
      case 'disconnect': {
        if (1 + b[at]! !== n) return this.fail(`disconnect reason length ${b[at]} does not fill the body of ${n} bytes`);
        const reason = readString(b, at, at + n, 'reason');
        if (typeof reason !== 'string') return this.fail(`disconnect ${reason.error}`);
        return { kind: 'disconnect', reason };
      }
      case 'sync-pause':
      case 'sync-resume':
      case 'sync-done':
      case 'ping':
      case 'ping-ack':
        return { kind: s.kind };
      case 'peers-in-sync':
        return { kind: 'peers-in-sync', epoch: b.readUInt32BE(at) };
      case 'twopc-prepare': {
        const txId = readU53(b, at);
        const change = TWOPC_CHANGES[b[at + 8]!];
        const initiatorNodeId = b[at + 9]!;
        const lostPrimaryNodeId = b[at + 10]!;
        const lastSeq = readU53(b, at + 12);
        if (txId < 0) return this.fail('twopc-prepare txId is beyond 2^53');
        if (lastSeq < 0) return this.fail('twopc-prepare lastSeq is beyond 2^53');
        if (lostPrimaryNodeId > MAX_NODE_ID && lostPrimaryNodeId !== NO_NODE) return this.fail(`twopc-prepare lost primary ${lostPrimaryNodeId} is not a node id`);
        if (change === undefined) return this.fail(`twopc-prepare change ${b[at + 8]} is unknown`);
        if (initiatorNodeId > MAX_NODE_ID) return this.fail(`twopc-prepare initiator ${initiatorNodeId} is not a node id`);
        return { kind: 'twopc-prepare', txId, change, initiatorNodeId, lostPrimaryNodeId, lastSeq };
      }
      case 'twopc-reply': {
        const txId = readU53(b, at);
        const yes = b[at + 8]!;
        const reason = TWOPC_REFUSALS[b[at + 9]!];
        const primaryNodeId = b[at + 10]!;
        if (txId < 0) return this.fail('twopc-reply txId is beyond 2^53');
        if (yes > 1) return this.fail(`twopc-reply yes is ${yes}, not 0 or 1`);
        if (reason === undefined) return this.fail(`twopc-reply reason ${b[at + 9]} is unknown`);
        if ((yes === 1) !== (reason === 'none')) return this.fail('twopc-reply: a yes carries no reason and a no needs one');
        if (primaryNodeId > MAX_NODE_ID && primaryNodeId !== NO_NODE) return this.fail(`twopc-reply primary ${primaryNodeId} is not a node id`);
        return { kind: 'twopc-reply', txId, yes: yes === 1, reason, primaryNodeId };
      }
      case 'twopc-commit':
      case 'twopc-abort': {
        const txId = readU53(b, at);
        if (txId < 0) return this.fail(`${s.kind} txId is beyond 2^53`);
        return { kind: s.kind, txId };
      }
      case 'data':
      case 'rs-data-reply':
      case 'rs-batch-reply':
      case 'data-reply':
      case 'bitmap':
        return this.fail(`${s.kind} is a payload packet`);
    }
  }

  /**
   * Removes n buffered bytes (the caller checked they are there; n is at most
   * SCRATCH_SIZE) and returns the buffer holding them, from `takenAt`: the
   * chunk itself when they lie in it, else the scratch, which the next take()
   * overwrites. (Offset in a field rather than a returned pair: no
   * allocation per packet.)
   */
  private take(n: number): Buffer {
    this.takenAt = 0;
    // An empty body may come when nothing is buffered at all.
    if (n === 0) return this.scratch;
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      this.takenAt = this.head;
      this.consume(n);
      return first;
    }
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const copied = c.copy(this.scratch, filled, this.head, Math.min(c.length, this.head + (n - filled)));
      filled += copied;
      this.consume(copied);
    }
    return this.scratch;
  }

  /** Consumes n bytes of chunks[0] (n never exceeds what it holds). */
  private consume(n: number): void {
    this.head += n;
    this.total -= n;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }

  private fail(reason: string): null {
    this.state = ReadState.Failed;
    this.violation = reason;
    this.chunks.length = 0;
    this.total = 0;
    this.head = 0;
    this.pending = null;
    this.parts = [];
    return null;
  }

  private failed(reason: string): false {
    this.fail(reason);
    return false;
  }
}

/** `count` runs (offset u64, length u32) at b[at], or what breaks the rule (runs.ts). */
function parseRuns(b: Buffer, at: number, count: number): ResyncRun[] | string {
  const runs: ResyncRun[] = [];
  for (let i = 0; i < count; i++) {
    const offset = readU53(b, at + i * RUN_BYTES);
    if (offset < 0) return `run ${i} offset is beyond 2^53`;
    runs.push({ offset, length: b.readUInt32BE(at + i * RUN_BYTES + 8) });
  }
  return runsProblem(runs) ?? runs;
}

/** A u64 as a number, or -1 when it is 2^53 or more (not exactly representable). */
function readU53(b: Buffer, at: number): number {
  const hi = b.readUInt32BE(at);
  if (hi >= U53_HI_LIMIT) return -1;
  return hi * TWO_POW_32 + b.readUInt32BE(at + 4);
}

/** A u8-length-prefixed UTF-8 string at b[at], which must end by `end`. */
function readString(b: Buffer, at: number, end: number, name: string): string | { error: string } {
  const len = b[at]!;
  if (at + 1 + len > end) return { error: `${name} length ${len} runs past the body` };
  const bytes = b.subarray(at + 1, at + 1 + len);
  if (!isUtf8(bytes)) return { error: `${name} is not UTF-8` };
  return bytes.toString('utf8');
}

function hex8(v: number): string {
  return v.toString(16).padStart(8, '0');
}
