/**
 * One resource on this node: its disk (metadata + data store), its role and
 * disk state, and its NBD export. Every role or disk change goes through the
 * transition functions of states.ts and is persisted in the metadata before
 * it takes effect where a crash could otherwise lose it.
 */
import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import { FileStore } from '../../native-free-io/file-store.js';
import type { NodeConfig, ResourceConfig, NbdAddress } from '../config/model.js';
import { MirrorError } from '../errors.js';
import { openMd, type MetaHandle } from '../meta/index.js';
import type { ListenerPolicy } from '../nbd/export.js';
import type { NbdListener, NbdServer } from '../nbd/server.js';
import { LocalExport } from './local-export.js';
import { mdFlagNames, readMdFlags, superblockWith } from './md-flags.js';
import {
  demotionRefusal,
  diskStateFromFlags,
  promotionRefusal,
  transitionDisk,
  transitionRole,
  type DiskState,
  type Role,
} from './states.js';
import type { ResourceStatus } from './status.js';
import { formatUuid, newUuid } from '../meta/index.js';

export function formatNbdAddress(a: NbdAddress): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

export class Resource {
  private role: Role = 'Secondary';
  private disk: DiskState = 'Diskless';
  private meta: MetaHandle | null = null;
  private store: FileStore | null = null;
  private exp: LocalExport | null = null;
  private listener: NbdListener | null = null;
  private readonly upAtMs = Date.now();

  constructor(
    readonly config: ResourceConfig,
    readonly local: NodeConfig,
    private readonly nbd: NbdServer,
    private readonly log: Logger,
  ) {}

  get name(): string {
    return this.config.name;
  }

  /** Attach the disk and open the NBD listener. On failure nothing stays open. */
  async up(): Promise<void> {
    try {
      await this.attach();
      await this.openListener();
    } catch (e) {
      await this.releaseAll();
      throw e;
    }
  }

  private async attach(): Promise<void> {
    if (this.local.disk === null) {
      throw new MirrorError('ERR_BAD_CONFIG', `${this.name}: node ${this.local.name} has no disk; diskless nodes need replication`);
    }
    this.disk = transitionDisk(this.disk, 'Attaching');
    const meta = await openMd({ diskPath: this.local.disk, metaDisk: this.local.metaDisk });
    this.meta = meta;
    if (meta.superblock.nodeId !== this.local.nodeId) {
      throw new MirrorError(
        'ERR_MD_CORRUPT',
        `${this.name}: metadata on ${this.local.disk} belongs to node-id ${meta.superblock.nodeId}, but ${this.local.name} is node-id ${this.local.nodeId}; run create-md again if the config is right`,
      );
    }
    const flags = readMdFlags(meta.superblock);
    if (flags.primary) {
      // Still marked Primary at attach: this node went down without demoting.
      this.log.warn('metadata says the last Primary run did not end cleanly: crashed primary');
      await meta.save(superblockWith(meta.superblock, { crashedPrimary: true }));
    }
    this.store = await FileStore.open(this.local.disk, { sizeLimitBytes: meta.layout.dataSizeBytes });
    this.exp = new LocalExport(
      this.name,
      this.config.nbd.description ?? `mirrorbd resource ${this.name} on ${this.local.name}`,
      this.store,
      this.config.nbd.maxPayloadBytes,
      {
        refusal: () => this.ioRefusal(),
        ioFailed: (op, e) => this.log.warn({ op, err: e }, 'I/O on the backing disk failed'),
      },
    );
    this.disk = transitionDisk(this.disk, diskStateFromFlags(flags));
    this.log.info({ disk: this.disk, sizeBytes: this.store.size }, 'disk attached');
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
    if (this.role !== 'Primary') return `${this.name} is Secondary on ${this.local.name}; no Primary is known`;
    if (this.disk !== 'UpToDate') return `${this.name} on ${this.local.name} has disk ${this.disk}`;
    return null;
  }

  clientCount(): number {
    return this.exp?.clients().length ?? 0;
  }

  async primary(force: boolean): Promise<void> {
    if (this.role === 'Primary') return;
    const refusal = promotionRefusal(this.name, this.disk, force);
    if (refusal) throw refusal;
    const meta = this.requireMeta();
    let sb = meta.superblock;
    if (this.disk !== 'UpToDate') {
      // G4: forcing is loud. The data is declared good and a new data
      // generation starts, so later handshakes can tell it apart.
      this.log.warn({ disk: this.disk }, 'forced promotion: declaring local data UpToDate');
      sb = superblockWith(sb, { consistent: true, wasUpToDate: true, newCurrentUuid: newUuid() });
    } else if (readMdFlags(sb).currentUuid === 0n) {
      sb = superblockWith(sb, { newCurrentUuid: newUuid() });
    }
    // Persist "was Primary" before serving a single write: a crash from here
    // on is a crashed Primary.
    await meta.save(superblockWith(sb, { primary: true }));
    this.disk = transitionDisk(this.disk, 'UpToDate');
    this.role = transitionRole(this.role, 'Primary');
    this.log.info({ force }, 'role changed to Primary');
  }

  async secondary(force: boolean): Promise<void> {
    if (this.role === 'Secondary') return;
    const refusal = demotionRefusal(this.name, this.clientCount(), force);
    if (refusal) throw refusal;
    this.role = transitionRole(this.role, 'Secondary');
    // New requests are refused from here (the gate); in-flight ones finish,
    // then connected clients are told ESHUTDOWN and closed.
    await this.nbd.disconnectClients(this.name, `${this.name} became Secondary`);
    await this.store?.flush();
    const meta = this.requireMeta();
    await meta.save(superblockWith(meta.superblock, { primary: false, crashedPrimary: false }));
    this.log.info({ force }, 'role changed to Secondary');
  }

  /** `down`: refused for a Primary with clients; otherwise demote, close, detach. */
  async down(opts: { forceClients: boolean }): Promise<void> {
    if (this.role === 'Primary') await this.secondary(opts.forceClients);
    await this.releaseAll();
    this.log.info('down');
  }

  private async releaseAll(): Promise<void> {
    const listener = this.listener;
    this.listener = null;
    if (listener) await listener.close();
    const store = this.store;
    this.store = null;
    if (store) {
      await store.flush().catch(() => undefined);
      await store.close();
    }
    const meta = this.meta;
    this.meta = null;
    if (meta) await meta.close();
    this.exp = null;
    if (this.disk !== 'Diskless') this.disk = transitionDisk(this.disk, 'Diskless');
  }

  private requireMeta(): MetaHandle {
    if (this.meta === null) throw new MirrorError('ERR_NOT_UP', `${this.name} has no disk attached`);
    return this.meta;
  }

  status(): ResourceStatus {
    const sb = this.meta?.superblock;
    const flags = sb ? readMdFlags(sb) : null;
    const now = Date.now();
    return {
      name: this.name,
      node: this.local.name,
      nodeId: this.local.nodeId,
      role: this.role,
      disk: this.disk,
      sizeBytes: this.store?.size ?? 0,
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
        .map((n) => ({
          node: n.name,
          nodeId: n.nodeId,
          role: 'Unknown' as const,
          connection: 'StandAlone' as const,
          replication: 'Off' as const,
          peerDisk: 'DUnknown' as const,
          outOfSyncBytes: null,
          syncDonePercent: null,
        })),
      generation: {
        current: formatUuid(flags?.currentUuid ?? 0n),
        history: flags ? flags.historyUuids.map(formatUuid) : [],
      },
      flags: sb ? mdFlagNames(sb) : [],
      io: this.exp ? { ...this.exp.counters } : { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, trims: 0, zeroes: 0, errors: 0 },
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
