/**
 * Verification: read the blocks an ack log wrote and judge each against
 * what the log says must be there.
 *
 * A block's required write is its latest acknowledged write, or with
 * `crash` (every node crashed) its latest durable one (FUA, or acknowledged
 * before an acknowledged FLUSH). The block must hold that write or a later
 * one that was sent to it: an unacknowledged write may land as well as not,
 * and the workload never has two writes to one block in flight, so a later
 * sequence is always the newer data. What it may not hold:
 *
 *   LOST     zeros, or an older write of this block, where a write was required
 *   TORN     a stamp whose crc fails, when no write after the required one
 *            was sent (one that was may have been cut short by the fault)
 *   FOREIGN  bytes that are no stamp, a stamp of another log, another
 *            block's stamp (a misdirected write), or a sequence never sent here
 *
 * Blocks without a required write hold no promise, except that a stamp of
 * this log must be a write that was sent to that very block.
 */
import { MirrorError } from '../errors.js';
import type { BlockSource } from './block-source.js';
import { tallyOf, type BlockHistory, type LogHistory, type LogTally } from './history.js';
import { STAMP_BLOCK_BYTES, decodeStamp, type DecodedBlock } from './stamp.js';

export type VerifyMode = 'acknowledged' | 'crash';

export const VIOLATION_KINDS = ['lost', 'torn', 'foreign'] as const;
export type ViolationKind = (typeof VIOLATION_KINDS)[number];

/** Every way a block can turn out; the first six are fine. */
export type BlockOutcome =
  /** Holds its latest acknowledged write. */
  | 'present'
  /** Holds a later write that was sent but not acknowledged. */
  | 'superseded'
  /** crash mode: holds an older state than its latest acknowledged write, but not older than its latest durable one. */
  | 'rolledBack'
  /** All zeros, and nothing was required. */
  | 'unwritten'
  /** Nothing was acknowledged here; it holds an unacknowledged write or what was there before. */
  | 'unacknowledged'
  /** A torn stamp, explained by a write that may have been in flight. */
  | 'tornInFlight'
  | ViolationKind;

export const BLOCK_OUTCOMES: readonly BlockOutcome[] = [
  'present',
  'superseded',
  'rolledBack',
  'unwritten',
  'unacknowledged',
  'tornInFlight',
  ...VIOLATION_KINDS,
];

export interface Judgement {
  outcome: BlockOutcome;
  /** Why, for violations: what the block holds and what was required. */
  detail?: string;
}

export interface JudgeContext {
  logId: string;
  writer: number;
  /** Highest sequence in the log. */
  lastSeq: number;
  /** The log holds every write ever sent (its last run ended cleanly). */
  complete: boolean;
  mode: VerifyMode;
}

/** The verdict on one block. Pure. */
export function judgeBlock(block: number, content: DecodedBlock, hist: BlockHistory | undefined, ctx: JudgeContext): Judgement {
  const acked = hist?.latestAcked ?? null;
  const required = ctx.mode === 'crash' ? (hist?.latestDurable ?? null) : acked;
  const why = required === null ? '' : `write ${required} was ${ctx.mode === 'crash' ? 'made durable (acknowledged before an acknowledged FLUSH, or with FUA)' : 'acknowledged'}`;
  // Nothing required: an acknowledged write that was not durable may be gone after a crash of every node.
  const noPromise = (): Judgement => ({ outcome: acked === null ? 'unacknowledged' : 'rolledBack' });

  switch (content.kind) {
    case 'zero':
      if (required !== null) return { outcome: 'lost', detail: `holds zeros; ${why}` };
      return acked === null ? { outcome: 'unwritten' } : { outcome: 'rolledBack' };
    case 'foreign':
      if (required !== null) return { outcome: 'foreign', detail: `${content.reason}; ${why}` };
      return noPromise();
    case 'torn': {
      const last = hist?.sent[hist.sent.length - 1];
      if (last !== undefined && last > (required ?? 0)) return { outcome: 'tornInFlight' };
      if (required !== null) return { outcome: 'torn', detail: `${content.reason}; ${why} and no later write was sent` };
      if (content.claimed.logId === ctx.logId) return { outcome: 'torn', detail: `${content.reason}; a stamp of this log, though no write was sent to this block` };
      return noPromise();
    }
    case 'stamp': {
      if (content.logId !== ctx.logId || content.writer !== ctx.writer) {
        if (required === null) return noPromise();
        return { outcome: 'foreign', detail: `holds a stamp of another check log (log ${content.logId}, writer ${content.writer}, write ${content.sequence}); ${why}` };
      }
      const s = content.sequence;
      if (content.block !== block) return { outcome: 'foreign', detail: `holds write ${s} of block ${content.block}: a misdirected write` };
      // A write past the log's end: its record was lost with the checker's machine; it is newer than anything logged.
      const pastLog = !ctx.complete && s > ctx.lastSeq;
      if (!pastLog && !(hist !== undefined && sortedHas(hist.sent, s))) {
        return { outcome: 'foreign', detail: `holds write ${s}, which was never sent to this block` };
      }
      if (required !== null && s < required) return { outcome: 'lost', detail: `holds the older write ${s}; ${why}` };
      if (acked === null) return { outcome: 'unacknowledged' };
      if (s === acked) return { outcome: 'present' };
      return s > acked ? { outcome: 'superseded' } : { outcome: 'rolledBack' };
    }
  }
}

function sortedHas(a: readonly number[], v: number): boolean {
  let lo = 0;
  let hi = a.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const x = a[mid]!;
    if (x === v) return true;
    if (x < v) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}

// --- reading a target -------------------------------------------------------------

export interface Violation {
  kind: ViolationKind;
  block: number;
  offset: number;
  detail: string;
}

export interface VerifyReport {
  ok: boolean;
  mode: VerifyMode;
  target: string;
  logId: string;
  /** Writes whose survival was checked: acknowledged ones, or with `crash` durable ones. */
  checkedWrites: number;
  /** Blocks that had a required write. */
  checkedBlocks: number;
  blocksRead: number;
  counts: Record<BlockOutcome, number>;
  /** The first violations by block number (all are counted). */
  violations: Violation[];
  log: LogTally;
}

export interface VerifyOptions {
  history: LogHistory;
  source: BlockSource;
  mode?: VerifyMode;
  /** Read every block of the log's range, not only those it wrote: finds misdirected writes. */
  fullRange?: boolean;
  /** Violations listed in the report. Default 100. */
  maxListed?: number;
  /** Reads in flight. Default 4. */
  readDepth?: number;
}

/** One read covers at most this much (contiguous blocks). */
const READ_SPAN_BYTES = 256 * 1024;

export async function verifyLog(o: VerifyOptions): Promise<VerifyReport> {
  const { history: h, source } = o;
  const mode = o.mode ?? 'acknowledged';
  const maxListed = o.maxListed ?? 100;
  const end = h.header.firstBlock + h.header.blocks;
  if (end * STAMP_BLOCK_BYTES > source.sizeBytes) {
    throw new MirrorError('ERR_IO', `${source.name} has ${source.sizeBytes} bytes; the log's blocks ${h.header.firstBlock}..${end - 1} need ${end * STAMP_BLOCK_BYTES}`, {
      target: source.name,
    });
  }
  const ctx: JudgeContext = { logId: h.header.logId, writer: h.header.writer, lastSeq: h.lastSeq, complete: h.complete, mode };
  const counts = Object.fromEntries(BLOCK_OUTCOMES.map((k) => [k, 0])) as Record<BlockOutcome, number>;
  const violations: Violation[] = [];
  let checkedBlocks = 0;
  let blocksRead = 0;

  const blocks = o.fullRange ? null : [...h.blocks.keys()].sort((a, b) => a - b);
  const spans = readSpans(blocks, h.header.firstBlock, end, Math.max(1, Math.floor(Math.min(READ_SPAN_BYTES, source.maxReadBytes) / STAMP_BLOCK_BYTES)));
  const judgeSpan = (first: number, data: Buffer): void => {
    for (let i = 0; i * STAMP_BLOCK_BYTES < data.length; i++) {
      const block = first + i;
      const hist = h.blocks.get(block);
      const required = mode === 'crash' ? hist?.latestDurable : hist?.latestAcked;
      if (required !== null && required !== undefined) checkedBlocks++;
      const j = judgeBlock(block, decodeStamp(data.subarray(i * STAMP_BLOCK_BYTES, (i + 1) * STAMP_BLOCK_BYTES)), hist, ctx);
      counts[j.outcome]++;
      blocksRead++;
      if (isViolation(j.outcome) && violations.length < maxListed) {
        violations.push({ kind: j.outcome, block, offset: block * STAMP_BLOCK_BYTES, detail: j.detail ?? '' });
      }
    }
  };

  // Reads run ahead `readDepth` spans; results are judged in order, so the
  // listed violations are always the first ones by block number.
  const depth = Math.max(1, o.readDepth ?? 4);
  const ahead: Array<{ first: number; data: Promise<Buffer> }> = [];
  let next = 0;
  const fill = (): void => {
    while (ahead.length < depth && next < spans.length) {
      const [first, count] = spans[next++]!;
      const data = source.read(first * STAMP_BLOCK_BYTES, count * STAMP_BLOCK_BYTES);
      data.catch(() => undefined); // awaited in order below; never unhandled meanwhile
      ahead.push({ first, data });
    }
  };
  fill();
  while (ahead.length > 0) {
    const { first, data } = ahead.shift()!;
    judgeSpan(first, await data);
    fill();
  }

  const ok = VIOLATION_KINDS.every((k) => counts[k] === 0);
  return {
    ok,
    mode,
    target: source.name,
    logId: h.header.logId,
    checkedWrites: mode === 'crash' ? h.writesDurable : h.writesAcked,
    checkedBlocks,
    blocksRead,
    counts,
    violations,
    log: tallyOf(h),
  };
}

export function isViolation(o: BlockOutcome): o is ViolationKind {
  return o === 'lost' || o === 'torn' || o === 'foreign';
}

/**
 * [first block, count] reads: runs of consecutive `blocks` (sorted), or the
 * whole range when `blocks` is null, each at most `maxBlocks` long.
 */
export function readSpans(blocks: readonly number[] | null, first: number, end: number, maxBlocks: number): Array<[number, number]> {
  const spans: Array<[number, number]> = [];
  if (blocks === null) {
    for (let b = first; b < end; b += maxBlocks) spans.push([b, Math.min(maxBlocks, end - b)]);
    return spans;
  }
  for (const b of blocks) {
    const last = spans[spans.length - 1];
    if (last !== undefined && last[0] + last[1] === b && last[1] < maxBlocks) last[1]++;
    else spans.push([b, 1]);
  }
  return spans;
}
