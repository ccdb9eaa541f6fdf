/**
 * The parsed, validated configuration: what the rest of mirrorbd reads.
 * Durations are stored in milliseconds and sizes in bytes, whatever unit the
 * file used (DRBD's ping-int is seconds, ping-timeout tenths are written as
 * decimals here: `ping-timeout 0.5;`).
 */

export type NbdAddress =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string };

export interface TcpAddress {
  host: string;
  port: number;
}

export type Protocol = 'A' | 'B' | 'C';

export interface NetOptions {
  protocol: Protocol;
  pingIntMs: number;
  pingTimeoutMs: number;
  connectIntMs: number;
  timeoutMs: number;
  koCount: number;
  sharedSecret: string | null;
  /** Per-packet checksum of replicated data ('crc32c'), checked by the receiver; 'none' by default. */
  dataIntegrityAlg: 'none' | 'crc32c';
  /** Digest for online verify. */
  verifyAlg: 'crc32c' | 'md5' | 'sha1' | 'sha256';
  /** Digest for checksum-based resync; 'none' copies every marked block. */
  csumsAlg: 'none' | 'crc32c' | 'md5' | 'sha1' | 'sha256';
  /** TLS on the replication link (mutual: both sides present certificates). */
  tls: boolean;
  tlsKeyFile: string | null;
  tlsCertFile: string | null;
  tlsCaFile: string | null;
  /** HMAC used for the peer challenge when a shared secret is set. */
  cramHmacAlg: CramHmacAlg;
  /** What a Primary does about a peer it lost before writing on alone (DRBD's `fencing`). */
  fencing: Fencing;
  /** Split-brain policy when neither node is Primary. */
  afterSb0pri: AfterSb0pri;
  /** Split-brain policy when one node is Primary. */
  afterSb1pri: AfterSb1pri;
  /** Split-brain policy when both nodes are Primary. */
  afterSb2pri: AfterSb2pri;
}

/**
 * `fencing`: dont-care (nothing), resource-only (a Primary that loses a peer
 * runs the fence-peer handler), resource-and-stonith (and freezes I/O until
 * the handler has answered).
 */
export type Fencing = 'dont-care' | 'resource-only' | 'resource-and-stonith';

/**
 * `after-sb-0pri`: who loses a split brain found while both nodes are
 * Secondary. `discard-node` names the node that loses (`discard-node-beta`).
 */
export type AfterSb0pri =
  | { readonly policy: 'disconnect' }
  | { readonly policy: 'discard-younger-primary' }
  | { readonly policy: 'discard-older-primary' }
  | { readonly policy: 'discard-zero-changes' }
  | { readonly policy: 'discard-least-changes' }
  | { readonly policy: 'discard-node'; readonly node: string };

export type AfterSb0priPolicy = AfterSb0pri['policy'];

/** `after-sb-1pri`: consensus applies the 0pri policy only when it discards the Secondary. */
export type AfterSb1pri = 'disconnect' | 'consensus' | 'discard-secondary';

/** `after-sb-2pri`: with two Primaries nobody's writes may be thrown away automatically. */
export type AfterSb2pri = 'disconnect';

export type CramHmacAlg = 'sha256';

export type OnIoError = 'detach' | 'pass_on';

export interface DiskOptions {
  resyncRateBytesPerSec: number;
  alExtents: number;
  onIoError: OnIoError;
  /**
   * Dynamic resync rate: 0 = the fixed resyncRateBytesPerSec; otherwise the
   * rate follows how fast resync requests are answered, aiming at
   * cDelayTargetMs, between the min and max rates, adjusting over this span.
   */
  cPlanAheadMs: number;
  cDelayTargetMs: number;
  cMinRateBytesPerSec: number;
  cMaxRateBytesPerSec: number;
}

export type TlsModeSetting = 'off' | 'optional' | 'required';

export interface NbdOptions {
  tls: TlsModeSetting;
  tlsKeyFile: string | null;
  tlsCertFile: string | null;
  tlsCaFile: string | null;
  /** Client addresses or CIDRs; empty: everyone. */
  allow: string[];
  /** Largest READ/WRITE payload advertised and accepted (32 MiB default, at most 64 MiB). */
  maxPayloadBytes: number;
  description: string | null;
}

/** `quorum`: off, a majority or all of the voters, or a fixed number of votes. */
export type QuorumSetting = 'off' | 'majority' | 'all' | number;

export type OnNoQuorum = 'suspend-io' | 'io-error';

/** The `options` section (resource options, as DRBD 9 names them). */
export interface ResourceOptions {
  quorum: QuorumSetting;
  onNoQuorum: OnNoQuorum;
  autoPromote: boolean;
  /** How long a cluster-wide state change (promotion) waits for every peer's answer. */
  twopcTimeoutMs: number;
  /** How long a handler command may run before its process group is killed. */
  handlerTimeoutMs: number;
}

export interface NodeConfig {
  name: string;
  nodeId: number;
  /** Backing disk path; null for a diskless node (`disk none;`). */
  disk: string | null;
  /** 'internal' or the path of an external metadata device. */
  metaDisk: 'internal' | string;
  address: TcpAddress | null;
  nbdAddress: NbdAddress | null;
}

export interface ResourceConfig {
  name: string;
  net: NetOptions;
  disk: DiskOptions;
  nbd: NbdOptions;
  options: ResourceOptions;
  /** Handler name -> command line, e.g. 'split-brain' -> '/usr/local/sbin/notify'. */
  handlers: Record<string, string>;
  nodes: NodeConfig[];
}

export interface GlobalOptions {
  runDir: string;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';
}

export interface Config {
  /** The file it was read from (for messages). */
  file: string;
  global: GlobalOptions;
  resources: ResourceConfig[];
}

export const DEFAULT_CONFIG_FILE = '/etc/mirrorbd/mirrorbd.conf';
export const DEFAULT_RUN_DIR = '/run/mirrorbd';
export const DEFAULT_MAX_PAYLOAD_BYTES = 32 * 1024 * 1024;
export const MAX_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024;
export const DEFAULT_NBD_PORT = 10809;
