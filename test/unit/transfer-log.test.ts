import { describe, expect, it } from 'vitest';
import { TransferLog, type PeerOutcome } from '../../src/replication/transfer-log.js';

function recorder(): { seen: Map<number, PeerOutcome>; cb: (seq: number) => (o: PeerOutcome) => void } {
  const seen = new Map<number, PeerOutcome>();
  return { seen, cb: (seq) => (o) => seen.set(seq, o) };
}

describe('transfer log', () => {
  it('protocol C: a write counts when the peer has written it, and leaves the log at its barrier', () => {
    const tl = new TransferLog('C');
    const r = recorder();
    tl.add(1, 0, 4096, 0, r.cb(1));
    expect(r.seen.size).toBe(0);
    expect(tl.received(1)).toBe(true);
    expect(r.seen.size).toBe(0);
    expect(tl.written(1)).toBe(true);
    expect(r.seen.get(1)).toBe('ok');
    // written but not yet flushed on the peer: still at risk, still logged
    expect(tl.size).toBe(1);
    expect(tl.barrierDone(0)).toBe(1);
    expect(tl.size).toBe(0);
    expect(tl.written(1)).toBe(false);
  });

  it('protocol B: counts on receipt but stays until its epoch is acknowledged', () => {
    const tl = new TransferLog('B');
    const r = recorder();
    tl.add(1, 0, 4096, 7, r.cb(1));
    tl.add(2, 4096, 4096, 8, r.cb(2));
    tl.received(1);
    expect(r.seen.get(1)).toBe('ok');
    expect(tl.size).toBe(2);
    expect(tl.barrierDone(7)).toBe(1);
    expect(tl.size).toBe(1);
  });

  it('protocol A: counts at once; the epoch acknowledgement empties it', () => {
    const tl = new TransferLog('A');
    const r = recorder();
    tl.add(1, 0, 4096, 1, r.cb(1));
    expect(r.seen.get(1)).toBe('ok');
    expect(tl.size).toBe(1);
    tl.barrierDone(1);
    expect(tl.size).toBe(0);
  });

  it('G1: a lost peer hands back every unconfirmed range; writers complete only on release', () => {
    for (const protocol of ['A', 'B', 'C'] as const) {
      const tl = new TransferLog(protocol);
      const r = recorder();
      tl.add(1, 0, 4096, 1, r.cb(1));
      tl.add(2, 8192, 512, 1, r.cb(2));
      tl.add(3, 65536, 4096, 2, r.cb(3));
      tl.written(3);
      tl.barrierDone(1);
      const lost = tl.takeLost();
      // epoch 2 was never confirmed stable: seq 3 is handed back too
      expect(lost.ranges).toEqual([{ offset: 65536, length: 4096 }]);
      expect(tl.size).toBe(0);
      lost.release();
      // the barrier settled 1 and 2 as confirmed; 3 was acknowledged by WRITE_ACK
      expect(r.seen.get(1)).toBe('ok');
      expect(r.seen.get(3)).toBe('ok');
    }
  });

  it('a write unanswered when the peer is lost completes as lost, only after release', () => {
    const tl = new TransferLog('C');
    const r = recorder();
    tl.add(1, 0, 4096, 1, r.cb(1));
    const lost = tl.takeLost();
    expect(lost.ranges).toEqual([{ offset: 0, length: 4096 }]);
    expect(r.seen.has(1)).toBe(false);
    lost.release();
    expect(r.seen.get(1)).toBe('lost');
  });

  it('a failed peer write returns its range and tells the writer', () => {
    const tl = new TransferLog('C');
    const r = recorder();
    tl.add(5, 12288, 4096, 1, r.cb(5));
    expect(tl.failed(5)).toEqual({ offset: 12288, length: 4096 });
    expect(r.seen.get(5)).toBe('failed');
    expect(tl.failed(5)).toBeNull();
  });

  it('refuses a sequence number twice', () => {
    const tl = new TransferLog('C');
    tl.add(1, 0, 1, 0, () => undefined);
    expect(() => tl.add(1, 0, 1, 0, () => undefined)).toThrow(/twice/);
  });
});
