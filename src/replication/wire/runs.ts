/**
 * The ranges ("runs") a batched resync request names, and the rule they
 * follow: 1..MAX_BATCH_RUNS of them, each non-empty and below 2^53, in
 * ascending order and disjoint. Written once, for the encoder (breaking it
 * is a caller bug) and the decoder (breaking it is a protocol violation).
 * Pure.
 */
import { MAX_BATCH_RUNS } from './constants.js';
import type { ResyncRun } from './packets.js';

const U32_MAX = 0xffff_ffff;
const TWO_POW_53 = 2 ** 53;

/** Null when `runs` follow the rule, else what is wrong (naming the run). */
export function runsProblem(runs: readonly ResyncRun[]): string | null {
  if (runs.length === 0 || runs.length > MAX_BATCH_RUNS) return `${runs.length} runs, not 1..${MAX_BATCH_RUNS}`;
  let end = 0;
  for (let i = 0; i < runs.length; i++) {
    const { offset, length } = runs[i]!;
    if (!Number.isSafeInteger(offset) || offset < 0) return `run ${i} offset ${offset} is not in 0..2^53-1`;
    if (!Number.isInteger(length) || length < 1 || length > U32_MAX) return `run ${i} length ${length} is not in 1..2^32-1`;
    // Not offset + length > 2^53: that sum may round down to 2^53.
    if (length > TWO_POW_53 - offset) return `run ${i} ends beyond 2^53`;
    if (offset < end) return `run ${i} at ${offset} is not after the end of run ${i - 1} (${end})`;
    end = offset + length;
  }
  return null;
}

/** The bytes the runs cover together. */
export function runsBytes(runs: readonly ResyncRun[]): number {
  let n = 0;
  for (const r of runs) n += r.length;
  return n;
}

/** Whether two run lists name the same ranges. */
export function sameRuns(a: readonly ResyncRun[], b: readonly ResyncRun[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i]!.offset !== b[i]!.offset || a[i]!.length !== b[i]!.length) return false;
  return true;
}
