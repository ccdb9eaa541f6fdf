/**
 * One peer of a resource: its connection (dialing or accepting, with the
 * two channels of a session), the connect-time handshake, and — while
 * connected — the traffic of the session: replicated writes out, their
 * acknowledgements in, the receiving of the peer's writes, resync, pings.
 *
 * The lower node-id dials, the higher one accepts, so two nodes never race
 * to open the same session. A lost session returns to Connecting: the dialer
 * redials every `connect-int`, the acceptor waits.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { MirrorError } from '../errors.js';
import type { NetOptions, NodeConfig } from '../config/model.js';
import { PeerChannel } from './channel.js';
import {
  transitionConnection,
  transitionReplication,
  type ConnectionState,
  type ReplicationState,
} from './connection-states.js';
import { PacketWaiter, exchangeBitmaps, exchangeFacts, type HandshakeFacts } from './handshake.js';
import { newSessionId, openChannel, type OpenedChannel } from './opening.js';
import type { ReplicaPort, SyncRole } from './replica-port.js';
import { Receiver } from './receiver.js';
import { DEFAULT_RESYNC_REQUEST_BYTES, ResyncSource, ResyncTarget, type ResyncProgress } from './resync.js';
import type { RateSettings } from './rate-controller.js';
import { decideSync, describeSyncDecision, isSplitBrain, type SyncDecision, type SyncSide, type SyncStrategy } from './sync-decision.js';
import { describeAfterSb, resolveSplitBrain, type AfterSbSide } from './after-sb.js';
import { TransferLog, type PeerOutcome } from './transfer-log.js';
import { VerifySource, answerVerify, type DigestAlg, type VerifyProgress } from './verify.js';
import {
  FEATURES,
  NO_NODE,
  PARAMS_FLAGS,
  UUID_FLAGS,
  WRITE_FLAGS,
  agreeSizes,
  dataLength,
  paramsMismatch,
  specOfKind,
  type Channel,
  type Packet,
  type ReplicationProtocol,
  type TwopcChange,
  type TwopcRefusal,
  type UuidsPacket,
  type WireDiskState,
  type WireRole,
} from './wire/index.js';

/** Epochs of a Primary's writes a Secondary remembers while waiting for PEERS_IN_SYNC. */
const MAX_UNCONFIRMED_EPOCHS = 256;

/** After an orderly "renegotiate" the dialer reconnects at once, not after connect-int. */
export const RENEGOTIATE_PREFIX = 'renegotiate: ';
/** A node going down says so: its peers do not count it against quorum while it is away. */
export const LEAVING_PREFIX = 'leaving: ';

/** What a participant answers to a two-phase change (TWOPC_PREPARE). */
export interface TwopcAnswer {
  yes: boolean;
  reason: TwopcRefusal;
  /** The Primary the answering node knows of, or NO_NODE. */
  primaryNodeId: number;
}

/** After a Primary was lost: which node, and the last of its writes a survivor applied. */
export interface LostPrimaryProgress {
  /** NO_NODE when no Primary was lost. */
  nodeId: number;
  lastSeq: number;
}

/** The resource's side of a two-phase change that a peer initiated. */
export interface TwopcParticipant {
  prepare(fromNodeId: number, txId: number, change: TwopcChange, progress: LostPrimaryProgress): TwopcAnswer;
  commit(fromNodeId: number, txId: number): void;
  abort(fromNodeId: number, txId: number | null): void;
}

/** How the resource hears about a peer beyond events. */
export interface PeerHooks {
  /** The connection came up or went down, or the peer's role or disk changed. */
  changed(): void;
  /** The session ended: was the peer Primary, and did it say it was leaving? */
  /** lastSeq: the last write sequence applied from this peer in the session (0: none). */
  lost(info: { wasPrimary: boolean; graceful: boolean; reason: string; lastSeq: number }): void;
  /** A split brain no policy resolved (the split-brain handler's moment). */
  splitBrain?(detail: string): void;
  twopc: TwopcParticipant;
}

export interface PeerOptions {
  port: ReplicaPort;
  self: NodeConfig;
  peer: NodeConfig;
  net: NetOptions;
  resyncRate: RateSettings;
  maxPayloadBytes: number;
  log: Logger;
  /** State changes for the event stream. */
  onEvent?: (e: { type: string; [field: string]: unknown }) => void;
  /** TLS material when `net { tls yes; }` (PEM). */
  tls?: PeerTls | null;
  hooks?: PeerHooks;
}

export interface PeerTls {
  key: Buffer;
  cert: Buffer;
  /** With a CA, only peers whose certificate it signed are accepted. */
  ca?: Buffer;
}

export type WriteKind = 'data' | 'zeroes' | 'trim';

export interface ReplicatedWrite {
  kind: WriteKind;
  seq: number;
  epoch: number;
  offset: number;
  length: number;
  fua: boolean;
  noHole?: boolean;
  payload?: Buffer;
  /** The payload as received pieces instead of `payload` (see DataPacket.parts). */
  parts?: readonly Buffer[];
}

interface Session {
  id: bigint;
  data: PeerChannel;
  meta: PeerChannel;
  features: number;
  tl: TransferLog;
  receiver: Receiver | null;
  source: ResyncSource | null;
  target: ResyncTarget | null;
  verify: VerifySource | null;
  /** Replicated writes flow to the peer (it is UpToDate or a SyncTarget). */
  replicating: boolean;
  peerUuids: UuidsPacket | null;
  barrierWaiters: Map<number, Array<(o: PeerOutcome) => void>>;
  /** The resync of this session copies the whole disk. */
  fullSync: boolean;
  /** Highest write sequence applied from the peer in this session. */
  lastSeqApplied: number;
  /**
   * Blocks written by the peer (a Primary) per epoch, not yet confirmed on
   * every data node: they stay marked for the other Secondaries until the
   * Primary's PEERS_IN_SYNC for that epoch.
   */
  unconfirmed: Map<number, Array<{ offset: number; length: number }>>;
  /** Our two-phase changes waiting for this peer's answer: txId -> waiter. */
  twopcWaiters: Map<number, (a: TwopcAnswer | null) => void>;
  /** Our reads served by the peer (we are diskless): id -> waiter. */
  remoteReads: Map<number, { resolve: (b: Buffer) => void; reject: (e: Error) => void; length: number }>;
  pingTimer: NodeJS.Timeout | null;
  pingDeadline: NodeJS.Timeout | null;
  lastHeardMs: number;
  closed: boolean;
  /** The handshake finished and the session started: the peer was really there. */
  established: boolean;
}

export interface PeerStatusFacts {
  node: string;
  nodeId: number;
  connection: ConnectionState;
  replication: ReplicationState;
  role: WireRole | 'Unknown';
  peerDisk: WireDiskState | 'DUnknown';
  outOfSyncBytes: number;
  resync: ResyncProgress | null;
  /** The running or last finished online verify. */
  verify: VerifyProgress | null;
  lastDecision: string | null;
  lastError: string | null;
  splitBrain: boolean;
  /** The peer said it was going down (it does not count against quorum while away). */
  leftGracefully: boolean;
  /** The peer has no disk by configuration (a witness: it votes, stores nothing). */
  diskless: boolean;
  bytesSent: number;
  bytesReceived: number;
}

export class Peer {
  private connection: ConnectionState = 'StandAlone';
  private replication: ReplicationState = 'Off';
  private peerRole: WireRole | 'Unknown' = 'Unknown';
  private peerDisk: WireDiskState | 'DUnknown' = 'DUnknown';
  private session: Session | null = null;
  /** Accepted channels waiting for their twin, by session id. */
  private readonly halfOpen = new Map<bigint, { ch: PeerChannel; opened: OpenedChannel; timer: NodeJS.Timeout }>();
  private dialTimer: NodeJS.Timeout | null = null;
  private dialing = false;
  private lastDecision: string | null = null;
  private lastVerify: VerifyProgress | null = null;
  /** The data size both sides work with, from the last handshake (the smaller disk). */
  private agreedSizeBytes = 0;
  /** The largest payload both sides accept (resync requests stay within it). */
  private agreedMaxPayloadBytes = DEFAULT_RESYNC_REQUEST_BYTES;
  private nextReadId = 1;
  private lastError: string | null = null;
  private splitBrain = false;
  private leftGracefully = false;
  /** `connect --discard-my-data`: this node yields the next split brain; cleared once connected. */
  private discardMyData = false;
  private bytesSentTotal = 0;
  private bytesReceivedTotal = 0;
  private readonly log: Logger;
  readonly protocol: ReplicationProtocol;

  constructor(private readonly o: PeerOptions) {
    this.log = o.log.child({ peer: o.peer.name });
    this.protocol = o.net.protocol;
  }

  get nodeId(): number {
    return this.o.peer.nodeId;
  }

  get name(): string {
    return this.o.peer.name;
  }

  private get dials(): boolean {
    return this.o.self.nodeId < this.o.peer.nodeId;
  }

  // --- connection lifecycle ----------------------------------------------------

  connect(opts: { discardMyData?: boolean } = {}): void {
    if (opts.discardMyData) this.discardMyData = true;
    if (this.connection !== 'StandAlone') return;
    this.splitBrain = false;
    this.setConnection('Connecting');
    if (this.dials) this.scheduleDial(0);
  }

  /** To StandAlone: the session ends and nobody redials until `connect`. */
  async disconnect(reason = 'disconnect requested'): Promise<void> {
    this.clearDial();
    this.discardMyData = false;
    for (const h of this.halfOpen.values()) {
      clearTimeout(h.timer);
      h.ch.close(reason);
    }
    this.halfOpen.clear();
    if (this.session) await this.endSession(this.session, reason);
    if (this.connection !== 'StandAlone') this.setConnection('StandAlone');
  }

  /** Drop the session and decide again (after a change of UUIDs or disk state). */
  async renegotiate(why: string): Promise<void> {
    if (this.session) await this.endSession(this.session, `${RENEGOTIATE_PREFIX}${why}`);
  }

  private setConnection(to: ConnectionState): void {
    const from = this.connection;
    this.connection = transitionConnection(from, to);
    if (from !== to) {
      this.log.info({ from, to }, 'connection state');
      this.o.onEvent?.({ type: 'connection', from, to });
      this.o.hooks?.changed();
    }
  }

  private setReplication(to: ReplicationState): void {
    const from = this.replication;
    this.replication = transitionReplication(from, to);
    if (from !== to) {
      this.log.info({ from, to }, 'replication state');
      this.o.onEvent?.({ type: 'replication', from, to });
      this.o.hooks?.changed();
    }
  }

  private clearDial(): void {
    if (this.dialTimer) clearTimeout(this.dialTimer);
    this.dialTimer = null;
  }

  private scheduleDial(delayMs: number): void {
    this.clearDial();
    if (this.connection !== 'Connecting' || !this.dials) return;
    this.dialTimer = setTimeout(() => void this.dial(), delayMs);
    this.dialTimer.unref();
  }

  private async dial(): Promise<void> {
    this.dialTimer = null;
    if (this.dialing || this.session || this.connection !== 'Connecting') return;
    const addr = this.o.peer.address;
    if (!addr) return;
    this.dialing = true;
    const sessionId = newSessionId();
    const opened: PeerChannel[] = [];
    try {
      const data = await this.dialChannel(addr.host, addr.port, 'data', sessionId);
      opened.push(data.ch);
      const meta = await this.dialChannel(addr.host, addr.port, 'meta', sessionId);
      opened.push(meta.ch);
      this.dialing = false;
      if (this.connection !== 'Connecting') throw new Error('no longer connecting');
      await this.runSession(sessionId, data.ch, meta.ch, data.opened.features);
    } catch (e) {
      this.dialing = false;
      for (const ch of opened) ch.close((e as Error).message);
      const msg = (e as Error).message;
      if (this.lastError !== msg) this.log.info({ reason: msg }, 'could not connect; will retry');
      this.lastError = msg;
      this.scheduleDial(this.o.net.connectIntMs);
    }
  }

  private dialChannel(host: string, port: number, channel: Channel, sessionId: bigint): Promise<{ ch: PeerChannel; opened: OpenedChannel }> {
    return new Promise((resolve, reject) => {
      const t = this.o.tls;
      // Peers are authenticated by the CA (when given) and always by the
      // shared-secret HMAC; host names do not identify them.
      // From our own configured address, as DRBD binds it: the peer admits
      // connections only from the addresses of its peers, and a host with
      // several addresses could otherwise route from another one.
      const localAddress = sourceAddress(this.o.self.address?.host ?? null, host);
      const socket: net.Socket = t
        ? tls.connect({ socket: net.createConnection({ host, port, localAddress }), key: t.key, cert: t.cert, ca: t.ca, rejectUnauthorized: t.ca !== undefined, checkServerIdentity: () => undefined })
        : net.createConnection({ host, port, localAddress });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connecting to ${host}:${port} timed out`));
      }, this.o.net.timeoutMs);
      timer.unref();
      socket.once('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`connecting to ${host}:${port}: ${e.message}`));
      });
      socket.once(t ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        const ch = new PeerChannel(socket, channel, this.log, this.o.maxPayloadBytes + 64 * 1024);
        openChannel(ch, {
          resource: this.o.port.resource,
          ownNodeId: this.o.self.nodeId,
          secret: this.o.net.sharedSecret ?? '',
          timeoutMs: this.o.net.timeoutMs,
          integrity: this.o.net.dataIntegrityAlg === 'crc32c',
          dial: { channel, sessionId, peerNodeId: this.o.peer.nodeId },
        }).then((opened) => resolve({ ch, opened }), reject);
      });
    });
  }

  /** An authenticated channel the resource's listener accepted for this peer. */
  acceptChannel(ch: PeerChannel, opened: OpenedChannel): void {
    if (this.connection === 'StandAlone' || this.dials) {
      ch.close(this.connection === 'StandAlone' ? `${this.o.self.name} is StandAlone` : 'the lower node-id dials');
      return;
    }
    const twin = this.halfOpen.get(opened.sessionId);
    if (!twin) {
      const timer = setTimeout(() => {
        this.halfOpen.delete(opened.sessionId);
        ch.close('the second channel of the session never came');
      }, this.o.net.timeoutMs);
      timer.unref();
      this.halfOpen.set(opened.sessionId, { ch, opened, timer });
      return;
    }
    clearTimeout(twin.timer);
    this.halfOpen.delete(opened.sessionId);
    if (twin.opened.channel === opened.channel) {
      ch.close('two channels of the same kind');
      twin.ch.close('two channels of the same kind');
      return;
    }
    const data = opened.channel === 'data' ? ch : twin.ch;
    const meta = opened.channel === 'meta' ? ch : twin.ch;
    void (async () => {
      // A new session from the peer replaces an old one (it restarted).
      if (this.session) await this.endSession(this.session, 'the peer opened a new session');
      await this.runSession(opened.sessionId, data, meta, opened.features).catch((e: unknown) => {
        this.lastError = (e as Error).message;
      });
    })();
  }

  // --- the session ---------------------------------------------------------------

  private async runSession(id: bigint, data: PeerChannel, meta: PeerChannel, features: number): Promise<void> {
    const port = this.o.port;
    const s: Session = {
      id,
      data,
      meta,
      features,
      tl: new TransferLog(this.protocol),
      receiver: null,
      source: null,
      target: null,
      verify: null,
      replicating: false,
      peerUuids: null,
      barrierWaiters: new Map(),
      twopcWaiters: new Map(),
      lastSeqApplied: 0,
      fullSync: false,
      unconfirmed: new Map(),
      remoteReads: new Map(),
      pingTimer: null,
      pingDeadline: null,
      lastHeardMs: Date.now(),
      closed: false,
      established: false,
    };
    this.session = s;
    // Both sides must configure it: it is a feature offered only when set.
    const integrity = (features & FEATURES.INTEGRITY_CRC32C) !== 0;
    data.setIntegrity(integrity);
    meta.setIntegrity(integrity);
    data.onClose((r) => void this.endSession(s, r));
    // Until the handshake is done only the data channel ends the session: a
    // peer whose decision ends it (a split brain) closes both channels right
    // after its facts went out on the data channel, and the meta close may be
    // read first; ending the session then would drop those facts unread. The
    // data channel's own close comes after the facts, in order.
    let metaClosed: string | null = null;
    meta.onClose((r) => {
      if (s.established) void this.endSession(s, r);
      else metaClosed = r;
    });
    // A channel that was already closed ended the session just now.
    if (s.closed) return;
    this.leftGracefully = false;
    this.setConnection('Connected');
    this.lastError = null;

    // New application writes wait while the two sides compare notes, so the
    // bitmap we send covers every write the peer will not receive.
    const resume = port.role() === 'Primary' ? await port.freezeWrites() : () => undefined;
    let decision: SyncDecision;
    try {
      const waiter = new PacketWaiter(data);
      const theirs = await exchangeFacts(data, waiter, this.ownFacts(), this.o.net.timeoutMs);
      if (port.role() === 'Primary' && theirs.state.role === 'Primary' && (theirs.uuids.flags & UUID_FLAGS.NO_QUORUM) !== 0 && port.hasQuorum()) {
        // The other Primary lost quorum and steps down on its side; meet it
        // again as a Secondary (no split brain to record).
        resume();
        throw new Error(`${RENEGOTIATE_PREFIX}${this.name} is Primary without quorum and steps down`);
      }
      if (port.role() === 'Primary' && theirs.state.role === 'Primary') {
        // Two Primaries never go on with writes frozen. One that lost quorum
        // (its I/O held) yields to the other and comes back as a Secondary
        // that discards what never reached a quorum.
        resume();
        if (await port.stepDownIfOutvoted(theirs.state.role)) {
          this.discardMyData = true;
          throw new Error(`${RENEGOTIATE_PREFIX}stepped down for ${this.name}, which became Primary while this node had no quorum`);
        }
      }
      decision = this.decide(theirs);
      s.peerUuids = theirs.uuids;
      this.peerRole = theirs.state.role;
      this.peerDisk = theirs.state.disk;
      if (isSplitBrain(decision.strategy)) decision = this.resolveSplitBrain(decision, theirs);
      if (decision.strategy === 'unrelated-data') throw new StandAloneError('unrelated data: the two disks share no history');
      if (theirs.state.role !== 'Primary' && port.role() !== 'Primary' && port.primaryElsewhere(this.nodeId) && (decision.rule === 'dirty-self' || decision.rule === 'dirty-peer')) {
        // Two Secondaries of the same generation beside a Primary: both hold
        // what the Primary holds but for its latest, unconfirmed writes. The
        // older marks are stale (the Primary brought the other one up to date).
        port.settleMarks(this.nodeId);
        decision = { strategy: 'no-sync', rule: 'equal', byUuids: decision };
        this.lastDecision = describeSyncDecision(decision);
      }
      // While a Primary is around, only it is a sync source (its writes and
      // its resync data share one ordered stream): two Secondaries defer a
      // resync between them when either is connected to a Primary. Both
      // sides see both facts (PRIMARY_CONNECTED), so both defer before
      // either acts on the decision — a full-sync target alone would already
      // have taken the source's generation and marked its whole disk.
      // Not a StandAloneError: retried after connect-int, by when the
      // Primary has brought the nodes up to date (then nothing is left).
      if (decision.strategy.startsWith('source') || decision.strategy.startsWith('target')) {
        const secondaries = port.role() !== 'Primary' && theirs.state.role !== 'Primary';
        if (secondaries && port.primaryElsewhere(this.nodeId)) {
          throw new Error(decision.strategy.startsWith('target') ? `resync from ${this.name} deferred: a Primary is connected and syncs this node` : `resync to ${this.name} deferred: the Primary syncs it`);
        }
        if (secondaries && (theirs.uuids.flags & UUID_FLAGS.PRIMARY_CONNECTED) !== 0) {
          throw new Error(`resync with ${this.name} deferred: ${this.name} is connected to a Primary, which syncs both`);
        }
      }
      // A Primary whose own disk is good never takes another node's data; one
      // that attached a disk again (Inconsistent) does, while serving its
      // clients from the peer until the copy is done.
      if (port.role() === 'Primary' && decision.strategy.startsWith('target') && port.disk() === 'UpToDate') {
        throw new StandAloneError('this node is Primary but would have to become SyncTarget; demote it first');
      }
      if (decision.strategy === 'inconsistent-source' && port.role() === 'Primary') {
        throw new StandAloneError('both disks are Inconsistent; no side can be the source');
      }
      const ownBitmap = port.bitmapFor(this.nodeId);
      if (ownBitmap && decision.strategy.endsWith('use-bitmap')) {
        const theirBitmap = await exchangeBitmaps(data, waiter, ownBitmap, this.agreedSizeBytes, this.o.net.timeoutMs);
        ownBitmap.or(theirBitmap);
      }
      if (ownBitmap && decision.strategy.endsWith('full-sync')) {
        // On disk before the first block moves: an interrupted full sync then
        // resumes from what is left (rule equal + inconsistent-peer) instead of
        // trusting a bitmap that never knew about it.
        ownBitmap.setRange(0, this.agreedSizeBytes);
        await port.saveBitmap(this.nodeId);
      }
      if (s.closed) throw new Error('connection lost during the handshake');
      this.discardMyData = false;
      this.startSession(s, decision);
      if (theirs.state.role === 'Primary') port.primaryConnected(this.nodeId);
      for (const p of waiter.rest()) this.onData(s, p);
      if (metaClosed !== null) await this.endSession(s, metaClosed);
    } catch (e) {
      resume();
      const reason = (e as Error).message;
      this.lastError = reason;
      this.log.warn({ reason }, 'handshake failed');
      this.o.onEvent?.({ type: 'handshake-failed', reason, splitBrain: this.splitBrain });
      await this.endSession(s, reason);
      if (e instanceof StandAloneError && this.connection !== 'StandAlone') {
        this.clearDial();
        this.setConnection('StandAlone');
      }
      return;
    }
    resume();
  }

  private ownFacts(): HandshakeFacts {
    const port = this.o.port;
    const side = port.syncSide(this.nodeId);
    const store = port.store();
    let flags = 0;
    const paramsFlags = this.discardMyData ? PARAMS_FLAGS.DISCARD_MY_DATA : 0;
    if (side.flags.consistent) flags |= UUID_FLAGS.CONSISTENT;
    if (side.flags.wasUpToDate) flags |= UUID_FLAGS.WAS_UP_TO_DATE;
    if (side.flags.primary) flags |= UUID_FLAGS.PRIMARY;
    if (side.flags.crashedPrimary) flags |= UUID_FLAGS.CRASHED_PRIMARY;
    if (side.primaryAtSplit) flags |= UUID_FLAGS.PRIMARY_AT_SPLIT;
    if (port.role() === 'Primary' && !port.hasQuorum()) flags |= UUID_FLAGS.NO_QUORUM;
    if (port.role() !== 'Primary' && port.primaryElsewhere(this.nodeId)) flags |= UUID_FLAGS.PRIMARY_CONNECTED;
    return {
      params: {
        kind: 'params',
        protocol: this.protocol,
        flags: paramsFlags,
        csumsAlg: this.o.net.csumsAlg === 'none' ? '' : this.o.net.csumsAlg,
        verifyAlg: this.o.net.verifyAlg,
      },
      sizes: { kind: 'sizes', dataSizeBytes: store?.size ?? 0, maxPayloadBytes: this.o.maxPayloadBytes },
      uuids: {
        kind: 'uuids',
        current: side.current,
        bitmap: side.bitmap,
        history: [side.history[0], side.history[1]],
        flags,
        dirtyBlocks: side.dirtyBlocks,
      },
      state: { kind: 'state', role: port.role(), disk: port.disk() },
    };
  }

  private decide(theirs: HandshakeFacts): SyncDecision {
    const mismatch = paramsMismatch(this.ownFacts().params, theirs.params);
    if (mismatch) throw new StandAloneError(mismatch);
    const own = this.o.port.store()?.size ?? 0;
    // Both sides work with the smaller disk (DRBD's rule). A Primary already
    // exporting more than the peer can hold must not shrink under its clients.
    const sizes = agreeSizes({ dataSizeBytes: own, maxPayloadBytes: this.o.maxPayloadBytes }, theirs.sizes);
    this.agreedMaxPayloadBytes = sizes.maxPayloadBytes;
    if (this.o.port.role() === 'Primary' && this.o.port.exportSize() > sizes.dataSizeBytes) {
      throw new StandAloneError(
        `the peer's disk (${theirs.sizes.dataSizeBytes} bytes) is smaller than what this Primary exports (${this.o.port.exportSize()} bytes)`,
      );
    }
    this.agreedSizeBytes = sizes.dataSizeBytes;
    if (own === 0 || theirs.sizes.dataSizeBytes === 0) {
      // A witness, or a node whose disk is detached: nothing to compare or copy.
      const decision: SyncDecision = { strategy: 'no-sync', rule: 'diskless' };
      this.lastDecision = describeSyncDecision(decision);
      return decision;
    }
    this.o.port.sizeAgreed(this.nodeId, sizes.dataSizeBytes);
    const u = theirs.uuids;
    const peerSide: SyncSide = {
      current: u.current,
      bitmap: u.bitmap,
      history: u.history,
      flags: {
        consistent: (u.flags & UUID_FLAGS.CONSISTENT) !== 0,
        wasUpToDate: (u.flags & UUID_FLAGS.WAS_UP_TO_DATE) !== 0,
        crashedPrimary: (u.flags & UUID_FLAGS.CRASHED_PRIMARY) !== 0,
        primary: (u.flags & UUID_FLAGS.PRIMARY) !== 0,
      },
      dirtyBlocks: u.dirtyBlocks,
    };
    const decision = decideSync({
      local: this.o.port.syncSide(this.nodeId),
      peer: peerSide,
      resolveConflicts: this.o.self.nodeId > this.o.peer.nodeId,
    });
    this.lastDecision = describeSyncDecision(decision);
    this.log.info({ strategy: decision.strategy, rule: decision.rule }, `sync decision: ${this.lastDecision}`);
    this.o.onEvent?.({ type: 'sync-decision', strategy: decision.strategy, rule: decision.rule, byUuids: decision.byUuids ?? null });
    return decision;
  }

  /**
   * A split brain: the operator's `--discard-my-data` or the after-sb policy
   * may name the side that loses its changes (it becomes SyncTarget of the
   * blocks either side changed). Otherwise the connection goes StandAlone.
   * Both nodes run the same pure function on mirrored facts.
   */
  private resolveSplitBrain(decision: SyncDecision, theirs: HandshakeFacts): SyncDecision {
    const own = this.ownFacts();
    const side = (f: HandshakeFacts, node: NodeConfig): AfterSbSide => ({
      nodeId: node.nodeId,
      name: node.name,
      primary: f.state.role === 'Primary',
      changedBlocks: f.uuids.dirtyBlocks,
      primaryAtSplit: (f.uuids.flags & UUID_FLAGS.PRIMARY_AT_SPLIT) !== 0,
      discardMyData: (f.params.flags & PARAMS_FLAGS.DISCARD_MY_DATA) !== 0,
    });
    const r = resolveSplitBrain({
      policies: this.o.net,
      splitBrain: decision.strategy as 'split-brain-auto' | 'split-brain-disconnect',
      local: side(own, this.o.self),
      peer: side(theirs, this.o.peer),
      resolveConflicts: this.o.self.nodeId > this.o.peer.nodeId,
    });
    const detail = `${describeSyncDecision(decision)}; ${describeAfterSb(r)}`;
    this.o.onEvent?.({ type: 'split-brain', outcome: r.outcome, rule: r.rule, policy: r.policy, decision: decision.rule });
    if (r.outcome === 'disconnect') {
      const port = this.o.port;
      if ((port.role() === 'Primary' && !port.hasQuorum()) || (theirs.state.role === 'Primary' && (theirs.uuids.flags & UUID_FLAGS.NO_QUORUM) !== 0)) {
        // One side is a Primary without quorum: it steps down as soon as it
        // meets the Primary that has quorum, and then yields. Try again later
        // instead of leaving this link StandAlone.
        throw new Error(`split brain with a Primary that has no quorum (${detail}); retried after connect-int`);
      }
      this.splitBrain = true;
      this.o.hooks?.splitBrain?.(detail);
      throw new StandAloneError(`split brain detected (${detail}); resolve it before connecting again`);
    }
    this.log.warn({ outcome: r.outcome, rule: r.rule, policy: r.policy }, `split brain resolved: ${detail}`);
    // Bitmaps record both sides' changes only for split-brain-auto.
    const full = decision.strategy === 'split-brain-disconnect';
    const local = r.outcome === 'discard-local';
    const strategy: SyncStrategy = local ? (full ? 'target-full-sync' : 'target-use-bitmap') : full ? 'source-full-sync' : 'source-use-bitmap';
    const resolved: SyncDecision = { strategy, rule: r.policy === 'discard-my-data' ? 'discard-my-data' : 'after-sb-policy', byUuids: decision };
    this.lastDecision = `${describeSyncDecision(resolved)}; ${describeAfterSb(r)}`;
    return resolved;
  }

  private startSession(s: Session, decision: SyncDecision): void {
    s.established = true;
    const port = this.o.port;
    const store = port.store();
    if (store) {
      s.receiver = new Receiver(store, port.applyLock, { send: (p) => this.send(s, p) }, {
        written: (offset, length) => {
          if (s.target) s.target.replicatedWriteApplied(offset, length);
          // A Primary that is our SyncTarget wrote these blocks itself: they
          // need no copying any more.
          else if (s.source) s.source.replicatedWriteAcked(offset, length);
          // A diskless peer writing through us: its own disk misses this.
          else if (this.peerDisk === 'Diskless') port.bitmapFor(this.nodeId)?.setRange(offset, length);
        },
        diskFailed: (op, e) => port.diskFailed(op, e),
      }, this.log);
    }
    s.data.onPacket((p) => this.onData(s, p));
    s.meta.onPacket((p) => this.onMeta(s, p));
    this.startPings(s);
    const role: SyncRole | null = decision.strategy.startsWith('source') ? 'source' : decision.strategy.startsWith('target') ? 'target' : null;
    if (role === null) {
      // Nothing to copy. Marks that are left (both sides had some) stay for
      // the operator: verify and invalidate decide what they mean.
      this.setReplication('Established');
      s.replicating = !this.peerIsWitness && (this.peerDisk === 'UpToDate' || this.peerDisk === 'Consistent' || this.peerDisk === 'Outdated');
      return;
    }
    // A SyncTarget receives replication from the first write on: a write
    // not sent would set a bit here that the target never asks for.
    if (role === 'source') s.replicating = true;
    // A Primary resyncing its own disk writes to its UpToDate source too.
    if (role === 'target' && port.role() === 'Primary') s.replicating = true;
    void this.startResync(s, role, decision.strategy.endsWith('full-sync'));
  }

  private async startResync(s: Session, role: SyncRole, full: boolean): Promise<void> {
    s.fullSync = full;
    const port = this.o.port;
    const store = port.store()!;
    const bitmap = port.bitmapFor(this.nodeId)!;
    // Batches of scattered blocks may come: the store gets ready for them
    // now, in the background, while the target persists Inconsistent.
    if ((s.features & FEATURES.RS_BATCH) !== 0) store.prepareRuns?.();
    if (role === 'source') {
      // Ready before anything is awaited: the target's first requests may
      // already be queued behind the handshake and are handled right after
      // this returns. A source has nothing to persist first.
      this.setReplication('SyncSource');
      // Reads for the copy wait behind the writes that arrived before the
      // request: the application's own (we are Primary) or the Primary's
      // replicated ones (the target is that Primary, resyncing its disk).
      const lock = port.role() === 'Primary' ? port.writeLock : port.applyLock;
      s.source = new ResyncSource(store, bitmap, lock, { send: (p) => this.send(s, p) }, {
        done: () => void this.resyncDone(s, 'source'),
      }, this.log, this.csumsAlg());
      await port.syncStarting(this.nodeId, role, full, 0n);
      return;
    }
    // A target persists Inconsistent before it asks for (and writes) anything.
    await port.syncStarting(this.nodeId, role, full, s.peerUuids?.current ?? 0n);
    if (s.closed) return;
    this.setReplication('SyncTarget');
    // A Primary resyncing its own disk applies copies under the application's
    // write lock: a copy and a write of the same range never overlap.
    const targetLock = port.role() === 'Primary' ? port.writeLock : port.applyLock;
    s.target = new ResyncTarget(store, bitmap, targetLock, { send: (p) => this.send(s, p) },
      {
        rate: this.o.resyncRate,
        csumsAlg: this.csumsAlg(),
        limitBytes: this.agreedSizeBytes,
        requestBytes: Math.min(DEFAULT_RESYNC_REQUEST_BYTES, this.agreedMaxPayloadBytes),
        batch: (s.features & FEATURES.RS_BATCH) !== 0,
      },
      {
        done: () => void this.resyncDone(s, 'target'),
        failed: (reason) => void this.endSession(s, `resync failed: ${reason}`),
      }, this.log);
    s.target.start();
  }

  private csumsAlg(): DigestAlg | null {
    return this.o.net.csumsAlg === 'none' ? null : this.o.net.csumsAlg;
  }

  private async resyncDone(s: Session, role: SyncRole): Promise<void> {
    if (s.closed) return;
    const sourceCurrent = role === 'target' ? (s.peerUuids?.current ?? 0n) : this.o.port.syncSide(this.nodeId).current;
    await this.o.port.syncFinished(this.nodeId, role, sourceCurrent, {
      full: s.fullSync,
      sourcePrimary: this.peerRole === 'Primary',
      unconfirmed: [...s.unconfirmed.values()].flat(),
    });
    if (s.closed) return;
    const progress = s.source?.progress ?? s.target?.progress;
    s.source = null;
    s.target = null;
    this.o.onEvent?.({ type: 'resync-done', role, bytes: progress?.doneBytes ?? 0, ms: progress ? Date.now() - progress.startedAtMs : 0 });
    this.setReplication('Established');
    if (role === 'target') this.send(s, { kind: 'state', role: this.o.port.role(), disk: this.o.port.disk() });
    else this.peerDisk = 'UpToDate';
  }

  private async endSession(s: Session, reason: string): Promise<void> {
    if (s.closed) return;
    s.closed = true;
    if (this.session === s) this.session = null;
    if (s.pingTimer) clearInterval(s.pingTimer);
    if (s.pingDeadline) clearTimeout(s.pingDeadline);
    s.source?.stop();
    s.target?.stop();
    s.verify?.stop();
    for (const w of s.twopcWaiters.values()) w(null);
    s.twopcWaiters.clear();
    this.bytesSentTotal += s.data.bytesSent + s.meta.bytesSent;
    this.bytesReceivedTotal += s.data.bytesReceived + s.meta.bytesReceived;
    // G1: what the peer did not confirm is marked before anyone hears the
    // write completed, and before the connection is let go.
    const wasReplicating = s.replicating;
    s.replicating = false;
    const lost = this.takeUnconfirmed(s);
    for (const r of s.remoteReads.values()) r.reject(Object.assign(new Error(`lost ${this.name} during a read`), { errno: 'EIO' }));
    s.remoteReads.clear();
    s.data.close(reason);
    s.meta.close(reason);
    this.log.info({ reason }, 'session ended');
    if (this.replication !== 'Off') this.setReplication('Off');
    const wasPrimary = this.peerRole === 'Primary';
    this.leftGracefully = reason.includes(LEAVING_PREFIX);
    this.peerRole = 'Unknown';
    this.peerDisk = 'DUnknown';
    this.o.hooks?.twopc.abort(this.nodeId, null);
    // Quorum is recounted here (the hooks), before any write that waited
    // for this peer may complete: a Primary that lost quorum with it holds
    // or fails those writes instead of acknowledging them (G4).
    if (this.connection === 'Connected') this.setConnection('Connecting');
    await this.o.port.peerLost(this.nodeId, wasReplicating).catch((e: unknown) => this.log.error({ err: e }, 'recording the lost peer failed'));
    if (this.connection === 'Connected' && this.session === null) this.setConnection('Connecting');
    // An attempt that never finished its handshake lost nothing (a StandAlone
    // peer turns us away every connect-int): no fencing, no failover.
    if (s.established) this.o.hooks?.lost({ wasPrimary, graceful: this.leftGracefully, reason, lastSeq: s.lastSeqApplied });
    else this.o.hooks?.changed();
    lost.release();
    if (this.connection === 'Connecting' && this.dials) {
      this.scheduleDial(reason.startsWith(RENEGOTIATE_PREFIX) || reason.includes(RENEGOTIATE_PREFIX) ? 0 : this.o.net.connectIntMs);
    }
  }

  // --- traffic -------------------------------------------------------------------

  /** Every packet kind has its channel (wire/packets.ts); this picks it. */
  private send(s: Session, p: Packet): void {
    if (s.closed) return;
    if (specOfKind(p.kind).channel === 'meta') s.meta.send(p);
    else s.data.send(p);
  }

  private onData(s: Session, p: Packet): void {
    s.lastHeardMs = Date.now();
    if (p.kind === 'data' || p.kind === 'zeroes' || p.kind === 'trim') this.notePrimaryWrite(s, p.seq, p.epoch, p.offset, p.kind === 'data' ? dataLength(p) : p.length);
    else if (p.kind === 'peers-in-sync') {
      this.peersInSyncReceived(s, p.epoch);
      return;
    }
    if (s.receiver?.handle(p)) return;
    if (s.source?.handle(p)) return;
    if (s.target?.handle(p)) return;
    if (s.verify?.handle(p)) return;
    switch (p.kind) {
      case 'state':
        this.peerRole = p.role;
        this.peerDisk = p.disk;
        if (p.disk === 'Diskless' && s.replicating) void this.stopReplicatingTo(s, 'the peer detached its disk');
        else if (p.disk === 'UpToDate' && this.replication === 'Established' && !this.peerIsWitness) s.replicating = true;
        this.o.hooks?.changed();
        return;
      case 'data-request':
        void this.serveRead(s, p.id, p.offset, p.length);
        return;
      case 'out-of-sync':
        this.o.port.bitmapFor(this.nodeId)?.setRange(p.offset, p.length);
        return;
      case 'data-reply': {
        const r = s.remoteReads.get(p.id);
        if (!r) return;
        s.remoteReads.delete(p.id);
        if (p.payload.length !== r.length) r.reject(Object.assign(new Error('short remote read'), { errno: 'EIO' }));
        else r.resolve(p.payload);
        return;
      }
      case 'ov-request':
        if (this.replication === 'Established') this.setReplication('VerifyT');
        if (this.o.port.store()) void answerVerify(this.o.port.store()!, this.o.net.verifyAlg, p, { send: (x) => this.send(s, x) });
        return;
      case 'sync-done':
        // the end of a verify we answered, or of a resync that already ended here
        if (this.replication === 'VerifyT') this.setReplication('Established');
        return;
      case 'sync-pause':
        this.pauseLocal(s);
        return;
      case 'sync-resume':
        this.resumeLocal(s);
        return;
      case 'uuids':
        if (p.flags & UUID_FLAGS.ADOPT_CURRENT) void this.adopt(s, p.current);
        else if (p.flags & UUID_FLAGS.NEW_GENERATION) void this.o.port.followGeneration(this.nodeId, p.current, nodeIdsOf(p.dirtyBlocks));
        return;
      default:
        this.log.warn({ kind: p.kind }, 'unexpected packet on the data channel');
    }
  }

  private onMeta(s: Session, p: Packet): void {
    s.lastHeardMs = Date.now();
    switch (p.kind) {
      case 'ping':
        this.send(s, { kind: 'ping-ack' });
        return;
      case 'ping-ack':
        if (s.pingDeadline) clearTimeout(s.pingDeadline);
        s.pingDeadline = null;
        return;
      case 'recv-ack':
        s.tl.received(p.seq);
        return;
      case 'write-ack':
        s.tl.written(p.seq);
        return;
      case 'neg-ack': {
        const r = s.tl.failed(p.seq);
        if (r) this.o.port.bitmapFor(this.nodeId)?.setRange(r.offset, r.length);
        return;
      }
      case 'rs-write-ack':
        s.source?.handle(p);
        return;
      case 'neg-data-reply': {
        const r = s.remoteReads.get(p.id);
        s.remoteReads.delete(p.id);
        r?.reject(Object.assign(new Error(`${this.name} could not read the block (errno ${p.errno})`), { errno: 'EIO' }));
        return;
      }
      case 'rs-is-in-sync':
      case 'neg-rs-reply':
        s.target?.handle(p);
        return;
      case 'twopc-prepare': {
        const hooks = this.o.hooks;
        const progress = { nodeId: p.lostPrimaryNodeId, lastSeq: p.lastSeq };
        const a: TwopcAnswer = hooks ? hooks.twopc.prepare(this.nodeId, p.txId, p.change, progress) : { yes: false, reason: 'not-allowed', primaryNodeId: NO_NODE };
        this.send(s, { kind: 'twopc-reply', txId: p.txId, ...a });
        return;
      }
      case 'twopc-reply': {
        const w = s.twopcWaiters.get(p.txId);
        s.twopcWaiters.delete(p.txId);
        w?.({ yes: p.yes, reason: p.reason, primaryNodeId: p.primaryNodeId });
        return;
      }
      case 'twopc-commit':
        this.o.hooks?.twopc.commit(this.nodeId, p.txId);
        return;
      case 'twopc-abort':
        this.o.hooks?.twopc.abort(this.nodeId, p.txId);
        return;
      case 'barrier-ack': {
        s.tl.barrierDone(p.epoch);
        for (const [epoch, waiters] of s.barrierWaiters) {
          if (epoch <= p.epoch) {
            s.barrierWaiters.delete(epoch);
            for (const w of waiters) w('ok');
          }
        }
        return;
      }
      default:
        this.log.warn({ kind: p.kind }, 'unexpected packet on the meta channel');
    }
  }

  private startPings(s: Session): void {
    s.pingTimer = setInterval(() => {
      if (s.closed) return;
      // ko-count: a peer that has not completed a write for ko-count x timeout
      // is dropped (StandAlone), so one stuck peer cannot hang every write.
      const koMs = this.o.net.koCount * this.o.net.timeoutMs;
      if (koMs > 0 && s.tl.oldestUnansweredMs(Date.now()) > koMs) {
        void this.endSession(s, `ko-count: a write waited more than ${koMs} ms for the peer`).then(() => {
          this.clearDial();
          if (this.connection !== 'StandAlone') this.setConnection('StandAlone');
        });
        return;
      }
      if (s.pingDeadline) return;
      if (Date.now() - s.lastHeardMs < this.o.net.pingIntMs) return;
      this.send(s, { kind: 'ping' });
      s.pingDeadline = setTimeout(() => void this.endSession(s, `no PING_ACK within ${this.o.net.pingTimeoutMs} ms`), this.o.net.pingTimeoutMs);
      s.pingDeadline.unref();
      // Checked four times per ping-int: a silent peer is pinged close to
      // ping-int after it was last heard, not up to a second later.
    }, Math.max(50, Math.min(this.o.net.pingIntMs / 4, 250)));
    s.pingTimer.unref();
  }

  // --- the write path, called by the replicator ----------------------------------

  /** Is the peer taking replicated writes now? */
  replicating(): boolean {
    return this.session?.replicating === true;
  }

  /**
   * Send a write; resolves when the protocol's acknowledgement arrived ('ok'),
   * the peer failed it ('failed', already marked) or the session ended
   * ('lost', already marked). Null when the peer is not replicating: the
   * caller marks the range in the bitmap.
   */
  replicate(w: ReplicatedWrite): Promise<PeerOutcome> | null {
    const s = this.session;
    if (!s || !s.replicating || s.closed) return null;
    let flags = w.fua ? WRITE_FLAGS.FUA : 0;
    if (this.protocol === 'B') flags |= WRITE_FLAGS.SEND_RECV_ACK;
    if (this.protocol === 'C') flags |= WRITE_FLAGS.SEND_WRITE_ACK;
    let done = new Promise<PeerOutcome>((resolve) => s.tl.add(w.seq, w.offset, w.length, w.epoch, resolve));
    if (s.source) {
      const source = s.source;
      done = done.then((outcome) => {
        if (outcome === 'ok' && !s.closed) source.replicatedWriteAcked(w.offset, w.length);
        return outcome;
      });
    }
    switch (w.kind) {
      case 'data':
        s.data.send(
          w.parts !== undefined
            ? { kind: 'data', seq: w.seq, epoch: w.epoch, offset: w.offset, flags, payload: EMPTY_PAYLOAD, parts: w.parts }
            : { kind: 'data', seq: w.seq, epoch: w.epoch, offset: w.offset, flags, payload: w.payload! },
        );
        break;
      case 'zeroes':
        if (w.noHole) flags |= WRITE_FLAGS.NO_HOLE;
        s.data.send({ kind: 'zeroes', seq: w.seq, epoch: w.epoch, offset: w.offset, length: w.length, flags });
        break;
      case 'trim':
        s.data.send({ kind: 'trim', seq: w.seq, epoch: w.epoch, offset: w.offset, length: w.length, flags });
        break;
    }
    return done;
  }

  /**
   * Close an epoch: the peer answers once every write of it (and before) is
   * on its stable storage. Null when the peer is not replicating.
   */
  barrier(epoch: number): Promise<PeerOutcome> | null {
    const s = this.session;
    if (!s || !s.replicating || s.closed) return null;
    const done = new Promise<PeerOutcome>((resolve) => {
      const list = s.barrierWaiters.get(epoch) ?? [];
      list.push(resolve);
      s.barrierWaiters.set(epoch, list);
    });
    s.data.send({ kind: 'barrier', epoch });
    return done;
  }

  // --- operator actions on a connected peer -----------------------------------------

  private established(): Session {
    const s = this.session;
    if (!s || s.closed || this.connection !== 'Connected') {
      throw new MirrorError('ERR_NOT_CONNECTED', `${this.o.port.resource}: not connected to ${this.name}`);
    }
    return s;
  }

  /** Online verify against this peer; the result arrives as an event and in status. */
  startVerify(): void {
    const s = this.established();
    const store = this.o.port.store();
    if (this.replication !== 'Established' || !store || !this.o.port.bitmapFor(this.nodeId)) {
      throw new MirrorError('ERR_ROLE', `${this.o.port.resource}: verify needs an established connection without a resync (now ${this.replication})`);
    }
    this.setReplication('VerifyS');
    s.verify = new VerifySource(store, this.agreedSizeBytes, this.o.port.bitmapFor(this.nodeId)!, this.o.net.verifyAlg, { send: (p) => this.send(s, p) },
      (progress: VerifyProgress) => {
        if (s.closed) return;
        this.lastVerify = { ...progress };
        this.send(s, { kind: 'sync-done' });
        this.setReplication('Established');
        this.o.onEvent?.({ type: 'verify-done', outOfSyncBlocks: progress.outOfSyncBlocks, bytes: progress.totalBytes, ms: Date.now() - progress.startedAtMs });
        void this.o.port.saveBitmap(this.nodeId);
      }, this.log);
    s.verify.start();
  }

  pauseSync(): void {
    const s = this.established();
    if (!s.source && !s.target) throw new MirrorError('ERR_ROLE', `${this.o.port.resource}: no resync with ${this.name} to pause`);
    this.send(s, { kind: 'sync-pause' });
    this.pauseLocal(s);
  }

  resumeSync(): void {
    const s = this.established();
    this.send(s, { kind: 'sync-resume' });
    this.resumeLocal(s);
  }

  private pauseLocal(s: Session): void {
    if (s.target) {
      s.target.pause();
      if (this.replication === 'SyncTarget') this.setReplication('PausedSyncT');
    } else if (s.source) {
      s.source.progress.paused = true;
      if (this.replication === 'SyncSource') this.setReplication('PausedSyncS');
    }
  }

  private resumeLocal(s: Session): void {
    if (s.target) {
      if (this.replication === 'PausedSyncT') this.setReplication('SyncTarget');
      s.target.resume();
    } else if (s.source) {
      s.source.progress.paused = false;
      if (this.replication === 'PausedSyncS') this.setReplication('SyncSource');
    }
  }

  /**
   * G1: every write the peer did not confirm is marked for it, and epochs
   * waiting for it end as lost. The caller releases the writes (returned)
   * once whatever must precede their completion is done.
   */
  private takeUnconfirmed(s: Session): ReturnType<TransferLog['takeLost']> {
    const lost = s.tl.takeLost();
    const bitmap = this.o.port.bitmapFor(this.nodeId);
    for (const r of lost.ranges) bitmap?.setRange(r.offset, r.length);
    for (const waiters of s.barrierWaiters.values()) for (const w of waiters) w('lost');
    s.barrierWaiters.clear();
    return lost;
  }

  /**
   * A UUIDS on an established session: the peer takes `current` (how, the
   * flag says). `dirtyBlocks` carries no count here; a NEW_GENERATION puts
   * the mask of the nodes that miss the generation in it.
   */
  private sendGeneration(s: Session, current: bigint, flags: number, awayMask = 0): void {
    const side = this.o.port.syncSide(this.nodeId);
    this.send(s, {
      kind: 'uuids',
      current,
      bitmap: 0n,
      history: [side.history[0], side.history[1]],
      flags: flags | UUID_FLAGS.CONSISTENT | UUID_FLAGS.WAS_UP_TO_DATE,
      dirtyBlocks: awayMask,
    });
  }

  /** Tell the peer to take `current` as its generation (new-current-uuid). */
  sendAdopt(current: bigint): void {
    this.sendGeneration(this.established(), current, UUID_FLAGS.ADOPT_CURRENT);
  }

  private async adopt(s: Session, current: bigint): Promise<void> {
    if (this.replication !== 'Established') {
      this.log.warn({ replication: this.replication }, 'ignored a generation to adopt outside an established connection');
      return;
    }
    await this.o.port.adoptCurrent(this.nodeId, current);
    if (s.closed) return;
    s.replicating = true;
    this.announceState();
  }

  /**
   * The peer stopped taking replication while connected (it detached its
   * disk): what it did not confirm is marked, exactly as if it were lost.
   */
  private async stopReplicatingTo(s: Session, reason: string): Promise<void> {
    s.replicating = false;
    const lost = this.takeUnconfirmed(s);
    this.log.info({ reason }, 'replication to the peer stopped');
    await this.o.port.peerLost(this.nodeId, true).catch(() => undefined);
    lost.release();
  }

  /** Serve a read of a diskless peer from our disk, after its earlier writes. */
  private async serveRead(s: Session, id: number, offset: number, length: number): Promise<void> {
    const store = this.o.port.store();
    if (!store || this.o.port.disk() !== 'UpToDate' || length <= 0 || offset + length > store.size) {
      this.send(s, { kind: 'neg-data-reply', id, errno: 5 });
      return;
    }
    const release = await this.o.port.applyLock.acquire(offset, length);
    try {
      this.send(s, { kind: 'data-reply', id, offset, payload: await store.read(offset, length) });
    } catch {
      this.send(s, { kind: 'neg-data-reply', id, errno: 5 });
    } finally {
      release();
    }
  }

  /** Tell the peer a range differs between us (our local write of it failed). */
  markOutOfSync(offset: number, length: number): void {
    const s = this.session;
    if (s && !s.closed && s.replicating) this.send(s, { kind: 'out-of-sync', offset, length });
  }

  /** Can this peer serve our reads (we are diskless)? */
  canServeReads(): boolean {
    const s = this.session;
    const r = this.replication;
    // As SyncTarget too: a Primary resyncing its own disk reads from its source.
    return !!s && !s.closed && this.peerDisk === 'UpToDate' && (r === 'Established' || r === 'SyncSource' || r === 'SyncTarget' || r === 'PausedSyncT');
  }

  /** Read from the peer's disk (this node has none). */
  remoteRead(offset: number, length: number): Promise<Buffer> {
    const s = this.session;
    if (!s || s.closed) return Promise.reject(Object.assign(new Error(`not connected to ${this.name}`), { errno: 'EIO' }));
    const id = this.nextReadId++;
    return new Promise((resolve, reject) => {
      s.remoteReads.set(id, { resolve, reject, length });
      this.send(s, { kind: 'data-request', id, offset, length });
    });
  }

  /** We detached our disk: stop applying the peer's writes (it stops sending on our STATE). */
  localDiskGone(): void {
    const s = this.session;
    if (s) s.receiver = null;
    this.announceState();
  }

  /** We attached a disk again: decide anew what it lacks. */
  async localDiskBack(): Promise<void> {
    await this.renegotiate('disk attached');
  }

  /** The peer has no disk by configuration: it votes, never takes data. */
  get peerIsWitness(): boolean {
    return this.o.peer.disk === null;
  }

  /**
   * Ask the peer to agree to a cluster-wide change (two-phase commit, first
   * phase). Null when the session ended or the peer did not answer in time:
   * the caller treats that as "not agreed".
   */
  twopcPrepare(txId: number, change: TwopcChange, timeoutMs: number, progress: LostPrimaryProgress): Promise<TwopcAnswer | null> {
    const s = this.session;
    if (!s || s.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        s.twopcWaiters.delete(txId);
        resolve(null);
      }, timeoutMs);
      timer.unref();
      s.twopcWaiters.set(txId, (a) => {
        clearTimeout(timer);
        resolve(a);
      });
      this.send(s, { kind: 'twopc-prepare', txId, change, initiatorNodeId: this.o.self.nodeId, lostPrimaryNodeId: progress.nodeId, lastSeq: progress.lastSeq });
    });
  }

  /** Second phase: the change happens (commit) or not (abort). */
  twopcFinish(txId: number, commit: boolean): void {
    const s = this.session;
    if (s && !s.closed) this.send(s, { kind: commit ? 'twopc-commit' : 'twopc-abort', txId });
  }

  /**
   * A write from the peer (our Primary) arrives. Until the Primary confirms
   * the epoch reached every data node, the blocks may differ between us and
   * the other Secondaries: if the Primary is lost, they resync among
   * themselves from the newest survivor (the marks say which blocks).
   */
  private notePrimaryWrite(s: Session, seq: number, epoch: number, offset: number, length: number): void {
    if (seq > s.lastSeqApplied) s.lastSeqApplied = seq;
    const others = this.o.port.otherDataPeers(this.nodeId);
    if (others.length === 0 || length === 0) return;
    for (const id of others) this.o.port.bitmapFor(id)?.setRange(offset, length);
    let list = s.unconfirmed.get(epoch);
    if (!list) {
      list = [];
      s.unconfirmed.set(epoch, list);
      // A Primary that never confirms (a data node is away) must not grow
      // this without bound; dropping the oldest keeps its marks set, which
      // only means more to resync later.
      if (s.unconfirmed.size > MAX_UNCONFIRMED_EPOCHS) s.unconfirmed.delete(s.unconfirmed.keys().next().value!);
    }
    list.push({ offset, length });
  }

  private peersInSyncReceived(s: Session, epoch: number): void {
    const others = this.o.port.otherDataPeers(this.nodeId);
    // Only that epoch: an earlier one the Primary never confirmed (a data
    // node was away then) keeps its marks.
    for (const [e, ranges] of s.unconfirmed) {
      if (e !== epoch) continue;
      s.unconfirmed.delete(e);
      for (const id of others) {
        const bm = this.o.port.bitmapFor(id);
        if (bm) for (const r of ranges) bm.clearRange(r.offset, r.length);
      }
    }
  }

  /** As Primary: every data node has every write up to this epoch. */
  peersInSync(epoch: number): void {
    const s = this.session;
    if (s && !s.closed && s.replicating) this.send(s, { kind: 'peers-in-sync', epoch });
  }

  /** Tell the peer our role/disk changed (it shows them in its status). */
  announceState(): void {
    const s = this.session;
    // Not during the handshake: the peer expects its packets in order there
    // (and the handshake carries the state anyway).
    if (s && !s.closed && this.replication !== 'Off') this.send(s, { kind: 'state', role: this.o.port.role(), disk: this.o.port.disk() });
  }

  /** Blocks of this peer's (a Primary's) writes not yet confirmed on every data node. */
  unconfirmedRanges(): Array<{ offset: number; length: number }> {
    return this.session ? [...this.session.unconfirmed.values()].flat() : [];
  }

  /** A write of this node (a Primary resyncing its disk) reached the local disk: a copy in flight for it is stale. */
  localWriteApplied(offset: number, length: number): void {
    this.session?.target?.localWriteApplied(offset, length);
  }

  /** This node is SyncTarget of the peer now. */
  isSyncTarget(): boolean {
    return this.session?.target != null;
  }

  /**
   * As Primary: a new generation started while this peer kept replicating;
   * it takes it too. `awayNodeIds` are the data nodes that miss it: the peer
   * may still reach one of them itself, and must mark the generation for it
   * all the same.
   */
  sendNewGeneration(current: bigint, awayNodeIds: readonly number[]): void {
    const s = this.session;
    if (s && !s.closed && s.replicating) this.sendGeneration(s, current, UUID_FLAGS.NEW_GENERATION | UUID_FLAGS.PRIMARY, nodeMask(awayNodeIds));
  }

  status(): PeerStatusFacts {
    const s = this.session;
    const resync = s?.target?.progress ?? s?.source?.progress ?? null;
    const verify = s?.verify && !s.verify.progress.finished ? s.verify.progress : this.lastVerify;
    return {
      node: this.name,
      nodeId: this.nodeId,
      connection: this.connection,
      replication: this.replication,
      role: this.peerRole,
      peerDisk: this.peerDisk,
      outOfSyncBytes: this.o.port.bitmapFor(this.nodeId)?.bytesOutOfSync() ?? 0,
      resync,
      verify,
      lastDecision: this.lastDecision,
      lastError: this.lastError,
      splitBrain: this.splitBrain,
      leftGracefully: this.leftGracefully,
      diskless: this.peerIsWitness,
      bytesSent: this.bytesSentTotal + (s ? s.data.bytesSent + s.meta.bytesSent : 0),
      bytesReceived: this.bytesReceivedTotal + (s ? s.data.bytesReceived + s.meta.bytesReceived : 0),
    };
  }
}

/** A handshake outcome that must not be retried on its own: the operator decides. */
class StandAloneError extends Error {}

const EMPTY_PAYLOAD = Buffer.alloc(0);

/**
 * The address to dial a peer from: our own configured IP when it is a
 * literal of the peer's family and not a wildcard; otherwise the system
 * chooses (a host name, or a node listening on every address).
 */
export function sourceAddress(own: string | null, peerHost: string): string | undefined {
  if (own === null) return undefined;
  const family = net.isIP(own);
  if (family === 0 || family !== net.isIP(peerHost)) return undefined;
  if (own === '0.0.0.0' || own === '::') return undefined;
  return own;
}

/** Node ids (0..31) as a bit mask, for the away nodes of a NEW_GENERATION. */
function nodeMask(nodeIds: readonly number[]): number {
  return nodeIds.reduce((mask, id) => mask + 2 ** id, 0);
}

/** The node ids of a mask from `nodeMask` (bits beyond node-id 31 are ignored). */
function nodeIdsOf(mask: number): number[] {
  const ids: number[] = [];
  for (let id = 0; id < 32; id++) if (Math.floor(mask / 2 ** id) % 2 === 1) ids.push(id);
  return ids;
}
