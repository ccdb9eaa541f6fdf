/**
 * One resource on this node: its replica (disk and metadata), its role and
 * disk state, its peers, and its NBD export. Every role or disk change goes
 * through the transition functions of states.ts and is persisted in the
 * metadata before it takes effect where a crash could otherwise lose it.
 */
import { randomInt } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import type { NbdAddress, NodeConfig, ResourceConfig } from '../config/model.js';
import { MirrorError } from '../errors.js';
import { formatUuid, newUuid } from '../meta/index.js';
import type { ListenerPolicy } from '../nbd/export.js';
import type { NbdListener, NbdServer } from '../nbd/server.js';
import { LEAVING_PREFIX, Peer, RENEGOTIATE_PREFIX, type LostPrimaryProgress, type TwopcAnswer } from '../replication/peer.js';
import { NO_NODE, type TwopcChange } from '../replication/wire/index.js';
import { chooseCandidate, type CandidateChoice, type NodeView } from '../roles/candidates.js';
import type { HandlerName } from '../config/schema.js';
import { HandlerRunner, fencePeerOutcome, type HandlerResult } from '../roles/handlers.js';
import { calcQuorum, type QuorumResult } from '../roles/quorum.js';
import { IoSuspension } from './io-suspension.js';
import { TwopcLock } from './twopc-lock.js';
import { PeerListener } from '../replication/peer-listener.js';
import { RangeLock } from '../replication/range-lock.js';
import type { ReplicaPort } from '../replication/replica-port.js';
import { ReplicatedStore } from '../replication/replicated-store.js';
import { Replicator } from '../replication/replicator.js';
import { LocalExport, type GateRefusal } from './local-export.js';
import { mdFlagNames, readMdFlags } from './md-flags.js';
import { Replica } from './replica.js';
import {
  demotionRefusal,
  diskStateFromFlags,
  promotionRefusal,
  transitionDisk,
  transitionRole,
  visibleRole,
  type DiskState,
  type Role,
} from './states.js';
import { peerStatus } from './peer-status.js';
import type { ResourceStatus } from './status.js';

export function formatNbdAddress(a: NbdAddress): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** How often a survivor re-checks whether it should take over from a lost Primary. */
const FAILOVER_RETRY_MS = 20;

const EMPTY_IO = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, trims: 0, zeroes: 0, errors: 0 };

/** A state change for the event stream (the daemon adds resource, sequence and time). */
export type ResourceEvent = { type: string; [field: string]: unknown };
export type EmitEvent = (e: ResourceEvent) => void;

export class Resource {
  private role: Role = 'Secondary';
  private disk: DiskState = 'Diskless';
  private replica: Replica | null = null;
  private replicator: Replicator | null = null;
  private exp: LocalExport | null = null;
  private listener: NbdListener | null = null;
  private peerListener: PeerListener | null = null;
  private readonly peers = new Map<number, Peer>();
  private readonly writeLock = new RangeLock();
  private readonly applyLock = new RangeLock();
  private readonly upAtMs = Date.now();
  /** The local disk's data size, from the first attach. */
  private localSizeBytes = 0;
  /** Data sizes agreed with peers (the smaller disk): the export never offers more. */
  private readonly agreedSizes = new Map<number, number>();
  /** Why the role last changed (status, events). */
  private roleReason = 'up';
  /** A peer's promotion this node said yes to (two-phase commit). */
  private readonly twopc: TwopcLock;
  private quorum: QuorumResult = { have: true, votes: 1, needed: 0, voters: 1, reason: 'quorum off' };
  /**
   * `primary --force` without quorum: the operator vouches for this node; it
   * serves as if it had quorum until a real one forms or it is demoted.
   */
  private quorumForced = false;
  private readonly suspension = new IoSuspension();
  /** The Primary was lost without saying goodbye: the survivors may fail over. */
  private failoverWanted = false;
  private failoverTimer: NodeJS.Timeout | null = null;
  private failoverDeadlineMs = 0;
  private lastChoice: CandidateChoice | null = null;
  /** The Primary this node lost, and the last of its writes applied here (failover picks the newest survivor). */
  private lostPrimary: LostPrimaryProgress = { nodeId: NO_NODE, lastSeq: 0 };
  /** A peer refused our promotion because this node holds later writes of the lost Primary: promote ahead of the order. */
  private newestSurvivor = false;
  private readonly handlers: HandlerRunner;

  constructor(
    readonly config: ResourceConfig,
    readonly local: NodeConfig,
    private readonly nbd: NbdServer,
    private readonly log: Logger,
    private readonly emit: EmitEvent = () => undefined,
  ) {
    this.twopc = new TwopcLock(config.options.twopcTimeoutMs, (h) => this.log.warn(h, 'a prepared promotion of a peer timed out; released'));
    this.handlers = new HandlerRunner({
      resource: config.name,
      node: local.name,
      nodeId: local.nodeId,
      handlers: config.handlers,
      timeoutMs: config.options.handlerTimeoutMs,
      onEvent: (e) => this.emit({ ...e }),
    });
  }

  /** Run a configured handler (serialized per resource); logs how it went. */
  private async runHandler(handler: HandlerName, peerNodeId?: number): Promise<HandlerResult> {
    const peerNode = peerNodeId === undefined ? undefined : this.config.nodes.find((n) => n.nodeId === peerNodeId);
    const r = await this.handlers.run(handler, {
      role: visibleRole(this.role),
      disk: this.disk,
      ...(peerNode ? { peer: { name: peerNode.name, nodeId: peerNode.nodeId } } : {}),
    });
    if (r.ran) {
      const ok = r.exitCode === 0 && !r.timedOut;
      this.log[ok ? 'info' : 'warn']({ handler, peer: r.peer, exitCode: r.exitCode, timedOut: r.timedOut, ms: r.ms, output: r.output }, `handler ${handler} ran`);
    }
    return r;
  }

  /** Events from the peers, and the handlers some of them call. */
  private peerEvent(peerNodeId: number, peer: string, e: ResourceEvent): void {
    this.emit({ ...e, peer });
    if (e.type === 'verify-done' && typeof e.outOfSyncBlocks === 'number' && e.outOfSyncBlocks > 0) void this.runHandler('out-of-sync', peerNodeId);
    if (e.type === 'resync-done' && e.role === 'target') void this.runHandler('after-resync-target', peerNodeId);
  }

  private setDisk(to: DiskState, reason: string): void {
    const from = this.disk;
    this.disk = transitionDisk(from, to);
    if (from !== to) {
      this.emit({ type: 'disk', from, to, reason });
      // Every peer, not only the one a resync ran with: they decide from it
      // whether to replicate to this node.
      for (const p of this.peers.values()) p.announceState();
    }
  }

  private setRole(to: Role, reason: string): void {
    const from = this.role;
    this.role = transitionRole(from, to);
    if (from !== to) {
      this.roleReason = reason;
      this.emit({ type: 'role', from, to, reason });
    }
  }

  get name(): string {
    return this.config.name;
  }

  /** Attach the disk, start replication, open the NBD listener. On failure nothing stays open. */
  async up(): Promise<void> {
    try {
      // A witness (`disk none`) has nothing to attach: it connects and votes.
      if (this.local.disk !== null) await this.attach();
      await this.startReplication();
      await this.openListener();
    } catch (e) {
      await this.releaseAll(false);
      throw e;
    }
  }

  private async attach(): Promise<void> {
    if (this.local.disk === null) {
      throw new MirrorError('ERR_BAD_CONFIG', `${this.name}: node ${this.local.name} is diskless (disk none): a witness has no disk to attach`);
    }
    this.setDisk('Attaching', 'attach');
    let replica: Replica;
    try {
      replica = await Replica.attach(this.config, this.local, this.log);
    } catch (e) {
      this.setDisk('Diskless', 'attach failed');
      throw e;
    }
    this.replica = replica;
    if (this.localSizeBytes === 0) this.localSizeBytes = replica.store.size;
    // Never offer more than a peer could hold, even before it is back.
    for (const [id, bytes] of replica.agreedSizes()) if (!this.agreedSizes.has(id)) this.agreedSizes.set(id, bytes);
    if (replica.crashedPrimary) this.log.warn('metadata says the last Primary run did not end cleanly: crashed primary');
    if (this.replicator === null) {
      this.replicator = new Replicator({
        store: () => this.replica?.store ?? null,
        peers: () => [...this.peers.values()],
        bitmapFor: (id) => this.bitmapOf(id),
        writeLock: this.writeLock,
        flushLocal: () => this.replica?.store.flush() ?? Promise.resolve(),
        intent: {
          beginWrite: (offset, length) => this.replica?.al.beginWrite(offset, length) ?? Promise.resolve(),
          endWrite: (offset, length) => this.replica?.al.endWrite(offset, length),
        },
        degradedGate: () => this.degradedGate(),
        beforeLocalWrite: (offset, length) => {
          for (const p of this.peers.values()) p.localWriteApplied(offset, length);
        },
        log: this.log,
      });
      this.exp = new LocalExport(
        this.name,
        this.config.nbd.description ?? `mirrorbd resource ${this.name} on ${this.local.name}`,
        new ReplicatedStore(
          () => this.replica?.store ?? null,
          this.replicator,
          () => [...this.peers.values()].find((p) => p.canServeReads()) ?? null,
          () => this.exportSize(),
          replica.store.capabilities,
          () => this.disk === 'UpToDate',
        ),
        this.config.nbd.maxPayloadBytes,
        {
          refusal: () => this.ioRefusal(),
          suspended: () => this.suspension.wait(),
          ioFailed: (op, e) => this.ioFailed(op, e),
        },
      );
    }
    this.setDisk(diskStateFromFlags(readMdFlags(replica.superblock)), 'metadata flags at attach');
    this.log.info({ disk: this.disk, sizeBytes: replica.store.size }, 'disk attached');
  }

  /**
   * A write some peer did not confirm (it was lost meanwhile). With quorum
   * it completes; without, it waits for quorum (suspend-io) or fails
   * (io-error) — and fails after all if this node stepped down meanwhile,
   * because then it never reached a quorum and is discarded.
   */
  private degradedGate(): Promise<void> | null {
    if (this.quorum.have) return null;
    const failed = (message: string, errno: string): Error => Object.assign(new Error(message), { errno });
    if (this.config.options.onNoQuorum === 'io-error') {
      return Promise.reject(failed(`${this.name}: no quorum on ${this.local.name}; the write reached no quorum (on-no-quorum io-error)`, 'EIO'));
    }
    const held = this.suspension.wait() ?? Promise.resolve();
    return held.then(() => {
      if (visibleRole(this.role) !== 'Primary' || !this.quorum.have) {
        throw failed(`${this.name}: ${this.local.name} stepped down before the write reached a quorum`, 'ESHUTDOWN');
      }
    });
  }

  private bitmapOf(peerNodeId: number) {
    const r = this.replica;
    return r && r.hasBitmapFor(peerNodeId) ? r.bitmapFor(peerNodeId) : null;
  }

  /**
   * A full sync from the Primary marked every block for every other peer
   * (nothing here was known good). Now this disk holds what the Primary
   * holds, and so does every other UpToDate Secondary of it: only the
   * Primary's writes not yet confirmed on every node may differ between us.
   */
  private settleMarksAfterFullSync(sourceId: number, unconfirmed: ReadonlyArray<{ offset: number; length: number }>): void {
    for (const p of this.peers.values()) {
      const st = p.status();
      if (p.nodeId === sourceId || p.peerIsWitness || st.connection !== 'Connected') continue;
      // An Inconsistent peer keeps its own marks for us (a full sync marks
      // everything), so the union at any later handshake still covers all.
      const settled = (st.peerDisk === 'UpToDate' && st.replication === 'Established') || st.peerDisk === 'Inconsistent';
      if (!settled) continue;
      const bm = this.bitmapOf(p.nodeId);
      if (!bm) continue;
      bm.clearAll();
      for (const r of unconfirmed) bm.setRange(r.offset, r.length);
    }
  }

  private exportSize(): number {
    return Math.min(this.localSizeBytes, ...this.agreedSizes.values());
  }

  /** errno values that mean the disk itself failed, not a bad request. */
  private static readonly DISK_FAILURES = new Set(['EIO', 'ENXIO', 'ENODEV', 'EROFS', 'EBADF', 'EUCLEAN']);

  private ioFailed(op: string, e: unknown): void {
    const errno = (e as { errno?: unknown }).errno;
    this.log.warn({ op, errno, err: (e as Error).message }, 'I/O failed');
    if (typeof errno === 'string' && Resource.DISK_FAILURES.has(errno) && this.replica) void this.diskError(op, errno);
  }

  /** on-io-error: detach a failing disk; a Primary keeps serving through an UpToDate peer. */
  private async diskError(op: string, errno: string): Promise<void> {
    if (this.config.disk.onIoError !== 'detach' || this.disk === 'Failed' || !this.replica) return;
    this.log.error({ op, errno }, 'the local disk failed: detaching it (on-io-error detach)');
    this.setDisk('Failed', `${op} failed with ${errno}`);
    await this.detachNow(false).catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'detach after a disk error failed'));
  }

  /** `detach`: the node goes on without its disk (a Primary serves through an UpToDate peer). */
  async detach(): Promise<void> {
    if (!this.replica) throw new MirrorError('ERR_NOT_UP', `${this.name} has no disk attached on ${this.local.name}`);
    if (this.role === 'Primary' && !this.connectedPeers().some((p) => p.canServeReads())) {
      throw new MirrorError('ERR_NOT_CONNECTED', `${this.name} is Primary and no UpToDate peer could serve its data; demote first or connect a peer`);
    }
    await this.detachNow(true);
  }

  private async detachNow(clean: boolean): Promise<void> {
    const replica = this.replica;
    if (!replica) return;
    const resume = this.replicator ? await this.replicator.freeze() : () => undefined;
    try {
      // This copy misses every write from now on: it comes back Inconsistent
      // and takes what the peers marked for it while it was away.
      if (clean) await replica.change({ consistent: false }).catch(() => undefined);
      this.replica = null;
      await replica.close(clean);
      this.setDisk('Diskless', clean ? 'detach' : 'detach after a disk error');
      for (const p of this.peers.values()) p.localDiskGone();
    } finally {
      resume();
    }
  }

  /** `attach` after a detach: the disk comes back and resyncs what it missed. */
  async reattach(): Promise<void> {
    if (this.replica) throw new MirrorError('ERR_ALREADY_UP', `${this.name} already has its disk attached on ${this.local.name}`);
    // A Primary may attach again: its disk comes back Inconsistent and is
    // resynced from an UpToDate peer while that peer serves its reads.
    if (this.role === 'Primary' && !this.connectedPeers().some((p) => p.canServeReads())) {
      throw new MirrorError('ERR_NOT_CONNECTED', `${this.name} is Primary and no UpToDate peer could resync its disk; demote it first or connect a peer`);
    }
    await this.attach();
    // Whatever its flags say, a disk that was away missed what was written
    // meanwhile (a failed disk never got to record that): it is Inconsistent
    // until the peers' bitmaps have been copied to it.
    await this.requireReplica().change({ consistent: false });
    if (this.disk !== 'Inconsistent') this.setDisk('Inconsistent', 'attached again: resyncs what it missed');
    for (const p of this.peers.values()) await p.localDiskBack();
  }

  private port(): ReplicaPort {
    const replica = (): Replica => {
      if (!this.replica) throw new MirrorError('ERR_NOT_UP', `${this.name} has no disk attached`);
      return this.replica;
    };
    return {
      resource: this.name,
      ownNodeId: this.local.nodeId,
      store: () => this.replica?.store ?? null,
      role: () => visibleRole(this.role),
      disk: () => this.disk,
      syncSide: (id) =>
        this.replica?.syncSide(id, visibleRole(this.role) === 'Primary') ?? {
          current: 0n,
          bitmap: 0n,
          history: [0n, 0n],
          flags: { consistent: false, wasUpToDate: false, crashedPrimary: false, primary: false },
          dirtyBlocks: 0,
        },
      bitmapFor: (id) => this.bitmapOf(id),
      writeLock: this.writeLock,
      applyLock: this.applyLock,
      freezeWrites: () => this.replicator!.freeze(),
      syncStarting: async (id, role, full, sourceCurrent) => {
        if (role === 'target') {
          // e.g. snapshot the disk, so a copy that is consistent survives the resync
          await this.runHandler('before-resync-target', id);
          // G6: a SyncTarget is Inconsistent until the end, on disk too.
          if (full && sourceCurrent !== 0n) await replica().beginFullSyncTarget(sourceCurrent);
          else await replica().change({ consistent: false });
          this.setDisk('Inconsistent', 'resync target');
        }
      },
      syncFinished: async (id, role, sourceCurrent, after) => {
        if (role === 'target') {
          await replica().adoptGeneration(sourceCurrent, id);
          if (after.full && after.sourcePrimary) this.settleMarksAfterFullSync(id, after.unconfirmed);
          this.setDisk('UpToDate', 'resync finished');
        } else {
          await replica().bitmapClean(id);
        }
        await replica().saveBitmap(id);
      },
      peerLost: async (id, wasReplicating) => {
        if (!this.replica) return;
        // The peer misses every write from now on: a new generation makes
        // the next handshake see that (DESIGN, the write path, step 6).
        if (visibleRole(this.role) === 'Primary' && wasReplicating) {
          await this.replica.newGenerationFor([id], true);
          // The peers still replicating have the same data: they take the
          // generation too, or they would look older than it later.
          const current = this.replica.superblock.currentUuid;
          const receivers = [...this.peers.values()].filter((p) => p.nodeId !== id && p.replicating());
          const missing = this.dataNodesBut(receivers);
          for (const p of receivers) p.sendNewGeneration(current, missing);
        }
        await this.replica.saveBitmap(id);
      },
      diskFailed: (op, e) => this.ioFailed(`replicated ${op}`, e),
      saveBitmap: (id) => replica().saveBitmap(id),
      primaryElsewhere: (except) => this.connectedPeers().some((p) => p.nodeId !== except && p.status().role === 'Primary' && p.status().replication !== 'Off'),
      settleMarks: (peerId) => {
        const primary = this.connectedPeers().find((p) => p.status().role === 'Primary' && p.status().replication !== 'Off');
        const bm = this.bitmapOf(peerId);
        if (!primary || !bm) return;
        bm.clearAll();
        for (const r of primary.unconfirmedRanges()) bm.setRange(r.offset, r.length);
      },
      primaryConnected: (primaryId) => {
        for (const p of this.peers.values()) {
          if (p.nodeId !== primaryId && p.isSyncTarget() && p.status().role !== 'Primary') void p.renegotiate('a Primary is connected: it syncs this node');
        }
      },
      followGeneration: async (from, current, awayFromPrimary) => {
        if (!this.replica || this.disk !== 'UpToDate') return;
        // Both the peers this node does not reach and those the Primary does
        // not: a peer still connected here but cut off from the Primary
        // misses the generation just the same.
        const unreachable = [...this.peers.values()]
          .filter((p) => p.nodeId !== from && !p.peerIsWitness && (p.status().replication === 'Off' || awayFromPrimary.includes(p.nodeId)))
          .map((p) => p.nodeId);
        await this.replica.followGeneration(current, unreachable);
        this.log.info({ current: current.toString(16), from }, 'took the new generation of the Primary');
      },
      hasQuorum: () => this.quorum.have,
      otherDataPeers: (except) =>
        this.config.nodes
          .filter((n) => n.disk !== null && n.nodeId !== this.local.nodeId && n.nodeId !== except && this.bitmapOf(n.nodeId) !== null)
          .map((n) => n.nodeId),
      stepDownIfOutvoted: async (peerRole) => {
        if (peerRole !== 'Primary' || visibleRole(this.role) !== 'Primary' || this.quorum.have) return false;
        this.log.warn('this Primary lost quorum and the peer is Primary: stepping down, yielding the writes that never reached a quorum');
        await this.secondary(true, 'outvoted: another node became Primary while this one had no quorum');
        // Every data peer gets this node back as one that yields: its
        // changes since the split never reached a quorum.
        for (const p of this.peers.values()) if (!p.peerIsWitness) p.connect({ discardMyData: true });
        return true;
      },
      exportSize: () => this.exportSize(),
      sizeAgreed: (id, bytes) => {
        this.agreedSizes.set(id, bytes);
        void this.replica?.saveAgreedSize(id, bytes).catch((e: unknown) => this.log.warn({ err: (e as Error).message }, 'could not save the agreed size'));
      },
      adoptCurrent: async (id, current) => {
        const r = replica();
        await r.adoptGeneration(current, id);
        r.bitmapFor(id).clearAll();
        await r.saveBitmap(id);
        if (this.disk !== 'UpToDate') this.setDisk('UpToDate', 'new-current-uuid from the peer');
      },
    };
  }

  private async startReplication(): Promise<void> {
    // Every other node, witnesses included: a full mesh.
    const others = this.config.nodes.filter((n) => n.name !== this.local.name && n.address !== null);
    if (others.length === 0) return;
    if (this.local.address === null) {
      throw new MirrorError('ERR_BAD_CONFIG', `${this.name}: node ${this.local.name} needs an address to replicate with ${others.map((n) => n.name).join(', ')}`);
    }
    if (this.config.net.sharedSecret === null) this.log.warn('no shared-secret: peers are not authenticated');
    const port = this.port();
    const net = this.config.net;
    const tls = net.tls
      ? { key: (await readPem(net.tlsKeyFile))!, cert: (await readPem(net.tlsCertFile))!, ca: await readPem(net.tlsCaFile) }
      : null;
    for (const n of others) {
      this.peers.set(
        n.nodeId,
        new Peer({
          port,
          self: this.local,
          peer: n,
          net: this.config.net,
          resyncRate:
            this.config.disk.cPlanAheadMs > 0
              ? {
                  kind: 'dynamic',
                  planAheadMs: this.config.disk.cPlanAheadMs,
                  delayTargetMs: this.config.disk.cDelayTargetMs,
                  minBytesPerSec: this.config.disk.cMinRateBytesPerSec,
                  maxBytesPerSec: this.config.disk.cMaxRateBytesPerSec,
                }
              : { kind: 'fixed', bytesPerSec: this.config.disk.resyncRateBytesPerSec },
          maxPayloadBytes: this.config.nbd.maxPayloadBytes,
          log: this.log,
          onEvent: (e) => this.peerEvent(n.nodeId, n.name, e),
          tls,
          hooks: {
            changed: () => this.clusterChanged(),
            lost: (info) => this.peerGone(n.nodeId, n.name, info),
            splitBrain: () => void this.runHandler('split-brain', n.nodeId),
            twopc: {
              prepare: (from, txId, change, progress) => this.twopcPrepare(from, txId, change, progress),
              commit: (from, txId) => this.twopcDone(from, txId, true),
              abort: (from, txId) => this.twopcDone(from, txId, false),
            },
          },
        }),
      );
    }
    this.peerListener = new PeerListener({
      address: this.local.address,
      peerAddresses: others.flatMap((n) => (n.address === null ? [] : [n.address])),
      resource: this.name,
      ownNodeId: this.local.nodeId,
      secret: this.config.net.sharedSecret ?? '',
      integrity: this.config.net.dataIntegrityAlg === 'crc32c',
      timeoutMs: this.config.net.timeoutMs,
      maxPacketBytes: this.config.nbd.maxPayloadBytes + 64 * 1024,
      peers: this.peers,
      log: this.log,
      tls,
    });
    await this.peerListener.listen();
    for (const p of this.peers.values()) p.connect();
    this.clusterChanged();
  }

  private async openListener(): Promise<void> {
    const addr = this.local.nbdAddress;
    if (addr === null || this.exp === null) return;
    const policy: ListenerPolicy = {
      tls: this.config.nbd.tls,
      allow: this.config.nbd.allow,
      tlsKey: await readPem(this.config.nbd.tlsKeyFile),
      tlsCert: await readPem(this.config.nbd.tlsCertFile),
      tlsCa: await readPem(this.config.nbd.tlsCaFile),
    };
    this.listener = await this.nbd.listen(addr, policy, [this.exp]);
    this.log.info({ address: formatNbdAddress(addr) }, 'NBD listener open');
  }

  /** Why a client may not use the export now; null for a Primary with a usable disk. */
  private ioRefusal(): GateRefusal | null {
    if (this.role !== 'Primary') {
      const primary = [...this.peers.values()].find((p) => p.status().role === 'Primary');
      return {
        errno: 'ESHUTDOWN',
        message: `${this.name} is ${this.role} on ${this.local.name}; ${primary ? `the Primary is ${primary.name}` : 'no Primary is known'}`,
      };
    }
    if (!this.quorum.have && this.config.options.onNoQuorum === 'io-error') {
      return { errno: 'EIO', message: `${this.name} on ${this.local.name} has no quorum (${this.quorum.reason}); on-no-quorum io-error` };
    }
    if (this.disk === 'UpToDate') return null;
    // Without a usable disk of our own (detached, or failing and about to
    // be detached) an UpToDate peer serves the data.
    // So does a disk attached again and being resynced (Inconsistent).
    if ((this.disk === 'Diskless' || this.disk === 'Failed' || this.disk === 'Inconsistent') && [...this.peers.values()].some((p) => p.canServeReads())) return null;
    return { errno: 'ESHUTDOWN', message: `${this.name} on ${this.local.name} has disk ${this.disk} and no UpToDate peer to serve it` };
  }

  // --- quorum and automatic failover ---------------------------------------------------

  /** A connection or a peer's role/disk changed: quorum, suspension and failover follow. */
  private clusterChanged(): void {
    const before = this.quorum;
    const peers = [...this.peers.values()];
    this.quorum = calcQuorum({
      setting: this.config.options.quorum,
      selfId: this.local.nodeId,
      nodes: this.config.nodes.map((n) => ({ nodeId: n.nodeId, diskless: n.disk === null })),
      // A peer counts once its handshake is done: a node that returns is
      // not a vote before both sides agreed how their data relates.
      reachable: peers.filter((p) => p.status().connection === 'Connected' && p.status().replication !== 'Off').map((p) => p.nodeId),
      leftGracefully: peers.filter((p) => p.status().leftGracefully).map((p) => p.nodeId),
      hadQuorum: before.have,
    });
    if (before.have !== this.quorum.have) {
      this.log[this.quorum.have ? 'info' : 'warn']({ reason: this.quorum.reason }, this.quorum.have ? 'quorum regained' : 'quorum lost');
      this.emit({ type: 'quorum', have: this.quorum.have, votes: this.quorum.votes, needed: this.quorum.needed, reason: this.quorum.reason });
      if (!this.quorum.have && visibleRole(this.role) === 'Primary') void this.runHandler('quorum-lost');
    }
    if (this.quorum.have || this.role === 'Secondary') this.quorumForced = false;
    if (this.quorumForced) this.quorum = { ...this.quorum, have: true, reason: `${this.quorum.reason}; forced by primary --force` };
    if (this.quorum.have) this.suspension.resume('no quorum');
    else if (this.role === 'Primary' && this.config.options.onNoQuorum === 'suspend-io') this.suspension.suspend('no quorum');
    if (peers.some((p) => p.status().connection === 'Connected' && p.status().role === 'Primary')) {
      this.failoverWanted = false;
      this.cancelFailover();
    }
    if (this.failoverWanted) this.scheduleFailover(0);
  }

  /** A peer's session ended. A Primary that vanished without a goodbye may be failed over. */
  private peerGone(peerNodeId: number, peer: string, info: { wasPrimary: boolean; graceful: boolean; reason: string; lastSeq: number }): void {
    // A session dropped to decide again (invalidate, attach, a new
    // generation) is back at once: not a lost peer to fence or fail over.
    if (info.reason.includes(RENEGOTIATE_PREFIX)) {
      this.clusterChanged();
      return;
    }
    if (info.wasPrimary) {
      this.lostPrimary = { nodeId: peerNodeId, lastSeq: info.lastSeq };
      this.newestSurvivor = false;
    }
    if (!info.graceful && visibleRole(this.role) === 'Primary' && this.config.net.fencing !== 'dont-care' && this.config.nodes.find((n) => n.nodeId === peerNodeId)?.disk !== null) {
      void this.fencePeer(peerNodeId, peer);
    }
    if (info.wasPrimary && !info.graceful && this.config.options.autoPromote && this.config.options.quorum !== 'off') {
      this.log.warn({ peer, reason: info.reason }, 'lost the Primary: automatic failover may promote a survivor');
      this.failoverWanted = true;
      // Survivors learn of the loss at slightly different moments (a reset
      // at once, a silent partition only after ping-timeout): keep trying
      // while that can still settle.
      const net = this.config.net;
      this.failoverDeadlineMs = Date.now() + 2 * (net.pingIntMs + net.pingTimeoutMs) + net.timeoutMs;
    }
    this.clusterChanged();
  }

  /**
   * fencing: a Primary lost a data peer. The fence-peer handler reaches it
   * another way (e.g. `mirrorbd outdate` over ssh) so that it cannot be
   * promoted; with resource-and-stonith, I/O waits for that answer and stays
   * suspended when the handler fails (until `resume-io`).
   */
  private async fencePeer(peerNodeId: number, peer: string): Promise<boolean> {
    const reason = `fencing ${peer}`;
    // Only a Primary has I/O to hold; a node about to be promoted waits anyway.
    const stonith = this.config.net.fencing === 'resource-and-stonith' && visibleRole(this.role) === 'Primary';
    if (stonith) this.suspension.suspend(reason);
    const r = await this.runHandler('fence-peer', peerNodeId);
    const outcome = r.ran ? fencePeerOutcome(r.timedOut ? null : r.exitCode) : 'failed';
    const fenced = outcome === 'peer-outdated' || outcome === 'peer-fenced' || outcome === 'peer-inconsistent';
    this.emit({ type: 'fence-peer', peer, outcome, fenced });
    if (fenced || !stonith) this.suspension.resume(reason);
    else this.log.error({ peer, outcome }, 'fence-peer failed: I/O stays suspended until resume-io');
    return fenced;
  }

  /** `resume-io`: the operator lifts a suspension that fencing left (never one for lack of quorum). */
  resumeIo(): void {
    const fencing = this.suspension.why().filter((r) => r.startsWith('fencing '));
    if (fencing.length === 0) throw new MirrorError('ERR_ROLE', `${this.name}: I/O is not suspended by fencing on ${this.local.name}`);
    for (const r of fencing) this.suspension.resume(r);
  }

  /** `outdate`: this node's data may not be promoted without --force (what a fence-peer handler calls). */
  async outdate(): Promise<void> {
    const replica = this.requireReplica();
    if (this.role !== 'Secondary') throw new MirrorError('ERR_ROLE', `${this.name} is ${this.role} on ${this.local.name}; only a Secondary can be outdated`);
    if (this.disk !== 'UpToDate' && this.disk !== 'Consistent') return;
    await replica.change({ consistent: true, wasUpToDate: false });
    this.setDisk('Outdated', 'outdate');
    for (const p of this.peers.values()) p.announceState();
  }

  private cancelFailover(): void {
    if (this.failoverTimer) clearTimeout(this.failoverTimer);
    this.failoverTimer = null;
  }

  private scheduleFailover(delayMs: number): void {
    if (this.failoverTimer) return;
    this.failoverTimer = setTimeout(() => {
      this.failoverTimer = null;
      void this.tryFailover();
    }, delayMs);
    this.failoverTimer.unref();
  }

  /** The views of every node this one knows, for the candidate choice. */
  private nodeViews(): NodeView[] {
    return this.config.nodes.map((n): NodeView => {
      if (n.nodeId === this.local.nodeId) {
        return { nodeId: n.nodeId, name: n.name, disk: this.disk, role: visibleRole(this.role), connected: true, hasDisk: n.disk !== null };
      }
      const st = this.peers.get(n.nodeId)?.status();
      return {
        nodeId: n.nodeId,
        name: n.name,
        disk: st?.peerDisk ?? 'DUnknown',
        role: st?.role ?? 'Unknown',
        connected: st?.connection === 'Connected',
        hasDisk: n.disk !== null,
      };
    });
  }

  private async tryFailover(): Promise<void> {
    if (!this.failoverWanted || this.role !== 'Secondary') return;
    const choice = chooseCandidate({ selfId: this.local.nodeId, nodes: this.nodeViews() });
    this.lastChoice = choice;
    const first = choice.promoteSelf || (this.newestSurvivor && choice.primary === null && this.disk === 'UpToDate');
    if (!first || !this.quorum.have) {
      if (Date.now() < this.failoverDeadlineMs) this.scheduleFailover(FAILOVER_RETRY_MS);
      return;
    }
    try {
      const why = choice.promoteSelf ? choice.reason : 'this node holds the latest writes of the lost Primary';
      await this.primary(false, `auto-promote: ${why}`);
      this.emit({ type: 'failover', candidates: choice.candidates.map((c) => c.name) });
      this.log.warn('automatic failover: this node is Primary now');
    } catch (e) {
      this.log.info({ err: (e as Error).message }, 'automatic failover: promotion refused for now');
      if (this.failoverWanted && Date.now() < this.failoverDeadlineMs) this.scheduleFailover(FAILOVER_RETRY_MS);
    }
  }

  private connectedPeers(): Peer[] {
    return [...this.peers.values()].filter((p) => p.status().connection === 'Connected');
  }

  /** The other data nodes of the resource except `receivers`: the ones a new generation is new to. */
  private dataNodesBut(receivers: readonly Peer[]): number[] {
    return this.config.nodes
      .filter((n) => n.disk !== null && n.nodeId !== this.local.nodeId && !receivers.some((p) => p.nodeId === n.nodeId))
      .map((n) => n.nodeId);
  }

  clientCount(): number {
    return this.exp?.clients().length ?? 0;
  }

  /**
   * `primary`: G4. Refused with a stable code when another node is Primary
   * (naming it), when a peer is in the middle of its own promotion, without
   * quorum, or without UpToDate data (unless forced). While connected, the
   * promotion is a two-phase change every connected peer agrees to first.
   */
  async primary(force: boolean, reason: string = force ? 'primary --force' : 'primary'): Promise<void> {
    if (this.role === 'Primary') return;
    if (this.role !== 'Secondary') throw new MirrorError('ERR_BUSY', `${this.name} is ${this.role} on ${this.local.name}; try again`);
    this.checkNoOtherPrimary();
    const held = this.twopc.holder();
    if (held) throw this.busy(held.fromNodeId);
    const refusal = promotionRefusal(this.name, this.disk, force);
    if (refusal) throw refusal;
    if (!this.quorum.have && !force) {
      throw new MirrorError('ERR_NO_QUORUM', `${this.name}: no quorum on ${this.local.name} (${this.quorum.reason}); 'primary --force' overrides`, {
        votes: this.quorum.votes,
        needed: this.quorum.needed,
      });
    }
    if (!this.quorum.have) {
      this.log.warn({ quorum: this.quorum.reason }, 'forced promotion without quorum: serving as if quorum were held until a real one forms');
      this.quorumForced = true;
      this.quorum = { ...this.quorum, have: true, reason: `${this.quorum.reason}; forced by primary --force` };
    }
    this.setRole('Promoting', reason);
    try {
      await this.fenceUnreachablePeers(force);
      const before = await this.runHandler('before-promote');
      if (before.ran && (before.exitCode !== 0 || before.timedOut)) {
        throw new MirrorError('ERR_ROLE', `${this.name}: the before-promote handler refused (exit ${before.exitCode ?? 'none'}${before.timedOut ? ', timed out' : ''})`);
      }
      await this.agreeWithPeers('promote');
      await this.becomePrimary(force);
    } catch (e) {
      // (the role changes while awaiting: read it afresh)
      if ((this.role as Role) === 'Promoting') this.setRole('Secondary', `promotion failed: ${(e as Error).message}`);
      throw e;
    }
    this.setRole('Primary', reason);
    this.failoverWanted = false;
    this.newestSurvivor = false;
    this.lostPrimary = { nodeId: NO_NODE, lastSeq: 0 };
    this.cancelFailover();
    for (const p of this.peers.values()) p.announceState();
    this.log.info({ force, reason }, 'role changed to Primary');
    void this.runHandler('after-promote');
  }

  /**
   * With fencing, a node promotes only when every data peer it cannot reach
   * is known not to be Primary: the fence-peer handler must say it outdated
   * or fenced it. --force skips this (loudly).
   */
  private async fenceUnreachablePeers(force: boolean): Promise<void> {
    if (this.config.net.fencing === 'dont-care') return;
    // A peer that went down cleanly said goodbye: it is not Primary anywhere.
    const unreachable = [...this.peers.values()].filter((p) => !p.peerIsWitness && p.status().connection !== 'Connected' && !p.status().leftGracefully);
    for (const p of unreachable) {
      if (force) {
        this.log.warn({ peer: p.name }, 'forced promotion without fencing the unreachable peer');
        continue;
      }
      if (!(await this.fencePeer(p.nodeId, p.name))) {
        throw new MirrorError('ERR_FENCING', `${this.name}: ${p.name} is unreachable and fence-peer did not outdate or fence it (fencing ${this.config.net.fencing}); 'primary --force' overrides`, { peer: p.name });
      }
    }
  }

  private checkNoOtherPrimary(): void {
    const other = this.connectedPeers().find((p) => p.status().role === 'Primary');
    if (other) {
      throw new MirrorError('ERR_TWO_PRIMARIES', `${this.name}: ${other.name} is Primary; demote it first`, { primary: other.name });
    }
  }

  private busy(nodeId: number): MirrorError {
    const who = this.config.nodes.find((n) => n.nodeId === nodeId)?.name ?? `node-id ${nodeId}`;
    return new MirrorError('ERR_BUSY', `${this.name}: ${who} is being promoted; try again`, { node: who });
  }

  /**
   * Phase one with every connected peer, then commit or abort everywhere.
   * A peer that does not answer in twopc-timeout, or whose session ends,
   * fails the change: better no Primary for a moment than two.
   */
  private async agreeWithPeers(change: TwopcChange): Promise<void> {
    const peers = this.connectedPeers();
    if (peers.length === 0) return;
    const txId = randomInt(1, 2 ** 47);
    const answers = await Promise.all(peers.map((p) => p.twopcPrepare(txId, change, this.config.options.twopcTimeoutMs, this.lostPrimary)));
    const refused = answers.findIndex((a) => a === null || !a.yes);
    for (const p of peers) p.twopcFinish(txId, refused < 0);
    this.emit({ type: 'twopc', change, txId, committed: refused < 0, peers: peers.map((p) => p.name) });
    if (refused < 0) return;
    const peer = peers[refused]!;
    const a = answers[refused];
    if (a === null || a === undefined) {
      throw new MirrorError('ERR_NOT_CONNECTED', `${this.name}: ${peer.name} did not answer the promotion (lost or timed out); try again`, { peer: peer.name });
    }
    if (a.reason === 'primary-exists') {
      const primary = this.config.nodes.find((n) => n.nodeId === a.primaryNodeId)?.name ?? peer.name;
      throw new MirrorError('ERR_TWO_PRIMARIES', `${this.name}: ${primary} is Primary (said ${peer.name}); demote it first`, { primary });
    }
    if (a.reason === 'busy') throw new MirrorError('ERR_BUSY', `${this.name}: ${peer.name} is busy with another promotion; try again`, { peer: peer.name });
    if (a.reason === 'newer-data') {
      throw new MirrorError('ERR_NOT_UP_TO_DATE', `${this.name}: ${peer.name} holds later writes of the lost Primary; it should be promoted instead`, { peer: peer.name });
    }
    throw new MirrorError('ERR_ROLE', `${this.name}: ${peer.name} refused the promotion`, { peer: peer.name });
  }

  /** The metadata side of a promotion, once the peers agreed. */
  private async becomePrimary(force: boolean): Promise<void> {
    const replica = this.requireReplica();
    const wasUpToDate = this.disk === 'UpToDate';
    const away = [...this.peers.values()].filter((p) => !p.replicating() && !p.peerIsWitness).map((p) => p.nodeId);
    if (!wasUpToDate) {
      // G4: forcing is loud. The data is declared good and starts a new
      // generation, so every peer's next handshake sees it as the source.
      this.log.warn({ disk: this.disk }, 'forced promotion: declaring local data UpToDate');
      await replica.change({ consistent: true, wasUpToDate: true, newCurrentUuid: newUuid() });
    } else if (replica.superblock.currentUuid === 0n) {
      await replica.change({ newCurrentUuid: newUuid() });
    } else if (this.lostPrimary.nodeId !== NO_NODE) {
      // Taking over from a lost Primary: the other survivors may lack some of
      // its last writes that reached this node (marked until PEERS_IN_SYNC).
      // A new generation with a bitmap UUID for every data peer makes each
      // one resync those marks from here, not the whole disk.
      const data = [...this.peers.values()].filter((p) => !p.peerIsWitness);
      const following = data.filter((p) => p.replicating() && (this.bitmapOf(p.nodeId)?.countSet() ?? 0) === 0);
      const resyncing = data.filter((p) => p.status().connection === 'Connected' && !following.includes(p));
      await replica.newGenerationFor(
        data.filter((p) => !following.includes(p)).map((p) => p.nodeId),
        false,
      );
      const current = replica.superblock.currentUuid;
      const missing = this.dataNodesBut(following);
      for (const p of following) p.sendNewGeneration(current, missing);
      // Before the first write as Primary: those with marks decide again
      // (a short handshake; they then receive every write while they resync).
      await Promise.all(resyncing.map((p) => this.renegotiated(p)));
    } else if (away.length > 0) {
      // Promoted without some peers: they will miss what comes. The peers
      // that stay connected take the generation too.
      await replica.newGenerationFor(away, false);
      const receivers = [...this.peers.values()].filter((p) => p.replicating());
      const missing = this.dataNodesBut(receivers);
      for (const p of receivers) p.sendNewGeneration(replica.superblock.currentUuid, missing);
    }
    // Persist "was Primary" before serving a single write: a crash from here
    // on is a crashed Primary.
    await replica.change({ primary: true });
    this.setDisk('UpToDate', force ? 'primary --force' : 'primary');
    if (!wasUpToDate) {
      // A connected peer that got no data from us yet (both were Inconsistent)
      // must decide again: now there is a source.
      for (const p of this.peers.values()) if (!p.peerIsWitness) void p.renegotiate('new data generation after forced promotion');
    }
  }

  /** Drop the session to decide again, and wait (bounded) until the new handshake is done. */
  private async renegotiated(p: Peer): Promise<void> {
    await p.renegotiate('new Primary after failover');
    const deadline = Date.now() + this.config.net.timeoutMs + this.config.net.connectIntMs;
    while (Date.now() < deadline) {
      const st = p.status();
      if (st.connection === 'Connected' && st.replication !== 'Off') return;
      if (st.connection === 'StandAlone') return;
      await new Promise((r) => setTimeout(r, 10));
    }
    this.log.warn({ peer: p.name }, 'the peer did not come back in time after the failover; it resyncs when it does');
  }

  // --- two-phase changes a peer initiates ------------------------------------------

  private twopcPrepare(from: number, txId: number, change: TwopcChange, progress: LostPrimaryProgress): TwopcAnswer {
    const no = (reason: TwopcAnswer['reason'], primaryNodeId = NO_NODE): TwopcAnswer => ({ yes: false, reason, primaryNodeId });
    if (change !== 'promote') return no('not-allowed');
    if (visibleRole(this.role) === 'Primary') return no('primary-exists', this.local.nodeId);
    if (this.role === 'Promoting') return no('busy');
    // A Primary the initiator may not see (another partition of the mesh).
    const other = this.connectedPeers().find((p) => p.nodeId !== from && p.status().role === 'Primary');
    if (other) return no('primary-exists', other.nodeId);
    // Both survived the same Primary and this node applied later writes of
    // it: the initiator lacks acknowledged data. This node should take over.
    if (
      this.disk === 'UpToDate' &&
      this.lostPrimary.nodeId !== NO_NODE &&
      this.lostPrimary.nodeId === progress.nodeId &&
      this.lostPrimary.lastSeq > progress.lastSeq
    ) {
      this.newestSurvivor = true;
      if (this.failoverWanted) this.scheduleFailover(0);
      return no('newer-data');
    }
    if (!this.twopc.take(from, txId)) return no('busy');
    return { yes: true, reason: 'none', primaryNodeId: NO_NODE };
  }

  private twopcDone(from: number, txId: number | null, committed: boolean): void {
    if (!this.twopc.release(from, txId)) return;
    if (committed) {
      // The initiator is Primary now; its STATE follows.
      this.failoverWanted = false;
      this.cancelFailover();
    }
  }

  async secondary(force: boolean, reason: string = force ? 'secondary --force' : 'secondary'): Promise<void> {
    if (this.role === 'Secondary') return;
    if (this.role !== 'Primary') throw new MirrorError('ERR_BUSY', `${this.name} is ${this.role} on ${this.local.name}; try again`);
    const refusal = demotionRefusal(this.name, this.clientCount(), force);
    if (refusal) throw refusal;
    this.setRole('Demoting', reason);
    // Held requests would never drain: through the gate they now get
    // ESHUTDOWN, and writes held for lack of quorum fail as never having
    // reached one.
    for (const r of this.suspension.why()) this.suspension.resume(r);
    try {
      // New requests are refused from here (the gate); in-flight ones finish,
      // then connected clients are told ESHUTDOWN and closed.
      await this.nbd.disconnectClients(this.name, `${this.name} became Secondary`);
      await this.replicator?.flush().catch(() => undefined);
      await this.replica?.change({ primary: false, crashedPrimary: false });
    } catch (e) {
      this.setRole('Primary', `demotion failed: ${(e as Error).message}`);
      this.clusterChanged(); // suspend again while quorum is still missing
      throw e;
    }
    this.setRole('Secondary', reason);
    for (const r of this.suspension.why()) this.suspension.resume(r);
    for (const p of this.peers.values()) p.announceState();
    this.log.info({ force }, 'role changed to Secondary');
    void this.runHandler('after-demote');
  }

  /** Online verify against every connected peer. */
  verify(): void {
    const peers = this.connectedPeers();
    if (peers.length === 0) throw new MirrorError('ERR_NOT_CONNECTED', `${this.name}: no connected peer to verify against`);
    for (const p of peers) p.startVerify();
  }

  /**
   * Our data is no longer trusted: Inconsistent, every block marked, and a
   * full resync from a peer follows (now, or at the next connect).
   */
  async invalidate(): Promise<void> {
    const replica = this.requireReplica();
    if (this.role === 'Primary') throw new MirrorError('ERR_ROLE', `${this.name} is Primary here; invalidate needs a Secondary`);
    if (this.peers.size === 0) throw new MirrorError('ERR_NOT_CONNECTED', `${this.name}: no peer to take the data from`);
    await replica.change({ consistent: false });
    if (this.disk !== 'Inconsistent') this.setDisk('Inconsistent', 'invalidate');
    for (const p of this.peers.values()) {
      replica.bitmapFor(p.nodeId).setAll();
      await replica.saveBitmap(p.nodeId);
      await p.renegotiate('invalidate');
    }
  }

  /** The peers' data is no longer trusted: every block goes to them again. */
  async invalidateRemote(): Promise<void> {
    const replica = this.requireReplica();
    if (this.disk !== 'UpToDate') throw new MirrorError('ERR_NOT_UP_TO_DATE', `${this.name}: local disk is ${this.disk}; invalidate-remote needs UpToDate data here`);
    const peers = this.connectedPeers();
    if (peers.length === 0) throw new MirrorError('ERR_NOT_CONNECTED', `${this.name}: no connected peer to invalidate`);
    const primary = peers.find((p) => p.status().role === 'Primary');
    if (primary) throw new MirrorError('ERR_ROLE', `${this.name}: ${primary.name} is Primary; it cannot become a SyncTarget`);
    // A new generation with every block marked: the handshake then sends all.
    for (const p of peers) replica.bitmapFor(p.nodeId).setAll();
    await replica.newGenerationFor(peers.map((p) => p.nodeId));
    for (const p of peers) {
      await replica.saveBitmap(p.nodeId);
      await p.renegotiate('invalidate-remote');
    }
  }

  /**
   * Start a new data generation. Connected peers take it too (their data is
   * the same). With --clear-bitmap on disks that were never synced, nothing
   * is copied: every side becomes UpToDate (only for disks known to be equal,
   * e.g. all zeroes).
   */
  async newCurrentUuid(clearBitmap: boolean): Promise<void> {
    const replica = this.requireReplica();
    const peers = this.connectedPeers();
    if (clearBitmap) {
      if (replica.superblock.currentUuid !== 0n || peers.some((p) => p.status().replication !== 'Established')) {
        throw new MirrorError(
          'ERR_ROLE',
          `${this.name}: --clear-bitmap is for disks that were never synced, connected and idle; use primary --force for an initial sync`,
        );
      }
    }
    const current = newUuid();
    await replica.change({ newCurrentUuid: current, ...(clearBitmap ? { consistent: true, wasUpToDate: true } : {}) });
    for (const p of this.peers.values()) {
      // A witness has no data and no bitmap slot here.
      if (clearBitmap && replica.hasBitmapFor(p.nodeId)) {
        replica.bitmapFor(p.nodeId).clearAll();
        await replica.saveBitmap(p.nodeId);
      }
    }
    if (clearBitmap && this.disk !== 'UpToDate') this.setDisk('UpToDate', 'new-current-uuid --clear-bitmap');
    for (const p of peers) {
      if (!p.peerIsWitness) p.sendAdopt(current);
      p.announceState();
    }
    this.emit({ type: 'new-current-uuid', current: formatUuid(current), clearBitmap });
  }

  pauseSync(): void {
    const peers = this.connectedPeers();
    if (peers.length === 0) throw new MirrorError('ERR_NOT_CONNECTED', `${this.name}: not connected`);
    for (const p of peers) p.pauseSync();
  }

  resumeSync(): void {
    for (const p of this.connectedPeers()) p.resumeSync();
  }

  /** `connect [--discard-my-data]`: the flag makes this node yield the next split brain. */
  async connect(opts: { discardMyData?: boolean } = {}): Promise<void> {
    if (this.local.disk !== null) this.requireReplica();
    if (this.peers.size === 0) throw new MirrorError('ERR_BAD_CONFIG', `${this.name} has no peers to connect to`);
    if (opts.discardMyData && visibleRole(this.role) === 'Primary') {
      throw new MirrorError('ERR_ROLE', `${this.name} is Primary on ${this.local.name}; demote it before discarding its data`);
    }
    for (const p of this.peers.values()) p.connect(opts);
  }

  async disconnect(): Promise<void> {
    if (this.local.disk !== null) this.requireReplica();
    for (const p of this.peers.values()) await p.disconnect('disconnect requested by the operator');
  }

  /** `down`: refused for a Primary with clients; otherwise demote, disconnect, close, detach. */
  async down(opts: { forceClients: boolean }): Promise<void> {
    if (this.role === 'Primary') await this.secondary(opts.forceClients);
    await this.releaseAll(true);
    this.log.info('down');
  }

  private async releaseAll(clean: boolean): Promise<void> {
    this.cancelFailover();
    this.twopc.clear();
    for (const p of this.peers.values()) await p.disconnect(`${LEAVING_PREFIX}${this.local.name} is going down`).catch(() => undefined);
    this.peers.clear();
    const pl = this.peerListener;
    this.peerListener = null;
    if (pl) await pl.close();
    const listener = this.listener;
    this.listener = null;
    if (listener) await listener.close();
    this.replicator?.stop();
    this.replicator = null;
    const replica = this.replica;
    this.replica = null;
    if (replica) await replica.close(clean && this.disk !== 'Failed');
    this.exp = null;
    if (this.disk === 'Failed') this.setDisk('Diskless', 'down');
    if (this.disk !== 'Diskless') this.setDisk('Diskless', 'detach');
  }

  private requireReplica(): Replica {
    if (this.replica === null) throw new MirrorError('ERR_NOT_UP', `${this.name} has no disk attached`);
    return this.replica;
  }

  private promotionStatus(): ResourceStatus['promotion'] {
    const choice = chooseCandidate({ selfId: this.local.nodeId, nodes: this.nodeViews() });
    const held = this.twopc.holder();
    return {
      autoPromote: this.config.options.autoPromote && this.config.options.quorum !== 'off',
      candidates: choice.candidates.map((c) => c.name),
      reason: choice.reason,
      failoverPending: this.failoverWanted,
      lastFailoverChoice: this.lastChoice ? this.lastChoice.reason : null,
      preparedFor: held ? (this.config.nodes.find((n) => n.nodeId === held.fromNodeId)?.name ?? String(held.fromNodeId)) : null,
    };
  }

  status(): ResourceStatus {
    const sb = this.replica?.superblock;
    const now = Date.now();
    return {
      name: this.name,
      node: this.local.name,
      nodeId: this.local.nodeId,
      role: this.role,
      roleReason: this.roleReason,
      disk: this.disk,
      diskless: this.local.disk === null,
      quorum: { ...this.quorum, setting: String(this.config.options.quorum), onNoQuorum: this.config.options.onNoQuorum },
      suspended: this.suspension.why(),
      promotion: this.promotionStatus(),
      sizeBytes: this.exp?.size() ?? 0,
      nbd: {
        address: this.local.nbdAddress ? formatNbdAddress(this.listener?.address ?? this.local.nbdAddress) : null,
        clients: (this.exp?.clients() ?? []).map((c) => ({
          id: c.id,
          remote: c.remote,
          tls: c.tls,
          connectedSec: Math.round((now - c.connectedAt) / 1000),
        })),
      },
      peers: this.config.nodes
        .filter((n) => n.name !== this.local.name)
        .map((n) => peerStatus(n, this.peers.get(n.nodeId)?.status() ?? null, now)),
      generation: {
        current: formatUuid(sb?.currentUuid ?? 0n),
        history: sb ? sb.historyUuids.map(formatUuid) : [],
      },
      flags: sb ? mdFlagNames(sb) : [],
      io: this.exp ? { ...this.exp.counters } : { ...EMPTY_IO },
      upSec: Math.round((now - this.upAtMs) / 1000),
    };
  }
}

async function readPem(file: string | null): Promise<Buffer | undefined> {
  if (file === null) return undefined;
  try {
    return await fsp.readFile(file);
  } catch (e) {
    throw new MirrorError('ERR_BAD_CONFIG', `cannot read TLS file ${file}: ${(e as Error).message}`, { file });
  }
}
