/**
 * One resource on this node: its replica (disk and metadata), its role and
 * disk state, its peers, and its NBD export. Every role or disk change goes
 * through the transition functions of states.ts and is persisted in the
 * metadata before it takes effect where a crash could otherwise lose it.
 */
import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import type { NbdAddress, NodeConfig, ResourceConfig } from '../config/model.js';
import { MirrorError } from '../errors.js';
import { formatUuid, newUuid } from '../meta/index.js';
import type { ListenerPolicy } from '../nbd/export.js';
import type { NbdListener, NbdServer } from '../nbd/server.js';
import { Peer } from '../replication/peer.js';
import { PeerListener } from '../replication/peer-listener.js';
import { RangeLock } from '../replication/range-lock.js';
import type { ReplicaPort } from '../replication/replica-port.js';
import { ReplicatedStore } from '../replication/replicated-store.js';
import { Replicator } from '../replication/replicator.js';
import { LocalExport } from './local-export.js';
import { mdFlagNames, readMdFlags } from './md-flags.js';
import { Replica } from './replica.js';
import {
  demotionRefusal,
  diskStateFromFlags,
  promotionRefusal,
  transitionDisk,
  transitionRole,
  type DiskState,
  type Role,
} from './states.js';
import { peerStatus } from './peer-status.js';
import type { ResourceStatus } from './status.js';

export function formatNbdAddress(a: NbdAddress): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

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

  constructor(
    readonly config: ResourceConfig,
    readonly local: NodeConfig,
    private readonly nbd: NbdServer,
    private readonly log: Logger,
    private readonly emit: EmitEvent = () => undefined,
  ) {}

  private setDisk(to: DiskState, reason: string): void {
    const from = this.disk;
    this.disk = transitionDisk(from, to);
    if (from !== to) this.emit({ type: 'disk', from, to, reason });
  }

  private setRole(to: Role, reason: string): void {
    const from = this.role;
    this.role = transitionRole(from, to);
    if (from !== to) this.emit({ type: 'role', from, to, reason });
  }

  get name(): string {
    return this.config.name;
  }

  /** Attach the disk, start replication, open the NBD listener. On failure nothing stays open. */
  async up(): Promise<void> {
    try {
      await this.attach();
      await this.startReplication();
      await this.openListener();
    } catch (e) {
      await this.releaseAll(false);
      throw e;
    }
  }

  private async attach(): Promise<void> {
    if (this.local.disk === null) {
      throw new MirrorError('ERR_BAD_CONFIG', `${this.name}: node ${this.local.name} is diskless (disk none); diskless nodes are not supported yet`);
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
    if (replica.crashedPrimary) this.log.warn('metadata says the last Primary run did not end cleanly: crashed primary');
    if (this.replicator === null) {
      this.replicator = new Replicator({
        store: () => this.replica?.store ?? null,
        peers: () => [...this.peers.values()],
        bitmapFor: (id) => this.requireReplica().bitmapFor(id),
        writeLock: this.writeLock,
        flushLocal: () => this.replica?.store.flush() ?? Promise.resolve(),
        intent: {
          beginWrite: (offset, length) => this.replica?.al.beginWrite(offset, length) ?? Promise.resolve(),
          endWrite: (offset, length) => this.replica?.al.endWrite(offset, length),
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
        ),
        this.config.nbd.maxPayloadBytes,
        {
          refusal: () => this.ioRefusal(),
          ioFailed: (op, e) => this.ioFailed(op, e),
        },
      );
    }
    this.setDisk(diskStateFromFlags(readMdFlags(replica.superblock)), 'metadata flags at attach');
    this.log.info({ disk: this.disk, sizeBytes: replica.store.size }, 'disk attached');
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
    if (this.role === 'Primary') {
      throw new MirrorError('ERR_ROLE', `${this.name} is Primary here; demote it before attaching (a Primary cannot be a SyncTarget)`);
    }
    await this.attach();
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
      role: () => this.role,
      disk: () => this.disk,
      syncSide: (id) => replica().syncSide(id, this.role === 'Primary'),
      bitmapFor: (id) => replica().bitmapFor(id),
      writeLock: this.writeLock,
      applyLock: this.applyLock,
      freezeWrites: () => this.replicator!.freeze(),
      syncStarting: async (_id, role) => {
        if (role === 'target') {
          // G6: a SyncTarget is Inconsistent until the end, on disk too.
          await replica().change({ consistent: false });
          this.setDisk('Inconsistent', 'resync target');
        }
      },
      syncFinished: async (id, role, sourceCurrent) => {
        if (role === 'target') {
          await replica().adoptGeneration(sourceCurrent, id);
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
        if (this.role === 'Primary' && wasReplicating) await this.replica.newGenerationFor([id]);
        await this.replica.saveBitmap(id);
      },
      diskFailed: (op, e) => this.ioFailed(`replicated ${op}`, e),
      saveBitmap: (id) => replica().saveBitmap(id),
      exportSize: () => this.exportSize(),
      sizeAgreed: (id, bytes) => {
        this.agreedSizes.set(id, bytes);
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
    const others = this.config.nodes.filter((n) => n.name !== this.local.name && n.disk !== null && n.address !== null);
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
          onEvent: (e) => this.emit({ ...e, peer: n.name }),
          tls,
        }),
      );
    }
    this.peerListener = new PeerListener({
      address: this.local.address,
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
  private ioRefusal(): string | null {
    if (this.role !== 'Primary') {
      const primary = [...this.peers.values()].find((p) => p.status().role === 'Primary');
      return `${this.name} is Secondary on ${this.local.name}; ${primary ? `the Primary is ${primary.name}` : 'no Primary is known'}`;
    }
    if (this.disk === 'UpToDate') return null;
    // Without a usable disk of our own (detached, or failing and about to
    // be detached) an UpToDate peer serves the data.
    if ((this.disk === 'Diskless' || this.disk === 'Failed') && [...this.peers.values()].some((p) => p.canServeReads())) return null;
    return `${this.name} on ${this.local.name} has disk ${this.disk} and no UpToDate peer to serve it`;
  }

  private connectedPeers(): Peer[] {
    return [...this.peers.values()].filter((p) => p.status().connection === 'Connected');
  }

  clientCount(): number {
    return this.exp?.clients().length ?? 0;
  }

  async primary(force: boolean): Promise<void> {
    if (this.role === 'Primary') return;
    const other = [...this.peers.values()].find((p) => p.status().connection === 'Connected' && p.status().role === 'Primary');
    if (other) {
      throw new MirrorError('ERR_TWO_PRIMARIES', `${this.name}: ${other.name} is Primary; demote it first`, { primary: other.name });
    }
    const refusal = promotionRefusal(this.name, this.disk, force);
    if (refusal) throw refusal;
    const replica = this.requireReplica();
    const wasUpToDate = this.disk === 'UpToDate';
    const away = [...this.peers.values()].filter((p) => !p.replicating()).map((p) => p.nodeId);
    if (!wasUpToDate) {
      // G4: forcing is loud. The data is declared good and starts a new
      // generation, so every peer's next handshake sees it as the source.
      this.log.warn({ disk: this.disk }, 'forced promotion: declaring local data UpToDate');
      await replica.change({ consistent: true, wasUpToDate: true, newCurrentUuid: newUuid() });
    } else if (replica.superblock.currentUuid === 0n) {
      await replica.change({ newCurrentUuid: newUuid() });
    } else if (away.length > 0) {
      // Promoted without some peers: they will miss what comes.
      await replica.newGenerationFor(away);
    }
    // Persist "was Primary" before serving a single write: a crash from here
    // on is a crashed Primary.
    await replica.change({ primary: true });
    this.setDisk('UpToDate', force ? 'primary --force' : 'primary');
    this.setRole('Primary', force ? 'primary --force' : 'primary');
    this.log.info({ force }, 'role changed to Primary');
    for (const p of this.peers.values()) {
      // A connected peer that got no data from us yet (both were Inconsistent)
      // must decide again: now there is a source.
      if (!wasUpToDate) void p.renegotiate('new data generation after forced promotion');
      else p.announceState();
    }
  }

  async secondary(force: boolean): Promise<void> {
    if (this.role === 'Secondary') return;
    const refusal = demotionRefusal(this.name, this.clientCount(), force);
    if (refusal) throw refusal;
    this.setRole('Secondary', force ? 'secondary --force' : 'secondary');
    // New requests are refused from here (the gate); in-flight ones finish,
    // then connected clients are told ESHUTDOWN and closed.
    await this.nbd.disconnectClients(this.name, `${this.name} became Secondary`);
    await this.replicator?.flush().catch(() => undefined);
    await this.replica?.change({ primary: false, crashedPrimary: false });
    for (const p of this.peers.values()) p.announceState();
    this.log.info({ force }, 'role changed to Secondary');
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
      if (clearBitmap) {
        replica.bitmapFor(p.nodeId).clearAll();
        await replica.saveBitmap(p.nodeId);
      }
    }
    if (clearBitmap && this.disk !== 'UpToDate') this.setDisk('UpToDate', 'new-current-uuid --clear-bitmap');
    for (const p of peers) {
      p.sendAdopt(current);
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

  async connect(): Promise<void> {
    this.requireReplica();
    if (this.peers.size === 0) throw new MirrorError('ERR_BAD_CONFIG', `${this.name} has no peers to connect to`);
    for (const p of this.peers.values()) p.connect();
  }

  async disconnect(): Promise<void> {
    this.requireReplica();
    for (const p of this.peers.values()) await p.disconnect('disconnect requested by the operator');
  }

  /** `down`: refused for a Primary with clients; otherwise demote, disconnect, close, detach. */
  async down(opts: { forceClients: boolean }): Promise<void> {
    if (this.role === 'Primary') await this.secondary(opts.forceClients);
    await this.releaseAll(true);
    this.log.info('down');
  }

  private async releaseAll(clean: boolean): Promise<void> {
    for (const p of this.peers.values()) await p.disconnect('going down').catch(() => undefined);
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

  status(): ResourceStatus {
    const sb = this.replica?.superblock;
    const now = Date.now();
    return {
      name: this.name,
      node: this.local.name,
      nodeId: this.local.nodeId,
      role: this.role,
      disk: this.disk,
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
