/**
 * What an ack log says about each block: the writes sent to it, the latest
 * one the server acknowledged, and the latest one that was durable (so must
 * survive even a crash of every node). Pure: a parsed log in, a table out.
 *
 * Durable, as NBD defines it: a write acknowledged with FUA, or a write
 * acknowledged before a FLUSH was sent that was then acknowledged. The log's
 * line order is the order the checker saw, so "acknowledged before the
 * FLUSH was sent" is "its ack line comes before the flush line".
 */
import type { AckLogHeader, ParsedAckLog } from './ack-log-format.js';

export interface BlockHistory {
  /** Sequences of the writes sent to this block, ascending. */
  sent: number[];
  latestAcked: number | null;
  latestDurable: number | null;
}

/** What a log holds, counted: the part of its history a report shows. */
export interface LogTally {
  /**
   * The log's last run wrote its end record and nothing follows: every
   * write ever sent is in it. Otherwise the checker may have died (or its
   * machine crashed) and a write past lastSeq may exist.
   */
  complete: boolean;
  runs: number;
  writesSent: number;
  writesAcked: number;
  writesFailed: number;
  /** Acknowledged writes that were durable (FUA, or covered by an acknowledged FLUSH). */
  writesDurable: number;
  flushesSent: number;
  flushesAcked: number;
}

export interface LogHistory extends LogTally {
  header: AckLogHeader;
  blocks: Map<number, BlockHistory>;
  /** Highest sequence the log holds. */
  lastSeq: number;
}

/** The tally alone (a report carries it without the blocks). */
export function tallyOf(h: LogHistory): LogTally {
  const { complete, runs, writesSent, writesAcked, writesFailed, writesDurable, flushesSent, flushesAcked } = h;
  return { complete, runs, writesSent, writesAcked, writesFailed, writesDurable, flushesSent, flushesAcked };
}

export function buildHistory(log: ParsedAckLog): LogHistory {
  const blocks = new Map<number, BlockHistory>();
  /** Sequence of each write sent -> its block and whether it had FUA. */
  const writes = new Map<number, { block: number; fua: boolean }>();
  /** Write sequences in the order of their acks. */
  const ackedInOrder: number[] = [];
  /** Flush sequence -> how many writes were acknowledged when it was sent. */
  const flushCovers = new Map<number, number>();
  /** ackedInOrder[0 .. durableUpTo) are durable by some acknowledged FLUSH. */
  let durableUpTo = 0;
  const durable = new Set<number>();
  const h: LogHistory = {
    header: log.header,
    blocks,
    lastSeq: log.lastSeq,
    complete: log.lastRunEnded && log.ignoredTailBytes === 0,
    runs: log.runs,
    writesSent: 0,
    writesAcked: 0,
    writesFailed: 0,
    writesDurable: 0,
    flushesSent: 0,
    flushesAcked: 0,
  };
  const makeDurable = (seq: number): void => {
    if (durable.has(seq)) return;
    durable.add(seq);
    const b = blocks.get(writes.get(seq)!.block)!;
    b.latestDurable = Math.max(b.latestDurable ?? 0, seq);
  };

  for (const r of log.records) {
    switch (r.t) {
      case 'write': {
        h.writesSent++;
        writes.set(r.seq, { block: r.block, fua: r.fua === true });
        let b = blocks.get(r.block);
        if (b === undefined) {
          b = { sent: [], latestAcked: null, latestDurable: null };
          blocks.set(r.block, b);
        }
        b.sent.push(r.seq); // sequences only grow (the parser checked), so this stays sorted
        break;
      }
      case 'flush':
        h.flushesSent++;
        flushCovers.set(r.seq, ackedInOrder.length);
        break;
      case 'ack': {
        const w = writes.get(r.seq);
        if (w !== undefined) {
          h.writesAcked++;
          ackedInOrder.push(r.seq);
          const b = blocks.get(w.block)!;
          b.latestAcked = Math.max(b.latestAcked ?? 0, r.seq);
          if (w.fua) makeDurable(r.seq);
        } else {
          h.flushesAcked++;
          const covers = flushCovers.get(r.seq)!;
          for (; durableUpTo < covers; durableUpTo++) makeDurable(ackedInOrder[durableUpTo]!);
        }
        break;
      }
      case 'fail':
        if (writes.has(r.seq)) h.writesFailed++;
        break;
      case 'run':
      case 'end':
        break;
    }
  }
  h.writesDurable = durable.size;
  return h;
}
