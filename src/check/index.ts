/**
 * The acknowledged-write checker as a library (the CLI's `mirrorbd check`
 * is built on the same calls): stamped writes with an ack log, verification
 * of a target against the log after a fault, comparison of two replicas.
 *
 *   const run = await writeCheck({ uri: 'nbd://127.0.0.1:10809/r0', logPath, durationMs: 5000, signal });
 *   // ...kill the Primary, promote the other node...
 *   const report = await verifyCheck({ target: 'nbd://127.0.0.1:10810/r0', logPath, mode: 'crash' });
 *   expect(report.ok).toBe(true);
 *
 * The pieces (NbdClient, AckLogWriter, runWorkload, buildHistory, verifyLog)
 * are exported too, for a workload driven over a connection of one's own.
 */
export {
  writeCheck,
  verifyCheck,
  compareCheck,
  type WriteCheckOptions,
  type WriteCheckResult,
  type VerifyCheckOptions,
  type CompareCheckOptions,
} from './actions.js';
export { DEFAULT_BLOCKS, DEFAULT_FLUSH_EVERY, DEFAULT_QUEUE_DEPTH } from './defaults.js';
export { STAMP_BLOCK_BYTES, decodeStamp, encodeStamp, type DecodedBlock, type StampFields } from './stamp.js';
export { encodeRecord, parseAckLog, type AckLogHeader, type AckLogRecord, type ParsedAckLog } from './ack-log-format.js';
export { AckLogWriter, readAckLog, type NewLogOptions } from './ack-log.js';
export { parseNbdUri, looksLikeNbdUri, type NbdUri } from './nbd-uri.js';
export { NbdClient, NbdCommandError, NbdConnectionLost } from './nbd-client.js';
export { openBlockSource, nbdSource, type BlockSource } from './block-source.js';
export {
  runWorkload,
  realClock,
  seededRandom,
  type Clock,
  type StopKind,
  type WorkloadOptions,
  type WorkloadResult,
  type WriteTarget,
} from './workload.js';
export { buildHistory, tallyOf, type BlockHistory, type LogHistory, type LogTally } from './history.js';
export {
  judgeBlock,
  verifyLog,
  isViolation,
  BLOCK_OUTCOMES,
  type BlockOutcome,
  type VerifyMode,
  type VerifyOptions,
  type VerifyReport,
  type Violation,
} from './verify.js';
export { compareSources, dataAreaBytes, type CompareOptions, type CompareReport } from './compare.js';
export { formatCompare, formatVerify, formatWrite } from './report.js';
