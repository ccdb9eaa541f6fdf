/**
 * The write path of a Primary (DESIGN, "The write path"): every write goes
 * to the local disk and, at the same time, to every peer that takes
 * replication; it completes when the local write is done and each peer has
 * answered as its protocol asks (A: sent, B: received, C: written). A peer
 * that does not take replication, or is lost before answering, has the range
 * marked in its bitmap first (G1), so a later resync brings it over.
 *
 * Writes carry an epoch. An epoch closes with a BARRIER, which the peer
 * answers once the epoch's writes are on its stable storage; NBD FLUSH closes
 * the current epoch and waits for those answers (G2). Epochs also close every
 * MAX_EPOCH_WRITES writes and shortly after writing stops, so the transfer
 * logs stay short.
 *
 * Overlapping writes take the write lock in arrival order and keep it until
 * the local write is done and the packet is queued to every peer: the order
 * of overlapping writes is then the same locally and on the wire, and peers
 * apply in wire order.
 */
import type { Logger } from 'pino';
import type { BlockStore } from '../../native-free-io/block-store.js';
import { piecesLength, writePieces } from '../../native-free-io/scattered.js';
import type { Bitmap } from '../meta/index.js';
import type { Peer, ReplicatedWrite, WriteKind } from './peer.js';
import type { RangeLock } from './range-lock.js';
import type { PeerOutcome } from './transfer-log.js';

export const MAX_EPOCH_WRITES = 1024;
export const EPOCH_IDLE_MS = 100;

/** The part of the activity log the write path uses (G3). */
export interface WriteIntent {
  beginWrite(offset: number, length: number): Promise<void>;
  endWrite(offset: number, length: number): void;
}

export interface ReplicatorOptions {
  /** The local disk; null while this node is diskless (writes go to peers only). */
  store: () => BlockStore | null;
  peers: () => readonly Peer[];
  /** Null for a peer without a bitmap here (a witness, or while this node is diskless). */
  bitmapFor: (peerNodeId: number) => Bitmap | null;
  writeLock: RangeLock;
  /** Flushes the local store (coalesced by the caller). */
  flushLocal: () => Promise<void>;
  intent: WriteIntent | null;
  /**
   * A write some peer did not confirm completes only through this: null to
   * go on, a promise to wait for (I/O suspended), or a rejection (the write
   * fails). A Primary without quorum must not tell a client such a write
   * is safe.
   */
  degradedGate?: () => Promise<void> | null;
  /**
   * Called with the write lock held, before the local write: a resync of
   * this node's own disk (a Primary that attached it again) must not let
   * an older copy of the range land after it.
   */
  beforeLocalWrite?: (offset: number, length: number) => void;
  log: Logger;
}

export interface ReplicatorCounters {
  writes: number;
  degradedWrites: number;
  epochs: number;
}

export class Replicator {
  private seq = 0;
  private epoch = 1;
  private epochWrites = 0;
  /** Every write of the current epoch went to every data peer (none was away). */
  private epochOnAllPeers = true;
  private epochTimer: NodeJS.Timeout | null = null;
  private inFlight = 0;
  private frozen: Promise<void> | null = null;
  private thaw: (() => void) | null = null;
  private idleWaiters: Array<() => void> = [];
  readonly counters: ReplicatorCounters = { writes: 0, degradedWrites: 0, epochs: 0 };

  constructor(private readonly o: ReplicatorOptions) {}

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.run('data', offset, data.length, fua, (st) => st.write(offset, data), { payload: data });
  }

  /**
   * A write whose payload is in pieces (as the NBD decoder received it):
   * one positional writev locally and the same pieces on the wire, so a
   * large write is never copied into one buffer.
   */
  writev(offset: number, parts: readonly Buffer[], fua: boolean): Promise<void> {
    const local = (st: BlockStore): Promise<void> => writePieces(st, offset, parts);
    return this.run('data', offset, piecesLength(parts), fua, local, { parts });
  }

  writeZeroes(offset: number, length: number, noHole: boolean, fua: boolean): Promise<void> {
    return this.run('zeroes', offset, length, fua, (st) => st.writeZeroes(offset, length, { noHole }), { noHole });
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.run('trim', offset, length, fua, (st) => st.trim(offset, length), {});
  }

  /** Local flush and every replicating peer's flush of all earlier writes (G2). */
  async flush(): Promise<void> {
    const peers = this.closeEpoch();
    if (this.o.store()) await this.o.flushLocal();
    await Promise.all(peers);
  }

  /**
   * Hold new writes and wait for those in flight; returns the function that
   * lets writes go again. Used while a peer's handshake decides what it lacks.
   */
  async freeze(): Promise<() => void> {
    while (this.frozen) await this.frozen;
    this.frozen = new Promise((resolve) => {
      this.thaw = resolve;
    });
    if (this.inFlight > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const thaw = this.thaw;
      this.frozen = null;
      this.thaw = null;
      thaw?.();
    };
  }

  /** Stop timers (down). */
  stop(): void {
    if (this.epochTimer) clearTimeout(this.epochTimer);
    this.epochTimer = null;
  }

  private async run(
    kind: WriteKind,
    offset: number,
    length: number,
    fua: boolean,
    local: (store: BlockStore) => Promise<void>,
    extra: { payload?: Buffer; parts?: readonly Buffer[]; noHole?: boolean },
  ): Promise<void> {
    while (this.frozen) await this.frozen;
    this.inFlight++;
    let degraded = false;
    try {
      const release = await this.o.writeLock.acquire(offset, length);
      this.o.beforeLocalWrite?.(offset, length);
      const store = this.o.store();
      const intent = store ? this.o.intent : null;
      let waits: Array<Promise<PeerOutcome>> = [];
      let intentTaken = false;
      try {
        if (intent) {
          await intent.beginWrite(offset, length);
          intentTaken = true;
        }
        // Close a full epoch before this write joins it, not when one completes.
        if (this.epochWrites >= MAX_EPOCH_WRITES) void Promise.all(this.closeEpoch());
        const w: ReplicatedWrite = { kind, seq: ++this.seq, epoch: this.epoch, offset, length, fua, ...extra };
        this.epochWrites++;
        const sent = this.send(w, store !== null);
        waits = sent.waits;
        // A data peer that does not take replication now (lost a moment
        // ago, or away) will not have this write: whether it may be
        // acknowledged is the degraded gate's call, as for a peer lost
        // while the write was in flight.
        if (sent.missed) degraded = true;
        if (store) {
          try {
            await local(store);
          } catch (e) {
            // The peers have the write, our disk may not: they must remember
            // that this range differs, whatever happens to our disk next.
            for (const peer of this.o.peers()) peer.markOutOfSync(offset, length);
            throw e;
          }
        } else if (waits.length === 0) {
          throw Object.assign(new Error('no local disk and no peer takes the write'), { errno: 'EIO' });
        }
      } finally {
        release();
        if (intentTaken) intent!.endWrite(offset, length);
      }
      if (fua && store) await this.o.flushLocal();
      if (waits.length > 0) {
        const outcomes = await Promise.all(waits);
        if (outcomes.some((o) => o !== 'ok')) degraded = true;
      }
      if (degraded) this.counters.degradedWrites++;
      this.counters.writes++;
      this.epochProgress();
    } finally {
      this.inFlight--;
      if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
    // Outside the in-flight count: a write held here is already marked for
    // every peer that lacks it, so a handshake (which freezes writes and
    // waits for those in flight) can go on while it waits.
    if (degraded) {
      const gate = this.o.degradedGate?.();
      if (gate) await gate;
    }
  }

  /** Queue the write to every replicating peer; mark it for the others (`missed`). */
  private send(w: ReplicatedWrite, haveBitmaps: boolean): { waits: Array<Promise<PeerOutcome>>; missed: boolean } {
    const waits: Array<Promise<PeerOutcome>> = [];
    let missed = false;
    for (const peer of this.o.peers()) {
      if (peer.peerIsWitness) continue;
      const p = peer.replicate(w);
      if (p === null) {
        this.epochOnAllPeers = false;
        if (haveBitmaps) this.o.bitmapFor(peer.nodeId)?.setRange(w.offset, w.length);
        missed = true;
      } else {
        waits.push(p);
      }
    }
    return { waits, missed };
  }

  private epochProgress(): void {
    if (this.epochWrites >= MAX_EPOCH_WRITES) {
      void this.closeEpoch();
      return;
    }
    if (this.epochTimer === null && this.epochWrites > 0) {
      this.epochTimer = setTimeout(() => {
        this.epochTimer = null;
        if (this.epochWrites > 0) void Promise.all(this.closeEpoch());
      }, EPOCH_IDLE_MS);
      this.epochTimer.unref();
    }
  }

  /** Close the current epoch; the answers of the peers that take replication. */
  private closeEpoch(): Array<Promise<PeerOutcome>> {
    const epoch = this.epoch;
    const hadWrites = this.epochWrites > 0;
    const onAll = this.epochOnAllPeers;
    this.epoch++;
    this.epochWrites = 0;
    this.epochOnAllPeers = true;
    this.counters.epochs++;
    if (this.epochTimer) clearTimeout(this.epochTimer);
    this.epochTimer = null;
    const waits: Array<Promise<PeerOutcome>> = [];
    const dataPeers = this.o.peers().filter((p) => !p.peerIsWitness);
    for (const peer of dataPeers) {
      const p = peer.barrier(epoch);
      if (p !== null) waits.push(p);
    }
    // Two or more Secondaries mark each other's blocks until they hear that
    // an epoch is on every data node (PEERS_IN_SYNC).
    if (hadWrites && onAll && dataPeers.length >= 2 && waits.length === dataPeers.length) {
      void Promise.all(waits).then((outcomes) => {
        if (outcomes.every((o) => o === 'ok')) for (const peer of dataPeers) peer.peersInSync(epoch);
      });
    }
    return waits;
  }
}
