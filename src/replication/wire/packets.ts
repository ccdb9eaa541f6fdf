/**
 * The typed packets of the peer wire protocol and the table that says, for
 * each kind, its type code, which connection carries it and how its body is
 * framed. The encoder and the decoder both read PACKET_SPECS, so a packet's
 * size rules live in exactly one place.
 *
 * Field conventions:
 * - offsets, lengths, sequence numbers, ids and counters are JS numbers; on
 *   the wire they are u64 where the table says so and must stay below 2^53
 *   (a larger value is a protocol violation, never silently rounded);
 * - generation UUIDs and the session id are random 64-bit values: bigint;
 * - `payload` is a view of received bytes (or a fresh copy when it straddled
 *   TCP chunks); whoever keeps it beyond the current I/O owns that decision.
 */
import { MAX_BATCH_RUNS, PacketType, RUN_BYTES, type TwopcChange, type TwopcRefusal } from './constants.js';
import type { SyncRule, SyncStrategy } from '../sync-decision.js';

export type Channel = 'data' | 'meta';
export type WireRole = 'Secondary' | 'Primary';
/** The same names as the resource layer's DiskState, in wire-code order. */
export type WireDiskState = 'Diskless' | 'Attaching' | 'Inconsistent' | 'Outdated' | 'Consistent' | 'UpToDate' | 'Failed';
export type ReplicationProtocol = 'A' | 'B' | 'C';

/** Wire code = index. Append only. */
export const WIRE_ROLES: readonly WireRole[] = ['Secondary', 'Primary'];
export const WIRE_DISK_STATES: readonly WireDiskState[] = [
  'Diskless',
  'Attaching',
  'Inconsistent',
  'Outdated',
  'Consistent',
  'UpToDate',
  'Failed',
];

// --- handshake -----------------------------------------------------------------

export interface HelloPacket {
  kind: 'hello';
  protocolMin: number;
  protocolMax: number;
  /** FEATURES bits the sender supports. */
  features: number;
  /** Links the data and meta connections of one peer session (random, chosen by the connecting side). */
  sessionId: bigint;
  nodeId: number;
  channel: Channel;
  /** Resource name, UTF-8, at most 255 bytes. */
  resource: string;
}
export interface AuthChallengePacket {
  kind: 'auth-challenge';
  /** 32 random bytes. */
  challenge: Buffer;
}
export interface AuthResponsePacket {
  kind: 'auth-response';
  /** HMAC-SHA-256, 32 bytes (see auth.ts). */
  response: Buffer;
}
export interface AuthOkPacket {
  kind: 'auth-ok';
}
export interface ParamsPacket {
  kind: 'params';
  protocol: ReplicationProtocol;
  /** PARAMS_FLAGS bits. */
  flags: number;
  /** Empty when not configured. ASCII, at most 63 bytes. */
  csumsAlg: string;
  verifyAlg: string;
}
export interface SizesPacket {
  kind: 'sizes';
  /** Usable data bytes of the sender's disk; 0 when it has none. */
  dataSizeBytes: number;
  /** Largest data payload the sender accepts in one packet. */
  maxPayloadBytes: number;
}
export interface UuidsPacket {
  kind: 'uuids';
  current: bigint;
  /** The sender's bitmap UUID for the receiver (0 when that bitmap is clean). */
  bitmap: bigint;
  /** Newest first. */
  history: [bigint, bigint];
  /** UUID_FLAGS bits. */
  flags: number;
  /** Bits set in the sender's bitmap for the receiver. */
  dirtyBlocks: number;
}
export interface StatePacket {
  kind: 'state';
  role: WireRole;
  disk: WireDiskState;
}
export interface BitmapPacket {
  kind: 'bitmap';
  /** True on the final chunk of the sender's bitmap. */
  last: boolean;
  /** First bit this chunk describes. */
  startBit: number;
  /** Run-length encoded bits (the metadata layer's format; opaque here). */
  payload: Buffer;
}
export interface DecisionPacket {
  kind: 'decision';
  /** The sync decision as the sender computed it, from the sender's point of view. */
  strategy: SyncStrategy;
  rule: SyncRule;
}

// --- replicated writes -----------------------------------------------------------

export interface DataPacket {
  kind: 'data';
  seq: number;
  epoch: number;
  offset: number;
  /** WRITE_FLAGS bits. */
  flags: number;
  payload: Buffer;
  /**
   * The payload as pieces (then `payload` is empty). Sending: the pieces it
   * arrived in from the NBD client, written to the socket without being
   * copied into one buffer. Receiving, from a decoder built with
   * `gatherPayloads`: two or more views of the received chunks, in order,
   * written to the disk as they are (one positional writev).
   */
  parts?: readonly Buffer[];
}
export interface ZeroesPacket {
  kind: 'zeroes';
  seq: number;
  epoch: number;
  offset: number;
  length: number;
  flags: number;
}
export interface TrimPacket {
  kind: 'trim';
  seq: number;
  epoch: number;
  offset: number;
  length: number;
  flags: number;
}
export interface RecvAckPacket {
  kind: 'recv-ack';
  seq: number;
}
export interface WriteAckPacket {
  kind: 'write-ack';
  seq: number;
}
export interface NegAckPacket {
  kind: 'neg-ack';
  seq: number;
  /** Linux errno of the failed write (5 = EIO). */
  errno: number;
}
export interface BarrierPacket {
  kind: 'barrier';
  epoch: number;
}
export interface BarrierAckPacket {
  kind: 'barrier-ack';
  epoch: number;
  /** Writes (DATA, ZEROES, TRIM) the receiver counted in that epoch. */
  writes: number;
}
export interface FlushPacket {
  kind: 'flush';
  id: number;
}
export interface FlushAckPacket {
  kind: 'flush-ack';
  id: number;
}
export interface OutOfSyncPacket {
  kind: 'out-of-sync';
  offset: number;
  length: number;
}

// --- resync and verify -----------------------------------------------------------

export interface RsDataRequestPacket {
  kind: 'rs-data-request';
  id: number;
  offset: number;
  length: number;
}
export interface RsDataReplyPacket {
  kind: 'rs-data-reply';
  id: number;
  offset: number;
  payload: Buffer;
  /**
   * Only from a decoder built with `gatherPayloads`: the payload arrived in
   * these pieces (two or more views of the received chunks, in order) and
   * `payload` is empty. The pieces are not copied into one buffer: the receiver writes
   * them as they are (one positional writev). Also accepted by the encoder.
   */
  parts?: Buffer[];
  /**
   * Not on the wire: the sender's wish to hear when the link is done with
   * `payload` (a pooled read buffer goes back to its pool then). The link
   * calls it once, after the socket wrote the packet or when it never will.
   */
  whenWritten?: () => void;
}
export interface CsumRsRequestPacket {
  kind: 'csum-rs-request';
  id: number;
  offset: number;
  length: number;
  /** The target's digest of its block (csums-alg), at most 64 bytes. */
  digest: Buffer;
}
export interface RsIsInSyncPacket {
  kind: 'rs-is-in-sync';
  id: number;
  offset: number;
  length: number;
}
export interface RsWriteAckPacket {
  kind: 'rs-write-ack';
  id: number;
}
export interface NegRsReplyPacket {
  kind: 'neg-rs-reply';
  id: number;
  errno: number;
}
export interface OvRequestPacket {
  kind: 'ov-request';
  id: number;
  offset: number;
  length: number;
}
export interface OvReplyPacket {
  kind: 'ov-reply';
  id: number;
  offset: number;
  length: number;
  /** verify-alg digest of the replier's block, at most 64 bytes. */
  digest: Buffer;
}
/** One range of a batched resync: bytes [offset, offset + length). */
export interface ResyncRun {
  offset: number;
  length: number;
}
/**
 * RS_BATCH (feature): the target asks for several ranges at once. `runs`
 * are in ascending order, disjoint and non-empty, 1..MAX_BATCH_RUNS of them.
 */
export interface RsBatchRequestPacket {
  kind: 'rs-batch-request';
  id: number;
  runs: ResyncRun[];
}
/**
 * The source's answer to an RS_BATCH_REQUEST: the request's runs echoed (the
 * target checks them against what it asked, as RS_DATA_REPLY echoes its
 * offset), then their data one after the other.
 */
export interface RsBatchReplyPacket {
  kind: 'rs-batch-reply';
  id: number;
  runs: ResyncRun[];
  /** The runs' bytes in order; their lengths add up to its length. */
  payload: Buffer;
  /** As for RS_DATA_REPLY: the payload as received pieces (then `payload` is empty). */
  parts?: Buffer[];
  /** As for RS_DATA_REPLY: not on the wire. */
  whenWritten?: () => void;
}
export interface SyncPausePacket {
  kind: 'sync-pause';
}
export interface SyncResumePacket {
  kind: 'sync-resume';
}
export interface SyncDonePacket {
  kind: 'sync-done';
}

// --- diskless reads --------------------------------------------------------------

export interface DataRequestPacket {
  kind: 'data-request';
  id: number;
  offset: number;
  length: number;
}
export interface DataReplyPacket {
  kind: 'data-reply';
  id: number;
  offset: number;
  payload: Buffer;
}
export interface NegDataReplyPacket {
  kind: 'neg-data-reply';
  id: number;
  errno: number;
}

// --- liveness and teardown ----------------------------------------------------------

export interface PingPacket {
  kind: 'ping';
}
export interface PingAckPacket {
  kind: 'ping-ack';
}
/**
 * From the Primary: every write of this epoch reached every data node of
 * the resource. A Secondary then forgets that those blocks might differ
 * between it and the other Secondaries (an earlier epoch that was never
 * confirmed keeps its marks).
 */
export interface PeersInSyncPacket {
  kind: 'peers-in-sync';
  epoch: number;
}

// --- two-phase commit of cluster-wide changes ------------------------------------------

export interface TwopcPreparePacket {
  kind: 'twopc-prepare';
  /** Chosen by the initiator; echoed in every later packet of the change. */
  txId: number;
  change: TwopcChange;
  initiatorNodeId: number;
  /** After losing a Primary: that node (NO_NODE otherwise) and the last write sequence the initiator applied from it. */
  lostPrimaryNodeId: number;
  lastSeq: number;
}
export interface TwopcReplyPacket {
  kind: 'twopc-reply';
  txId: number;
  yes: boolean;
  /** 'none' when yes. */
  reason: TwopcRefusal;
  /** The Primary the replier knows of (itself or another), or NO_NODE. */
  primaryNodeId: number;
}
export interface TwopcCommitPacket {
  kind: 'twopc-commit';
  txId: number;
}
export interface TwopcAbortPacket {
  kind: 'twopc-abort';
  txId: number;
}

export interface DisconnectPacket {
  kind: 'disconnect';
  /** Why the sender is leaving, for the receiver's log. UTF-8, at most 255 bytes. */
  reason: string;
}

export type Packet =
  | HelloPacket
  | AuthChallengePacket
  | AuthResponsePacket
  | AuthOkPacket
  | ParamsPacket
  | SizesPacket
  | UuidsPacket
  | StatePacket
  | BitmapPacket
  | DecisionPacket
  | DataPacket
  | ZeroesPacket
  | TrimPacket
  | RecvAckPacket
  | WriteAckPacket
  | NegAckPacket
  | BarrierPacket
  | BarrierAckPacket
  | FlushPacket
  | FlushAckPacket
  | OutOfSyncPacket
  | RsDataRequestPacket
  | RsDataReplyPacket
  | CsumRsRequestPacket
  | RsIsInSyncPacket
  | RsWriteAckPacket
  | NegRsReplyPacket
  | OvRequestPacket
  | OvReplyPacket
  | RsBatchRequestPacket
  | RsBatchReplyPacket
  | SyncPausePacket
  | SyncResumePacket
  | SyncDonePacket
  | DataRequestPacket
  | DataReplyPacket
  | NegDataReplyPacket
  | PingPacket
  | PingAckPacket
  | PeersInSyncPacket
  | TwopcPreparePacket
  | TwopcReplyPacket
  | TwopcCommitPacket
  | TwopcAbortPacket
  | DisconnectPacket;

export type PacketKind = Packet['kind'];
export type PacketOf<K extends PacketKind> = Extract<Packet, { kind: K }>;

// --- the framing table -----------------------------------------------------------

/**
 * How a body is framed:
 * - fixed:    exactly `fixed` bytes;
 * - variable: `fixed` bytes then length-prefixed strings or digests, the whole
 *             body at most `maxBody` bytes (small: decoded from a reused scratch);
 * - payload:  `fixed` bytes then an opaque payload filling the rest of the body
 *             (then the digest, when the header says so);
 * - runs:     `fixed` bytes ending in a run count, that many runs (RUN_BYTES
 *             each), then a payload holding exactly the runs' bytes (then the
 *             digest).
 */
export type BodyLayout = 'fixed' | 'variable' | 'payload' | 'runs';

export interface PacketSpec {
  kind: PacketKind;
  code: number;
  /** The connection that carries it; 'both' for the handshake and DISCONNECT. */
  channel: Channel | 'both';
  layout: BodyLayout;
  fixed: number;
  /**
   * Largest body (variable layout); for the runs layout, the largest part
   * before the payload. Otherwise equal to `fixed` or bounded by the
   * decoder's limit.
   */
  maxBody: number;
  /** May carry the crc32c digest: the packets whose payload is block data. */
  digest: boolean;
}

function spec(kind: PacketKind, code: number, channel: PacketSpec['channel'], layout: BodyLayout, fixed: number, maxBody = fixed, digest = false): PacketSpec {
  return { kind, code, channel, layout, fixed, maxBody, digest };
}

/**
 * Fixed-part sizes are the sums of the field widths in docs/wire-protocol.md
 * (u8 = 1, u16 = 2, u32 = 4, u64 = 8).
 */
export const PACKET_SPECS: readonly PacketSpec[] = [
  // protocolMin 2, protocolMax 2, features 4, sessionId 8, nodeId 1, channel 1, name len 1 + name
  spec('hello', PacketType.HELLO, 'both', 'variable', 19, 19 + 255),
  spec('auth-challenge', PacketType.AUTH_CHALLENGE, 'both', 'fixed', 32),
  spec('auth-response', PacketType.AUTH_RESPONSE, 'both', 'fixed', 32),
  spec('auth-ok', PacketType.AUTH_OK, 'both', 'fixed', 0),
  // protocol 1, reserved 3, flags 4, csums len 1 + name, verify len 1 + name
  spec('params', PacketType.PARAMS, 'data', 'variable', 10, 10 + 63 + 63),
  // dataSize 8, maxPayload 4
  spec('sizes', PacketType.SIZES, 'data', 'fixed', 12),
  // current 8, bitmap 8, history 16, flags 4, dirtyBlocks 8
  spec('uuids', PacketType.UUIDS, 'data', 'fixed', 44),
  // role 1, disk 1
  spec('state', PacketType.STATE, 'data', 'fixed', 2),
  // last 1, reserved 3, startBit 8, payload
  spec('bitmap', PacketType.BITMAP, 'data', 'payload', 12),
  // strategy 1, rule 1
  spec('decision', PacketType.DECISION, 'data', 'fixed', 2),

  // seq 8, epoch 4, flags 2, reserved 2, offset 8, payload
  spec('data', PacketType.DATA, 'data', 'payload', 24, 24, true),
  // seq 8, epoch 4, flags 2, reserved 2, offset 8, length 4
  spec('zeroes', PacketType.ZEROES, 'data', 'fixed', 28),
  spec('trim', PacketType.TRIM, 'data', 'fixed', 28),
  spec('recv-ack', PacketType.RECV_ACK, 'meta', 'fixed', 8),
  spec('write-ack', PacketType.WRITE_ACK, 'meta', 'fixed', 8),
  spec('neg-ack', PacketType.NEG_ACK, 'meta', 'fixed', 12),
  spec('barrier', PacketType.BARRIER, 'data', 'fixed', 4),
  spec('barrier-ack', PacketType.BARRIER_ACK, 'meta', 'fixed', 8),
  spec('flush', PacketType.FLUSH, 'data', 'fixed', 8),
  spec('flush-ack', PacketType.FLUSH_ACK, 'meta', 'fixed', 8),
  spec('out-of-sync', PacketType.OUT_OF_SYNC, 'data', 'fixed', 12),
  // epoch 4
  spec('peers-in-sync', PacketType.PEERS_IN_SYNC, 'data', 'fixed', 4),

  // id 8, offset 8, length 4
  spec('rs-data-request', PacketType.RS_DATA_REQUEST, 'data', 'fixed', 20),
  // id 8, offset 8, payload
  spec('rs-data-reply', PacketType.RS_DATA_REPLY, 'data', 'payload', 16, 16, true),
  // id 8, offset 8, length 4, digest len 1 + digest
  spec('csum-rs-request', PacketType.CSUM_RS_REQUEST, 'data', 'variable', 21, 21 + 64),
  spec('rs-is-in-sync', PacketType.RS_IS_IN_SYNC, 'meta', 'fixed', 20),
  spec('rs-write-ack', PacketType.RS_WRITE_ACK, 'meta', 'fixed', 8),
  spec('neg-rs-reply', PacketType.NEG_RS_REPLY, 'meta', 'fixed', 12),
  spec('ov-request', PacketType.OV_REQUEST, 'data', 'fixed', 20),
  spec('ov-reply', PacketType.OV_REPLY, 'data', 'variable', 21, 21 + 64),
  spec('sync-pause', PacketType.SYNC_PAUSE, 'data', 'fixed', 0),
  spec('sync-resume', PacketType.SYNC_RESUME, 'data', 'fixed', 0),
  spec('sync-done', PacketType.SYNC_DONE, 'data', 'fixed', 0),
  // id 8, runs 2, reserved 2, runs x (offset 8, length 4)
  spec('rs-batch-request', PacketType.RS_BATCH_REQUEST, 'data', 'variable', 12, 12 + MAX_BATCH_RUNS * RUN_BYTES),
  // id 8, runs 2, reserved 2, runs x (offset 8, length 4), payload
  spec('rs-batch-reply', PacketType.RS_BATCH_REPLY, 'data', 'runs', 12, 12 + MAX_BATCH_RUNS * RUN_BYTES, true),

  spec('data-request', PacketType.DATA_REQUEST, 'data', 'fixed', 20),
  spec('data-reply', PacketType.DATA_REPLY, 'data', 'payload', 16, 16, true),
  spec('neg-data-reply', PacketType.NEG_DATA_REPLY, 'meta', 'fixed', 12),

  spec('ping', PacketType.PING, 'meta', 'fixed', 0),
  spec('ping-ack', PacketType.PING_ACK, 'meta', 'fixed', 0),
  // txId 8, change 1, initiator 1, lostPrimary 1, reserved 1, lastSeq 8
  spec('twopc-prepare', PacketType.TWOPC_PREPARE, 'meta', 'fixed', 20),
  // txId 8, yes 1, reason 1, primaryNodeId 1
  spec('twopc-reply', PacketType.TWOPC_REPLY, 'meta', 'fixed', 11),
  spec('twopc-commit', PacketType.TWOPC_COMMIT, 'meta', 'fixed', 8),
  spec('twopc-abort', PacketType.TWOPC_ABORT, 'meta', 'fixed', 8),
  // reason len 1 + reason
  spec('disconnect', PacketType.DISCONNECT, 'both', 'variable', 1, 1 + 255),
];

const BY_KIND = new Map<PacketKind, PacketSpec>(PACKET_SPECS.map((s) => [s.kind, s]));
const BY_CODE = new Map<number, PacketSpec>(PACKET_SPECS.map((s) => [s.code, s]));

export function specOfKind(kind: PacketKind): PacketSpec {
  return BY_KIND.get(kind)!;
}

/** The spec of a type code, or undefined for a code this version does not know. */
export function specOfCode(code: number): PacketSpec | undefined {
  return BY_CODE.get(code);
}

/**
 * The largest variable-layout body, or run list of a runs-layout packet:
 * what the decoder may have to gather in its scratch.
 */
export const MAX_VARIABLE_BODY = Math.max(...PACKET_SPECS.filter((s) => s.layout === 'variable' || s.layout === 'runs').map((s) => s.maxBody));
