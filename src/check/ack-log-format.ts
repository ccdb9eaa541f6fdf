/**
 * The ack log's format: one JSON object per line, appended as things happen.
 * Pure: records to text and text back to records; ack-log.ts owns the file.
 *
 *   {"t":"log","version":1,"logId":"…16 hex…","writer":1,"blockSize":4096,"firstBlock":0,"blocks":16384,"created":"…"}
 *   {"t":"run","run":1,"target":"nbd://…","seed":7,"queueDepth":8,"firstSeq":1,"started":"…"}
 *   {"t":"write","seq":1,"block":4711}          sent (recorded before it goes out)
 *   {"t":"write","seq":2,"block":12,"fua":true}
 *   {"t":"flush","seq":3}                       sent
 *   {"t":"ack","seq":1}                         the server acknowledged seq 1
 *   {"t":"fail","seq":2,"error":"EIO"}          the server answered seq 2 with an error
 *   {"t":"end","run":1,"reason":"…","ended":"…"}
 *
 * Writes and flushes share one sequence that only grows, across runs of the
 * same log. The order of lines is the order the checker saw things happen:
 * a flush covers exactly the writes whose "ack" line comes before its
 * "flush" line. A record counts once its newline is written; a last line
 * without one (the checker was killed mid-write) is ignored, as is a tail
 * of NUL bytes (a file extended by a crash before its data reached the disk).
 */
import { STAMP_BLOCK_BYTES, isLogId } from './stamp.js';

export const ACK_LOG_VERSION = 1;

export interface AckLogHeader {
  t: 'log';
  version: number;
  logId: string;
  writer: number;
  blockSize: number;
  /** The workload writes blocks firstBlock .. firstBlock + blocks - 1 (4 KiB blocks of the export). */
  firstBlock: number;
  blocks: number;
  created: string;
}

export interface RunRecord {
  t: 'run';
  run: number;
  target: string;
  seed: number;
  queueDepth: number;
  /** The first sequence this run may use. */
  firstSeq: number;
  started: string;
}

export type AckLogRecord =
  | RunRecord
  | { t: 'write'; seq: number; block: number; fua?: boolean }
  | { t: 'flush'; seq: number }
  | { t: 'ack'; seq: number }
  | { t: 'fail'; seq: number; error: string }
  | { t: 'end'; run: number; reason: string; ended: string };

export interface ParsedAckLog {
  header: AckLogHeader;
  records: AckLogRecord[];
  /** Bytes of whole records (header included): where an appender continues. */
  validBytes: number;
  /** Bytes after the last whole record (a record cut short, or NUL padding). */
  ignoredTailBytes: number;
  /** Highest sequence of any write or flush; 0 if none. */
  lastSeq: number;
  /** Runs in the log, and whether the last one wrote its end record. */
  runs: number;
  lastRunEnded: boolean;
}

export type ParseResult = { ok: true; log: ParsedAckLog } | { ok: false; line: number; reason: string };

// --- encoding ------------------------------------------------------------------

/** One record as its line. Writes and acks are the bulk: built without JSON.stringify. */
export function encodeRecord(r: AckLogRecord | AckLogHeader): string {
  switch (r.t) {
    case 'write':
      return r.fua === true ? `{"t":"write","seq":${r.seq},"block":${r.block},"fua":true}\n` : `{"t":"write","seq":${r.seq},"block":${r.block}}\n`;
    case 'ack':
      return `{"t":"ack","seq":${r.seq}}\n`;
    case 'flush':
      return `{"t":"flush","seq":${r.seq}}\n`;
    default:
      return `${JSON.stringify(r)}\n`;
  }
}

// --- decoding ------------------------------------------------------------------

const NUL = 0;
const NEWLINE = 0x0a;

/**
 * Parses a whole log and checks it makes sense: a header first, a run
 * before any write, sequences that only grow, acks and failures only of
 * requests that were sent and not yet answered, blocks inside the range.
 */
export function parseAckLog(bytes: Buffer): ParseResult {
  const nul = bytes.indexOf(NUL);
  const usable = nul === -1 ? bytes.length : nul;
  // (lastIndexOf with a negative start would count from the end: guard 0.)
  const validBytes = usable === 0 ? 0 : bytes.lastIndexOf(NEWLINE, usable - 1) + 1;
  const lines = bytes.toString('utf8', 0, validBytes).split('\n');
  lines.pop(); // the empty string after the last newline
  if (lines.length === 0) return { ok: false, line: 1, reason: 'no header: the log is empty or its first line is incomplete' };

  const header = parseHeader(lines[0]!);
  if (typeof header === 'string') return { ok: false, line: 1, reason: header };

  const records: AckLogRecord[] = [];
  /** Sent and not yet answered: seq -> 'write' | 'flush'. */
  const outstanding = new Map<number, 'write' | 'flush'>();
  let lastSeq = 0;
  let runs = 0;
  let lastRunEnded = false;
  const end = header.firstBlock + header.blocks;
  for (let i = 1; i < lines.length; i++) {
    const line = i + 1;
    const r = parseRecord(lines[i]!);
    if (typeof r === 'string') return { ok: false, line, reason: r };
    switch (r.t) {
      case 'run':
        if (r.run !== runs + 1) return { ok: false, line, reason: `run ${r.run} follows run ${runs}` };
        if (r.firstSeq <= lastSeq) return { ok: false, line, reason: `run ${r.run} starts at sequence ${r.firstSeq}, not after ${lastSeq}` };
        runs = r.run;
        lastRunEnded = false;
        break;
      case 'write':
      case 'flush':
        if (runs === 0 || lastRunEnded) return { ok: false, line, reason: `${r.t} outside a run` };
        if (r.seq <= lastSeq) return { ok: false, line, reason: `sequence ${r.seq} does not follow ${lastSeq}` };
        if (r.t === 'write' && (r.block < header.firstBlock || r.block >= end)) {
          return { ok: false, line, reason: `block ${r.block} is outside the log's range ${header.firstBlock}..${end - 1}` };
        }
        lastSeq = r.seq;
        outstanding.set(r.seq, r.t);
        break;
      case 'ack':
      case 'fail':
        if (!outstanding.delete(r.seq)) return { ok: false, line, reason: `${r.t} of sequence ${r.seq}, which is not awaiting an answer` };
        break;
      case 'end':
        if (r.run !== runs || lastRunEnded) return { ok: false, line, reason: `end of run ${r.run}, which is not running` };
        lastRunEnded = true;
        break;
    }
    records.push(r);
  }
  return { ok: true, log: { header, records, validBytes, ignoredTailBytes: bytes.length - validBytes, lastSeq, runs, lastRunEnded } };
}

function parseObject(text: string): Record<string, unknown> | string {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return 'not a JSON object';
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return 'not a JSON object';
  return v as Record<string, unknown>;
}

function parseHeader(text: string): AckLogHeader | string {
  const o = parseObject(text);
  if (typeof o === 'string') return `header: ${o}`;
  if (o.t !== 'log') return 'not a mirrorbd check log (the first line is no {"t":"log",...} header)';
  if (o.version !== ACK_LOG_VERSION) return `log format version ${String(o.version)}; this checker reads version ${ACK_LOG_VERSION}`;
  if (typeof o.logId !== 'string' || !isLogId(o.logId)) return 'header: logId must be 16 lower-case hex digits';
  if (!isCount(o.writer) || o.writer > 0xffff_ffff) return 'header: writer must be an integer 0..4294967295';
  if (o.blockSize !== STAMP_BLOCK_BYTES) return `header: blockSize must be ${STAMP_BLOCK_BYTES}`;
  if (!isCount(o.firstBlock)) return 'header: firstBlock must be a non-negative integer';
  if (!isCount(o.blocks) || o.blocks === 0) return 'header: blocks must be a positive integer';
  if (typeof o.created !== 'string') return 'header: created must be a string';
  return {
    t: 'log',
    version: o.version,
    logId: o.logId,
    writer: o.writer,
    blockSize: o.blockSize,
    firstBlock: o.firstBlock,
    blocks: o.blocks,
    created: o.created,
  };
}

function parseRecord(text: string): AckLogRecord | string {
  const o = parseObject(text);
  if (typeof o === 'string') return o;
  switch (o.t) {
    case 'write':
      if (!isSeq(o.seq) || !isCount(o.block)) return 'write needs a positive seq and a block';
      if (o.fua !== undefined && typeof o.fua !== 'boolean') return 'write: fua must be true or false';
      return o.fua === true ? { t: 'write', seq: o.seq, block: o.block, fua: true } : { t: 'write', seq: o.seq, block: o.block };
    case 'flush':
    case 'ack':
      if (!isSeq(o.seq)) return `${o.t} needs a positive seq`;
      return { t: o.t, seq: o.seq };
    case 'fail':
      if (!isSeq(o.seq) || typeof o.error !== 'string') return 'fail needs a positive seq and an error';
      return { t: 'fail', seq: o.seq, error: o.error };
    case 'run':
      if (!isSeq(o.run) || !isSeq(o.firstSeq) || !isCount(o.seed) || !isSeq(o.queueDepth)) {
        return 'run needs run, firstSeq, seed and queueDepth';
      }
      if (typeof o.target !== 'string' || typeof o.started !== 'string') return 'run needs target and started';
      return { t: 'run', run: o.run, target: o.target, seed: o.seed, queueDepth: o.queueDepth, firstSeq: o.firstSeq, started: o.started };
    case 'end':
      if (!isSeq(o.run) || typeof o.reason !== 'string' || typeof o.ended !== 'string') return 'end needs run, reason and ended';
      return { t: 'end', run: o.run, reason: o.reason, ended: o.ended };
    case 'log':
      return 'a second header';
    default:
      return `unknown record type ${JSON.stringify(o.t)}`;
  }
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function isSeq(v: unknown): v is number {
  return isCount(v) && v > 0;
}
