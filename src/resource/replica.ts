/**
 * The local replica of a resource: its data store and its metadata
 * (superblock, one bitmap per peer slot, the activity log). Everything that
 * must survive a crash is written here, in the order the guarantees need:
 *
 * - attach: the activity log of a node that crashed marks its hot extents in
 *   every peer's bitmap (G3), and those bitmaps are saved, before the log is
 *   reopened;
 * - a write into a cold extent waits for the log's transaction (G3); an
 *   extent leaves the log only after its bitmap bits are saved;
 * - a new data generation (promotion while disconnected, losing a peer as
 *   Primary) is saved before the write that needs it.
 */
import type { Logger } from 'pino';
import { FileStore } from '../../native-free-io/file-store.js';
import { faultyIo, isFaultRule } from '../../native-free-io/faulty-io.js';
import { nodePositionalIo, type PositionalIo } from '../../native-free-io/positional-io.js';
import type { NodeConfig, ResourceConfig } from '../config/model.js';
import { MirrorError } from '../errors.js';
import {
  AL_EXTENT_BYTES,
  MD_FLAGS,
  PEER_FLAGS,
  clearBitmapUuid,
  newGeneration,
  newUuid,
  openMd,
  rotateHistory,
  type ActivityLog,
  type Bitmap,
  type MetaHandle,
  type Superblock,
  type UuidSet,
} from '../meta/index.js';
import type { SyncSide } from '../replication/sync-decision.js';
import { readMdFlags, superblockWith, type MdChange } from './md-flags.js';

export class Replica {
  private constructor(
    readonly meta: MetaHandle,
    readonly store: FileStore,
    readonly al: ActivityLog,
    /** peer node-id -> slot index */
    private readonly slots: Map<number, number>,
    private readonly bitmaps: Map<number, Bitmap>,
    private readonly log: Logger,
    /** The metadata said the last run did not end cleanly as Primary. */
    readonly crashedPrimary: boolean,
  ) {}

  static async attach(rc: ResourceConfig, local: NodeConfig, log: Logger): Promise<Replica> {
    if (local.disk === null) throw new MirrorError('ERR_BAD_CONFIG', `${rc.name}: node ${local.name} has no disk`);
    const meta = await openMd({ diskPath: local.disk, metaDisk: local.metaDisk });
    try {
      let sb = meta.superblock;
      if (sb.nodeId !== local.nodeId) {
        throw new MirrorError(
          'ERR_MD_CORRUPT',
          `${rc.name}: metadata on ${local.disk} belongs to node-id ${sb.nodeId}, but ${local.name} is node-id ${local.nodeId}; run create-md again if the config is right`,
        );
      }
      // One bitmap slot per peer, assigned at first sight and kept.
      const peers = rc.nodes.filter((n) => n.name !== local.name && n.disk !== null);
      const slots = new Map<number, number>(sb.peers.map((p, i) => [p.nodeId, i]));
      const next = [...sb.peers];
      for (const p of peers) {
        if (slots.has(p.nodeId)) continue;
        if (next.length >= sb.maxPeers) {
          throw new MirrorError('ERR_MD_TOO_SMALL', `${rc.name}: the metadata has bitmap slots for ${sb.maxPeers} peer(s); run create-md for the new set of nodes`);
        }
        slots.set(p.nodeId, next.length);
        next.push({ nodeId: p.nodeId, flags: 0, bitmapUuid: 0n });
      }
      if (next.length !== sb.peers.length) {
        sb = { ...sb, peers: next };
        await meta.save(sb);
      }
      const bitmaps = new Map<number, Bitmap>();
      for (const [nodeId, slot] of slots) bitmaps.set(nodeId, await meta.loadBitmap(slot));

      // G3: a node that went down with writes in flight may have blocks that
      // differ from its peers in its hot extents: mark them for every peer.
      const recovered = await meta.recoverActivityLog();
      const wasPrimary = (sb.flags & MD_FLAGS.PRIMARY_IND) !== 0;
      if (!recovered.clean && recovered.extents.length > 0) {
        for (const bm of bitmaps.values()) {
          if (!recovered.complete) bm.setAll();
          else
            for (const e of recovered.extents) {
              // The last extent may run past the data area (internal metadata
              // leaves it a little short of a multiple of 4 MiB).
              const start = e * AL_EXTENT_BYTES;
              const length = Math.min(AL_EXTENT_BYTES, meta.layout.dataSizeBytes - start);
              if (length > 0) bm.setRange(start, length);
            }
        }
        log.warn({ extents: recovered.extents.length, complete: recovered.complete }, 'activity log: marked the hot extents of an unclean shutdown out of sync');
      }
      for (const [nodeId, slot] of slots) await meta.saveBitmap(slot, bitmaps.get(nodeId)!);
      if (wasPrimary) {
        // It comes up Secondary; the crash is remembered until a resync settles it.
        sb = superblockWith(meta.superblock, { crashedPrimary: true, primary: false });
        await meta.save(sb);
      }
      const al = meta.openActivityLog({
        recovered,
        // An extent leaves the log only once the bits of its blocks are on disk.
        beforeEvict: async (extent) => {
          // The last extent may run past the data area (as above): save only its part.
          const offset = extent * AL_EXTENT_BYTES;
          const length = Math.min(AL_EXTENT_BYTES, meta.layout.dataSizeBytes - offset);
          if (length <= 0) return;
          for (const [nodeId, slot] of slots) {
            await meta.saveBitmap(slot, bitmaps.get(nodeId)!, { offset, length });
          }
        },
      });
      const store = await FileStore.open(local.disk, { sizeLimitBytes: meta.layout.dataSizeBytes, io: testFaults(local.disk, log) });
      return new Replica(meta, store, al, slots, bitmaps, log, wasPrimary);
    } catch (e) {
      await meta.close().catch(() => undefined);
      throw e;
    }
  }

  get superblock(): Superblock {
    return this.meta.superblock;
  }

  bitmapFor(peerNodeId: number): Bitmap {
    const bm = this.bitmaps.get(peerNodeId);
    if (!bm) throw new MirrorError('ERR_INTERNAL', `no bitmap slot for node-id ${peerNodeId}`);
    return bm;
  }

  hasBitmapFor(peerNodeId: number): boolean {
    return this.bitmaps.has(peerNodeId);
  }

  async saveBitmap(peerNodeId: number): Promise<void> {
    const slot = this.slots.get(peerNodeId);
    if (slot !== undefined) await this.meta.saveBitmap(slot, this.bitmapFor(peerNodeId));
  }

  async saveAllBitmaps(): Promise<void> {
    for (const nodeId of this.slots.keys()) await this.saveBitmap(nodeId);
  }

  async change(c: MdChange): Promise<void> {
    await this.meta.update((sb) => superblockWith(sb, c));
  }

  private uuidSet(sb: Superblock = this.meta.superblock): UuidSet {
    return { current: sb.currentUuid, bitmap: sb.peers.map((p) => p.bitmapUuid), history: sb.historyUuids };
  }

  /**
   * Change the UUIDs from what the metadata holds when the change's turn
   * comes (a Primary losing two peers at once starts two generations, one
   * after the other, never one over the other).
   */
  private async updateUuids(next: (before: UuidSet) => UuidSet, extra: MdChange = {}): Promise<{ before: UuidSet; set: UuidSet }> {
    let out: { before: UuidSet; set: UuidSet } | null = null;
    await this.meta.update((cur) => {
      const before = this.uuidSet(cur);
      const set = next(before);
      out = { before, set };
      const sb = superblockWith(cur, extra);
      return {
        ...sb,
        currentUuid: set.current,
        historyUuids: [set.history[0], set.history[1]],
        peers: sb.peers.map((p, i) => ({ ...p, bitmapUuid: set.bitmap[i] ?? 0n })),
      };
    });
    return out!;
  }

  /**
   * Start a new data generation because the peers in `awayNodeIds` will miss
   * the writes that follow (DRBD: a Primary that loses a peer, or is
   * promoted without one).
   */
  async newGenerationFor(awayNodeIds: number[], whilePrimary = false): Promise<void> {
    const away = awayNodeIds.map((id) => this.slots.get(id)).filter((s): s is number => s !== undefined);
    const { before, set } = await this.updateUuids((b) => newGeneration(b, away, newUuid()));
    // Where a bitmap generation starts now, remember whether this node was
    // Primary at the split (after-sb discard-younger/older-primary).
    const started = away.filter((slot) => before.bitmap[slot] === 0n && set.bitmap[slot] !== 0n);
    if (started.length > 0) await this.setSlotFlag(started, PEER_FLAGS.BITMAP_WHILE_PRIMARY, whilePrimary);
    this.log.info({ current: set.current.toString(16), away: awayNodeIds }, 'new data generation');
  }

  private async setSlotFlag(slots: number[], bit: number, on: boolean): Promise<void> {
    await this.meta.update((sb) => ({
      ...sb,
      peers: sb.peers.map((p, i) => (slots.includes(i) ? { ...p, flags: on ? p.flags | bit : p.flags & ~bit } : p)),
    }));
  }

  /** The data size last agreed with each peer (absent: never agreed). */
  agreedSizes(): Map<number, number> {
    const out = new Map<number, number>();
    for (const p of this.meta.superblock.peers) if (p.agreedSizeBytes) out.set(p.nodeId, p.agreedSizeBytes);
    return out;
  }

  /** Persist the size a handshake agreed with this peer (only when it changed). */
  async saveAgreedSize(peerNodeId: number, bytes: number): Promise<void> {
    const slot = this.slots.get(peerNodeId);
    if (slot === undefined || this.meta.superblock.peers[slot]?.agreedSizeBytes === bytes) return;
    await this.meta.update((sb) => ({ ...sb, peers: sb.peers.map((p, i) => (i === slot ? { ...p, agreedSizeBytes: bytes } : p)) }));
  }

  /**
   * A full sync as target begins: the data is Inconsistent and takes the
   * source's generation now. Every bitmap marks every block first (what
   * this disk holds is unknown to every peer until a block arrives), so a
   * sync that is cut off resumes from the bitmaps — with this source or any
   * other of the same generation — and never trusts a block not yet copied.
   */
  async beginFullSyncTarget(sourceCurrent: bigint): Promise<void> {
    for (const bm of this.bitmaps.values()) bm.setAll();
    await this.saveAllBitmaps();
    await this.updateUuids(
      (set) => ({
        current: sourceCurrent,
        bitmap: set.bitmap.map(() => 0n),
        history: set.current === sourceCurrent || set.current === 0n ? set.history : rotateHistory(set.history, set.current),
      }),
      { consistent: false },
    );
  }

  /**
   * The Primary started a new generation while this node kept receiving its
   * writes: take it too (the data is the same). Peers this node does not
   * reach now get the old generation as their bitmap UUID, as if this node
   * had started the generation itself, so they later resync from the bits.
   */
  async followGeneration(current: bigint, unreachableNodeIds: number[]): Promise<void> {
    const away = unreachableNodeIds.map((id) => this.slots.get(id)).filter((s): s is number => s !== undefined);
    await this.updateUuids((before) => (before.current === current ? before : newGeneration(before, away, current)));
  }

  /** A SyncTarget finished: adopt the source's generation; the data is good again. */
  async adoptGeneration(sourceCurrent: bigint, peerNodeId: number): Promise<void> {
    const slot = this.slots.get(peerNodeId);
    // A crashed Primary that took the source's data for its marked blocks
    // (its hot extents among them) no longer differs because of the crash.
    await this.updateUuids(
      (set) => ({
        current: sourceCurrent,
        bitmap: set.bitmap.map((b, i) => (i === slot ? 0n : b)),
        history: set.current === sourceCurrent ? set.history : rotateHistory(set.history, set.current),
      }),
      { consistent: true, wasUpToDate: true, crashedPrimary: false },
    );
  }

  /** A SyncSource finished: its bitmap for the peer is clean, the bitmap UUID retires. */
  async bitmapClean(peerNodeId: number): Promise<void> {
    const slot = this.slots.get(peerNodeId);
    if (slot === undefined) return;
    await this.updateUuids((set) => clearBitmapUuid(set, slot));
    await this.setSlotFlag([slot], PEER_FLAGS.BITMAP_WHILE_PRIMARY, false);
  }

  syncSide(peerNodeId: number, primaryNow: boolean): SyncSide {
    const sb = this.meta.superblock;
    const f = readMdFlags(sb);
    const slot = this.slots.get(peerNodeId);
    return {
      current: sb.currentUuid,
      bitmap: slot === undefined ? 0n : (sb.peers[slot]?.bitmapUuid ?? 0n),
      history: sb.historyUuids,
      flags: { consistent: f.consistent, wasUpToDate: f.wasUpToDate, crashedPrimary: f.crashedPrimary, primary: primaryNow },
      dirtyBlocks: this.bitmaps.get(peerNodeId)?.countSet() ?? 0,
      primaryAtSplit: slot !== undefined && ((sb.peers[slot]?.flags ?? 0) & PEER_FLAGS.BITMAP_WHILE_PRIMARY) !== 0,
    };
  }

  /** Clean shutdown: empty activity log, bitmaps and flags on disk, everything closed. */
  async close(clean: boolean): Promise<void> {
    try {
      await this.store.flush().catch(() => undefined);
      if (clean) {
        await this.saveAllBitmaps();
        await this.al.clean();
        await this.change({ primary: false, crashedPrimary: false });
      }
    } finally {
      await this.store.close();
      await this.meta.close();
    }
  }
}

/**
 * Tests only: MIRRORBD_TEST_FAULTS holds JSON {"<disk path>": {"op": "write",
 * "afterCalls": 20, "errno": "EIO"}} and makes that disk fail like a dying
 * one (docs/storage.md). Unset in production; a malformed value is ignored
 * with a warning rather than risking a real disk.
 */
function testFaults(disk: string, log: Logger): PositionalIo | undefined {
  const raw = process.env.MIRRORBD_TEST_FAULTS;
  if (!raw) return undefined;
  try {
    const rule = (JSON.parse(raw) as Record<string, unknown>)[disk];
    if (rule === undefined) return undefined;
    if (!isFaultRule(rule)) throw new Error('not a fault rule');
    log.warn({ disk, rule }, 'TEST FAULT INJECTION is on for this disk');
    return faultyIo(nodePositionalIo, rule);
  } catch (e) {
    log.warn({ err: (e as Error).message }, 'MIRRORBD_TEST_FAULTS ignored');
    return undefined;
  }
}
