/**
 * The fault suite's report: runs, faults by kind, acknowledged writes
 * checked, writes lost, and how to replay each failed run. Pure: reports
 * in, text out.
 */
import { appendFileSync } from 'node:fs';
import type { FaultRunReport } from './run-fault.js';

/**
 * With MIRRORBD_FAULT_REPORT set: one JSON line per finished run appended
 * to that file, so a long soak that is stopped still shows what it did.
 */
export function recordRun(r: FaultRunReport): void {
  const file = process.env.MIRRORBD_FAULT_REPORT;
  if (file) appendFileSync(file, `${JSON.stringify({ ...r, problem: r.problem?.split('\n')[0] ?? null })}\n`);
}

/** The command that replays one run. */
export function replay(r: FaultRunReport): string {
  return `MIRRORBD_FAULT_SEED=${r.seed} MIRRORBD_FAULT_KINDS=${r.kind} npm run test:faults`;
}

export function summarize(reports: readonly FaultRunReport[]): string {
  const byKind = new Map<string, { runs: number; failed: number; checked: number; lost: number }>();
  for (const r of reports) {
    const k = byKind.get(r.kind) ?? { runs: 0, failed: 0, checked: 0, lost: 0 };
    k.runs++;
    if (!r.ok) k.failed++;
    k.checked += r.checkedWrites;
    k.lost += r.lost;
    byKind.set(r.kind, k);
  }
  const sum = (f: (r: FaultRunReport) => number): number => reports.reduce((a, r) => a + f(r), 0);
  const n = (v: number): string => v.toLocaleString('en-US');
  const lines = [
    '',
    `fault suite: ${n(reports.length)} runs, ${n(reports.filter((r) => !r.ok).length)} failed; ` +
      `${n(sum((r) => r.checkedWrites))} acknowledged writes checked, ${n(sum((r) => r.lost))} lost, ` +
      `${n(sum((r) => r.torn + r.foreign))} torn or foreign; replicas identical after ${n(reports.filter((r) => r.replicasIdentical).length)} runs`,
    '',
    '| fault | runs | failed | acknowledged writes checked | lost |',
    '|---|---:|---:|---:|---:|',
    ...[...byKind].sort(([a], [b]) => a.localeCompare(b)).map(([kind, k]) => `| ${kind} | ${k.runs} | ${k.failed} | ${n(k.checked)} | ${k.lost} |`),
  ];
  const failed = reports.filter((r) => !r.ok);
  if (failed.length > 0) {
    lines.push('', 'failed runs (replay each with its seed):');
    for (const r of failed) lines.push(`  ${r.kind} seed ${r.seed}: ${replay(r)}`, `    ${(r.problem ?? '').split('\n')[0]}`);
  }
  return lines.join('\n') + '\n';
}
