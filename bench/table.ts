/**
 * Markdown tables for benchmark reports: aligned columns, so the table reads
 * well in a terminal and renders the same in a markdown viewer.
 */

export type Align = 'left' | 'right';

export function markdownTable(headers: readonly string[], rows: readonly (readonly string[])[], align?: readonly Align[]): string {
  const cols = headers.length;
  const widths = headers.map((h, i) => Math.max(3, h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const alignOf = (i: number): Align => align?.[i] ?? (i === 0 ? 'left' : 'right');
  const cell = (text: string, i: number): string => {
    const w = widths[i] ?? 3;
    return alignOf(i) === 'left' ? text.padEnd(w) : text.padStart(w);
  };
  const line = (cells: readonly string[]): string =>
    `| ${Array.from({ length: cols }, (_, i) => cell(cells[i] ?? '', i)).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (alignOf(i) === 'left' ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(headers), rule, ...rows.map(line)].join('\n');
}

/** A number with a few significant digits and thousands separators. */
export function fmtCount(n: number): string {
  if (!Number.isFinite(n)) return '—';
  if (n >= 100) return Math.round(n).toLocaleString('en-US');
  if (n >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

/** A duration in nanoseconds, in µs below 1 ms and in ms above. */
export function fmtNs(ns: number): string {
  if (!Number.isFinite(ns)) return '—';
  if (ns < 1_000_000) return `${fmtCount(ns / 1000)} µs`;
  return `${fmtCount(ns / 1_000_000)} ms`;
}

export function fmtRatio(r: number): string {
  return Number.isFinite(r) ? `${r.toFixed(2)}×` : '—';
}
