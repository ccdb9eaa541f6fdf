/**
 * The writes sent to one peer that the peer has not yet confirmed on its
 * disk. G1: when the connection is lost, every entry still here is marked
 * out of sync for that peer before the connection is let go, so nothing the
 * peer might have missed is forgotten.
 *
 * An entry leaves the log only when the peer confirms the write is on
 * stable storage: the BARRIER_ACK of its epoch (the peer flushes before it
 * answers a barrier). A WRITE_ACK says the write reached the peer's disk
 * cache, which is what protocol C's reply waits for, but a peer that crashes
 * before its next flush may still lose it, so the entry stays until then.
 * The NBD reply waits for the protocol's answer: sent (A), RECV_ACK (B) or
 * WRITE_ACK (C).
 */
import assert from 'node:assert/strict';
import type { ReplicationProtocol } from './wire/packets.js';

export type PeerOutcome = 'ok' | 'lost' | 'failed';

interface Entry {
  offset: number;
  length: number;
  epoch: number;
  sentAtMs: number;
  /** Called once, when the protocol's acknowledgement arrives or the peer is lost. */
  notify: ((outcome: PeerOutcome) => void) | null;
}

export interface LostRange {
  offset: number;
  length: number;
}

export class TransferLog {
  private readonly entries = new Map<number, Entry>();

  constructor(readonly protocol: ReplicationProtocol) {}

  get size(): number {
    return this.entries.size;
  }

  /**
   * Log a write sent to the peer. `notify` runs when the write counts as
   * acknowledged for the protocol (or the peer is lost); protocol A counts
   * it at once, as sent.
   */
  add(seq: number, offset: number, length: number, epoch: number, notify: (outcome: PeerOutcome) => void): void {
    assert.ok(!this.entries.has(seq), `sequence ${seq} logged twice`);
    const entry: Entry = { offset, length, epoch, sentAtMs: Date.now(), notify };
    this.entries.set(seq, entry);
    if (this.protocol === 'A') this.settle(entry, 'ok');
  }

  /** RECV_ACK: protocol B's acknowledgement; the entry stays until its barrier. */
  received(seq: number): boolean {
    const e = this.entries.get(seq);
    if (!e) return false;
    if (this.protocol === 'B') this.settle(e, 'ok');
    return true;
  }

  /** WRITE_ACK: the write is on the peer's disk (not yet flushed). */
  written(seq: number): boolean {
    const e = this.entries.get(seq);
    if (!e) return false;
    this.settle(e, 'ok');
    return true;
  }

  /**
   * NEG_ACK: the peer failed to write. The range must be resynced; the caller
   * marks it. The application's write still succeeded locally.
   */
  failed(seq: number): LostRange | null {
    const e = this.entries.get(seq);
    if (!e) return null;
    this.entries.delete(seq);
    this.settle(e, 'failed');
    return { offset: e.offset, length: e.length };
  }

  /** BARRIER_ACK: every write of epochs up to `epoch` is on the peer's stable storage. */
  barrierDone(epoch: number): number {
    let dropped = 0;
    for (const [seq, e] of this.entries) {
      if (e.epoch <= epoch) {
        this.settle(e, 'ok');
        this.entries.delete(seq);
        dropped++;
      }
    }
    return dropped;
  }

  /**
   * The connection is gone: return every range the peer may have missed and
   * empty the log. The caller marks them in the bitmap BEFORE calling
   * `release` on the result, which completes the waiting writes.
   */
  takeLost(): { ranges: LostRange[]; release: () => void } {
    const taken = [...this.entries.values()];
    this.entries.clear();
    return {
      ranges: taken.map((e) => ({ offset: e.offset, length: e.length })),
      release: () => {
        for (const e of taken) this.settle(e, 'lost');
      },
    };
  }

  /**
   * How long the oldest write still waiting for its protocol's answer has
   * waited (0 when none waits): what ko-count watches.
   */
  oldestUnansweredMs(nowMs: number): number {
    let oldest = nowMs;
    for (const e of this.entries.values()) if (e.notify !== null && e.sentAtMs < oldest) oldest = e.sentAtMs;
    return nowMs - oldest;
  }

  private settle(e: Entry, outcome: PeerOutcome): void {
    const notify = e.notify;
    if (notify === null) return;
    e.notify = null;
    notify(outcome);
  }
}
