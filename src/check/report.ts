/**
 * The checker's words for people: one verdict line first (what a script
 * or a tired operator reads), details indented below. Pure: reports in,
 * text out. Scripts read `--json` instead, which prints the reports as they are.
 */
import type { CompareReport } from './compare.js';
import type { VerifyReport } from './verify.js';
import type { WorkloadResult } from './workload.js';

const n = (v: number): string => v.toLocaleString('en-US');
const plural = (v: number, one: string, many = `${one}s`): string => `${n(v)} ${v === 1 ? one : many}`;

/** Violations listed in the text (the JSON holds all the report kept). */
export const TEXT_VIOLATIONS = 20;

export function formatVerify(r: VerifyReport): string {
  const c = r.counts;
  const what =
    r.mode === 'crash'
      ? `${plural(r.checkedWrites, 'durable write')} (acknowledged before an acknowledged FLUSH, or with FUA)`
      : plural(r.checkedWrites, 'acknowledged write');
  const tally = `${n(c.lost)} lost, ${n(c.torn)} torn, ${n(c.foreign)} foreign`;
  const lines = [
    r.ok
      ? `check: OK — ${what} to ${plural(r.checkedBlocks, 'block')} checked on ${r.target}: ${tally}`
      : `check: FAILED — ${tally}; ${what} to ${plural(r.checkedBlocks, 'block')} checked on ${r.target}`,
  ];
  for (const v of r.violations.slice(0, TEXT_VIOLATIONS)) {
    lines.push(`  ${v.kind.toUpperCase().padEnd(7)} block ${v.block} (offset ${v.offset}): ${v.detail}`);
  }
  const violations = c.lost + c.torn + c.foreign;
  const listed = Math.min(r.violations.length, TEXT_VIOLATIONS);
  if (violations > listed) lines.push(`  ...and ${n(violations - listed)} more`);

  const fine = [
    `${n(c.present)} hold their latest acknowledged write`,
    `${n(c.superseded)} a later unacknowledged one`,
  ];
  if (r.mode === 'crash') fine.push(`${n(c.rolledBack)} an older state not older than their last durable write`);
  fine.push(`${n(c.unwritten + c.unacknowledged)} had no acknowledged write`);
  if (c.tornInFlight > 0) fine.push(`${n(c.tornInFlight)} torn by a write in flight at the fault (allowed)`);
  lines.push(`  blocks read: ${n(r.blocksRead)}; ${fine.join(', ')}`);

  const l = r.log;
  lines.push(
    `  log ${r.logId}: ${plural(l.runs, 'run')}, ${n(l.writesSent)} writes sent, ${n(l.writesAcked)} acknowledged, ${n(l.writesFailed)} failed; ` +
      `${n(l.flushesAcked)} of ${plural(l.flushesSent, 'flush', 'flushes')} acknowledged${l.complete ? '' : '; the last run did not end cleanly'}`,
  );
  return `${lines.join('\n')}\n`;
}

export function formatWrite(r: WorkloadResult, logPath: string): string {
  const seconds = (r.elapsedMs / 1000).toFixed(1);
  const lines = [
    `check write: ${n(r.writesAcked)} of ${plural(r.writesSent, 'write')} acknowledged (${n(r.writesUnanswered)} unanswered, ${n(r.writesFailed)} failed), ` +
      `${n(r.flushesAcked)} of ${plural(r.flushesSent, 'flush', 'flushes')} acknowledged in ${seconds} s`,
    `  stopped: ${r.reason}${r.finalFlush ? '; a final FLUSH made every acknowledged write durable' : ''}`,
    `  log: ${logPath}, run ${r.run}${r.firstSeq > 0 ? `, sequences ${r.firstSeq}..${r.lastSeq}` : ''}`,
  ];
  return `${lines.join('\n')}\n`;
}

export function formatCompare(r: CompareReport): string {
  const range = `${n(r.length)} bytes from offset ${n(r.offset)}, ${plural(r.blocksCompared, 'block')}`;
  const lines: string[] = [];
  if (r.ok) {
    lines.push(`check: OK — ${r.a.name} and ${r.b.name} are identical (${range})`);
  } else {
    const problems: string[] = [];
    if (r.differingBlocks > 0) problems.push(`${n(r.differingBlocks)} of ${plural(r.blocksCompared, 'block')} differ`);
    if (r.sizesDiffer) problems.push(`the sizes differ (${n(r.a.sizeBytes)} and ${n(r.b.sizeBytes)} bytes)`);
    lines.push(`check: FAILED — ${problems.join('; ')} between ${r.a.name} and ${r.b.name} (${range})`);
    if (r.firstDifferences.length > 0) {
      const more = r.differingBlocks > r.firstDifferences.length ? ', ...' : '';
      lines.push(`  differing blocks at offsets ${r.firstDifferences.join(', ')}${more}`);
    }
  }
  return `${lines.join('\n')}\n`;
}
