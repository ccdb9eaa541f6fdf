/**
 * Numbers of the peer wire protocol: framing, packet type codes, flag bits,
 * feature bits and limits. docs/wire-protocol.md is the specification; every
 * number here appears there with its meaning.
 */

/** ASCII "MBDP" (mirrorbd peer protocol), the first 4 bytes of every packet. */
export const WIRE_MAGIC = 0x4d424450;

/** magic u32, type u16, flags u16, length u32. */
export const HEADER_SIZE = 12;

/**
 * The protocol versions this build speaks. Peers settle on the highest
 * version both speak; the header and HELLO layouts are frozen across versions
 * so that this negotiation always works.
 */
/**
 * Version 2 added the role manager's packets and flags (two-phase commit,
 * PEERS_IN_SYNC, PRIMARY_AT_SPLIT, DISCARD_MY_DATA, the sync rules after
 * `dirty-peer`). A version 1 node knows none of them, so it is refused at
 * HELLO rather than misunderstood later.
 */
export const PROTOCOL_VERSION_MIN = 2;
export const PROTOCOL_VERSION_MAX = 2;

/**
 * Default ceiling of the header's length field: the largest data payload we
 * ever send (64 MiB) plus room for fixed fields and the digest. A decoder
 * refuses a longer packet from its header alone.
 */
export const DEFAULT_MAX_PACKET_LENGTH = 64 * 1024 * 1024 + 4096;

/** Header flag bit 0: the body ends with a crc32c digest (integrity-crc32c agreed). */
export const HEADER_FLAG_DIGEST = 0x0001;
export const KNOWN_HEADER_FLAGS = HEADER_FLAG_DIGEST;
/** Bytes of the trailing digest when HEADER_FLAG_DIGEST is set. */
export const DIGEST_SIZE = 4;

/** Packet type codes, grouped by purpose in the high byte. */
export const PacketType = {
  // handshake (0x00xx)
  HELLO: 0x0001,
  AUTH_CHALLENGE: 0x0002,
  AUTH_RESPONSE: 0x0003,
  AUTH_OK: 0x0004,
  PARAMS: 0x0005,
  SIZES: 0x0006,
  UUIDS: 0x0007,
  STATE: 0x0008,
  BITMAP: 0x0009,
  DECISION: 0x000a,
  // replicated writes (0x01xx)
  DATA: 0x0101,
  ZEROES: 0x0102,
  TRIM: 0x0103,
  RECV_ACK: 0x0104,
  WRITE_ACK: 0x0105,
  NEG_ACK: 0x0106,
  BARRIER: 0x0107,
  BARRIER_ACK: 0x0108,
  FLUSH: 0x0109,
  FLUSH_ACK: 0x010a,
  OUT_OF_SYNC: 0x010b,
  PEERS_IN_SYNC: 0x010c,
  // resync and online verify (0x02xx)
  RS_DATA_REQUEST: 0x0201,
  RS_DATA_REPLY: 0x0202,
  CSUM_RS_REQUEST: 0x0203,
  RS_IS_IN_SYNC: 0x0204,
  RS_WRITE_ACK: 0x0205,
  NEG_RS_REPLY: 0x0206,
  OV_REQUEST: 0x0207,
  OV_REPLY: 0x0208,
  SYNC_PAUSE: 0x0209,
  SYNC_RESUME: 0x020a,
  SYNC_DONE: 0x020b,
  // 0x0210-0x021f: batched resync (feature RS_BATCH)
  RS_BATCH_REQUEST: 0x0210,
  RS_BATCH_REPLY: 0x0211,
  // reads served for a diskless peer (0x03xx)
  DATA_REQUEST: 0x0301,
  DATA_REPLY: 0x0302,
  NEG_DATA_REPLY: 0x0303,
  // liveness and teardown (0x04xx)
  PING: 0x0401,
  PING_ACK: 0x0402,
  DISCONNECT: 0x0403,
  // cluster-wide state changes: two-phase commit (0x05xx)
  TWOPC_PREPARE: 0x0501,
  TWOPC_REPLY: 0x0502,
  TWOPC_COMMIT: 0x0503,
  TWOPC_ABORT: 0x0504,
} as const;

/** HELLO `channel`: which of the two connections of a peer session this is. */
export const CHANNEL_DATA = 0;
export const CHANNEL_META = 1;

/**
 * HELLO `features`: optional capabilities. The agreed set is the bitwise AND
 * of both HELLOs, so unknown bits from a newer peer are harmless.
 */
export const FEATURES = {
  /** Data payloads carry a crc32c digest (HEADER_FLAG_DIGEST). */
  INTEGRITY_CRC32C: 1 << 0,
  /** Checksum-based resync (CSUM_RS_REQUEST / RS_IS_IN_SYNC). */
  CSUM_RESYNC: 1 << 1,
  /** Online verify (OV_REQUEST / OV_REPLY). */
  ONLINE_VERIFY: 1 << 2,
  /** TRIM packets (otherwise a discard is not replicated as such). */
  TRIM: 1 << 3,
  /** ZEROES packets (otherwise zeroes travel as DATA). */
  ZEROES: 1 << 4,
  /** DATA_REQUEST / DATA_REPLY for a peer without a disk. */
  REMOTE_READ: 1 << 5,
  /** RS_BATCH_REQUEST / RS_BATCH_REPLY: one resync request names many ranges. */
  RS_BATCH: 1 << 6,
} as const;
export const KNOWN_FEATURES = Object.values(FEATURES).reduce((a, b) => a | b, 0);

/** PARAMS `flags`. */
export const PARAMS_FLAGS = {
  /** The sender's operator said `connect --discard-my-data`: it yields a split brain. */
  DISCARD_MY_DATA: 1 << 0,
} as const;
export const KNOWN_PARAMS_FLAGS = PARAMS_FLAGS.DISCARD_MY_DATA;

/** UUIDS `flags`: facts about the sender's data that the sync decision reads. */
export const UUID_FLAGS = {
  /** The data is a consistent state (clear: Inconsistent, e.g. new or mid-resync). */
  CONSISTENT: 1 << 0,
  /** The data was UpToDate when last known (clear with CONSISTENT: Outdated). */
  WAS_UP_TO_DATE: 1 << 1,
  /** The sender is Primary now. */
  PRIMARY: 1 << 2,
  /** The sender was Primary and went down without demoting. */
  CRASHED_PRIMARY: 1 << 3,
  /**
   * Sent on an established session (not in the handshake): the receiver
   * takes `current` as its own generation, because both disks hold the same
   * data (new-current-uuid; with --clear-bitmap on two fresh disks, this
   * skips the initial sync and both become UpToDate).
   */
  ADOPT_CURRENT: 1 << 4,
  /** The sender's bitmap UUID for the receiver was set while the sender was Primary. */
  PRIMARY_AT_SPLIT: 1 << 5,
  /**
   * Sent on an established session by a Primary that started a new
   * generation (it lost another peer): the receiver, which keeps getting
   * every write, takes `current` too and keeps its bitmaps.
   */
  NEW_GENERATION: 1 << 6,
  /**
   * The sender is Primary without quorum (its I/O held): meeting a Primary
   * that has quorum, it steps down and yields instead of a split brain.
   */
  NO_QUORUM: 1 << 7,
  /**
   * The sender is not Primary and has an established session with a node
   * that is: it neither gives nor takes a resync from another Secondary now
   * (the Primary syncs both), and its peer must know that before either
   * side acts on a sync decision.
   */
  PRIMARY_CONNECTED: 1 << 8,
} as const;
export const KNOWN_UUID_FLAGS = Object.values(UUID_FLAGS).reduce((a, b) => a | b, 0);

/**
 * Flags of DATA, ZEROES and TRIM. The two ACK bits let the sender choose the
 * acknowledgement per write (protocol A: none, B: receive, C: write), so the
 * receiver never needs to know the protocol to answer correctly.
 */
export const WRITE_FLAGS = {
  /** Forced unit access: the write is on stable storage before it is acknowledged. */
  FUA: 1 << 0,
  /** Send RECV_ACK when the write has been received (protocol B). */
  SEND_RECV_ACK: 1 << 1,
  /** Send WRITE_ACK when the write has completed (protocol C). */
  SEND_WRITE_ACK: 1 << 2,
  /** ZEROES only: the range must stay allocated (NBD's NO_HOLE). */
  NO_HOLE: 1 << 3,
} as const;
export const KNOWN_WRITE_FLAGS = Object.values(WRITE_FLAGS).reduce((a, b) => a | b, 0);

/** TWOPC_PREPARE `change`: what the initiator wants to change. Wire code = index. Append only. */
export const TWOPC_CHANGES = ['promote'] as const;
export type TwopcChange = (typeof TWOPC_CHANGES)[number];

/**
 * TWOPC_REPLY `reason` when the answer is no. Wire code = index. Append only.
 * - primary-exists: the replier is Primary, or sees another Primary (named by primaryNodeId);
 * - busy: the replier is promoting itself, or holds another node's prepared change;
 * - not-allowed: any other refusal;
 * - newer-data: the replier holds later writes of the lost Primary than the initiator.
 */
export const TWOPC_REFUSALS = ['none', 'primary-exists', 'busy', 'not-allowed', 'newer-data'] as const;
export type TwopcRefusal = (typeof TWOPC_REFUSALS)[number];
/** TWOPC_REPLY `primaryNodeId` when no Primary is named. */
export const NO_NODE = 0xff;

/** Longest resource name and DISCONNECT reason (u8 length prefix). */
export const MAX_NAME_BYTES = 255;
/** Longest algorithm name in PARAMS. */
export const MAX_ALG_NAME_BYTES = 63;
/**
 * Ranges in one RS_BATCH_REQUEST / RS_BATCH_REPLY at most: 256 scattered
 * 4 KiB blocks are 1 MiB, and the request's body is then 3 KiB, small
 * enough to decode from the decoder's reused scratch.
 */
export const MAX_BATCH_RUNS = 256;
/** Bytes of one range on the wire: offset u64, length u32. */
export const RUN_BYTES = 12;
/** Longest digest in CSUM_RS_REQUEST / OV_REPLY (SHA-512). */
export const MAX_DIGEST_BYTES = 64;
/** Bytes of AUTH_CHALLENGE and AUTH_RESPONSE (HMAC-SHA-256 output size, too). */
export const AUTH_BYTES = 32;
/** Node ids 0..31, as in the config. */
export const MAX_NODE_ID = 31;
