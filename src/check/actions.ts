/**
 * The three checks end to end, by URI and path: what `mirrorbd check`
 * runs, and what a test suite calls to do the same without a process.
 * Each opens what it needs and closes it again, also when it fails.
 */
import { randomInt } from 'node:crypto';
import { MirrorError } from '../errors.js';
import type { AckLogHeader } from './ack-log-format.js';
import { AckLogWriter, readAckLog } from './ack-log.js';
import { openBlockSource } from './block-source.js';
import { compareSources, dataAreaBytes, type CompareReport } from './compare.js';
import { buildHistory } from './history.js';
import { NbdClient } from './nbd-client.js';
import { parseNbdUri, type NbdUri } from './nbd-uri.js';
import { STAMP_BLOCK_BYTES } from './stamp.js';
import { verifyLog, type VerifyMode, type VerifyReport } from './verify.js';
import { DEFAULT_BLOCKS } from './defaults.js';
import { runWorkload, type WorkloadOptions, type WorkloadResult } from './workload.js';

export interface WriteCheckOptions
  extends Pick<
    WorkloadOptions,
    'queueDepth' | 'writes' | 'durationMs' | 'flushEvery' | 'flushIntervalMs' | 'fuaEvery' | 'signal' | 'drainTimeoutMs' | 'replyTimeoutMs' | 'onProgress' | 'progressIntervalMs'
  > {
  uri: string | NbdUri;
  logPath: string;
  /** Continue the log at logPath (its range and writer) instead of creating it. */
  append?: boolean;
  /** New log only: the range of 4 KiB blocks, and the writer id. */
  firstBlock?: number;
  blocks?: number;
  writer?: number;
  /** Random when not given; recorded in the log. */
  seed?: number;
  /** Called once the connection and the log are ready, before the first write. */
  onStart?: (header: AckLogHeader) => void;
}

export interface WriteCheckResult extends WorkloadResult {
  logPath: string;
  logId: string;
}

/** Connects, creates (or continues) the log, runs the workload to its end. */
export async function writeCheck(o: WriteCheckOptions): Promise<WriteCheckResult> {
  const uri = typeof o.uri === 'string' ? uriOrThrow(o.uri) : o.uri;
  if (o.append && (o.blocks !== undefined || o.firstBlock !== undefined || o.writer !== undefined)) {
    throw new MirrorError('ERR_IO', 'the range and writer of a continued log come from the log itself', { path: o.logPath });
  }
  const client = await NbdClient.connect(uri);
  let log: AckLogWriter;
  try {
    if (client.readOnly) throw new MirrorError('ERR_IO', `${uri.text}: the export is read-only`, { target: uri.text });
    if (o.append) {
      log = (await AckLogWriter.append(o.logPath)).writer;
    } else {
      const exportBlocks = Math.floor(client.sizeBytes / STAMP_BLOCK_BYTES);
      const firstBlock = o.firstBlock ?? 0;
      if (firstBlock >= exportBlocks) {
        throw new MirrorError('ERR_IO', `${uri.text} has ${exportBlocks} blocks; the first block ${firstBlock} is beyond them`, { target: uri.text });
      }
      const blocks = o.blocks ?? Math.min(DEFAULT_BLOCKS, exportBlocks - firstBlock);
      log = await AckLogWriter.create(o.logPath, { writer: o.writer ?? 1, firstBlock, blocks });
    }
  } catch (e) {
    client.destroy('the check could not start');
    throw e;
  }
  try {
    o.onStart?.(log.header);
    const result = await runWorkload({
      target: client,
      targetName: uri.text,
      log,
      seed: o.seed ?? randomInt(0, 0x1_0000_0000),
      queueDepth: o.queueDepth,
      writes: o.writes,
      durationMs: o.durationMs,
      flushEvery: o.flushEvery,
      flushIntervalMs: o.flushIntervalMs,
      fuaEvery: o.fuaEvery,
      signal: o.signal,
      drainTimeoutMs: o.drainTimeoutMs,
      replyTimeoutMs: o.replyTimeoutMs,
      onProgress: o.onProgress,
      progressIntervalMs: o.progressIntervalMs,
    });
    return { logPath: o.logPath, logId: log.header.logId, ...result };
  } finally {
    client.destroy('the check ended'); // a no-op after the workload's own close; not when it could not start
    await log.close();
  }
}

export interface VerifyCheckOptions {
  /** An NBD URI, or a disk or file path. */
  target: string;
  logPath: string;
  mode?: VerifyMode;
  fullRange?: boolean;
  maxListed?: number;
}

export async function verifyCheck(o: VerifyCheckOptions): Promise<VerifyReport> {
  const history = buildHistory(await readAckLog(o.logPath));
  const source = await openBlockSource(o.target);
  try {
    return await verifyLog({ history, source, mode: o.mode, fullRange: o.fullRange, maxListed: o.maxListed });
  } finally {
    await source.close();
  }
}

export interface CompareCheckOptions {
  /** NBD URIs, or disk or file paths. */
  a: string;
  b: string;
  offset?: number;
  /** Bytes from offset; by default up to the end of the smaller, or of the data area with `dataArea`. */
  length?: number;
  /** Paths are mirrorbd disks with internal metadata: stop at the end of their data area. */
  dataArea?: boolean;
  maxListed?: number;
}

export async function compareCheck(o: CompareCheckOptions): Promise<CompareReport> {
  let length = o.length;
  if (length === undefined && o.dataArea) {
    const [x, y] = await Promise.all([dataAreaBytes(o.a), dataAreaBytes(o.b)]);
    if (x !== null && y !== null && x !== y) {
      // Replicas of one resource have one data size; anything else is a setup mistake, not a finding.
      throw new MirrorError('ERR_IO', `the data areas differ: ${o.a} has ${x} bytes, ${o.b} has ${y}; not replicas of one resource`, { a: o.a, b: o.b });
    }
    const area = x ?? y;
    if (area !== null) length = Math.max(0, area - (o.offset ?? 0));
  }
  const a = await openBlockSource(o.a);
  try {
    const b = await openBlockSource(o.b);
    try {
      return await compareSources({ a, b, offset: o.offset, length, maxListed: o.maxListed });
    } finally {
      await b.close();
    }
  } finally {
    await a.close();
  }
}

function uriOrThrow(text: string): NbdUri {
  const r = parseNbdUri(text);
  if (!r.ok) throw new MirrorError('ERR_IO', r.reason, { target: text });
  return r.uri;
}
