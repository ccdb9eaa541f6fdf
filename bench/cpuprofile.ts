/**
 * Summarizes V8 .cpuprofile files (written by node --cpu-prof when the
 * process exits) into self time per function, the view that says where a
 * server's CPU goes.
 *
 * A profile is a call tree (nodes[], each with a callFrame) plus a sample
 * stream: samples[i] is the id of the node on top of the stack at sample i,
 * and timeDeltas[i] the microseconds since the previous sample. A sample's
 * weight is the time until the next sample, as Chrome DevTools counts it.
 * Older profiles without samples have only hitCount per node; those are
 * weighted evenly over the profile's duration.
 */

import { readdir, readFile } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number; // 0-based
  columnNumber: number; // 0-based
}

export interface CpuProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}

export interface CpuProfile {
  nodes: CpuProfileNode[];
  startTime: number; // µs
  endTime: number; // µs
  samples?: number[];
  timeDeltas?: number[];
}

export interface FunctionSelfTime {
  /** Function name, or V8's pseudo-frames: (idle), (program), (garbage collector). */
  name: string;
  /** file:line (1-based), relative to the repository where it is inside it. */
  location: string;
  selfMicros: number;
}

export interface ProfileSummary {
  totalMicros: number;
  idleMicros: number;
  functions: FunctionSelfTime[]; // sorted by self time, largest first
}

/** Self time per node id, in microseconds. */
export function selfTimeByNode(profile: CpuProfile): Map<number, number> {
  const self = new Map<number, number>();
  const { samples, timeDeltas } = profile;
  if (samples && timeDeltas && samples.length > 0 && samples.length === timeDeltas.length) {
    let t = profile.startTime;
    const stamps = timeDeltas.map((d) => (t += d));
    for (let i = 0; i < samples.length; i++) {
      const next = i + 1 < stamps.length ? (stamps[i + 1] as number) : profile.endTime;
      const weight = Math.max(0, next - (stamps[i] as number));
      const id = samples[i] as number;
      self.set(id, (self.get(id) ?? 0) + weight);
    }
    return self;
  }
  const hits = profile.nodes.reduce((s, n) => s + (n.hitCount ?? 0), 0);
  const perHit = hits > 0 ? (profile.endTime - profile.startTime) / hits : 0;
  for (const n of profile.nodes) if (n.hitCount) self.set(n.id, n.hitCount * perHit);
  return self;
}

/** Aggregates one or more profiles into self time per function (name + location). */
export function summarizeProfiles(profiles: readonly CpuProfile[], repoRoot?: string): ProfileSummary {
  const byKey = new Map<string, FunctionSelfTime>();
  let total = 0;
  for (const profile of profiles) {
    const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
    const parents = new Map<number, number>();
    for (const n of profile.nodes) for (const c of n.children ?? []) parents.set(c, n.id);
    const where = (f: CallFrame): string => `${shortUrl(f.url, repoRoot)}:${f.lineNumber + 1}`;
    for (const [id, micros] of selfTimeByNode(profile)) {
      const frame = nodes.get(id)?.callFrame;
      if (!frame) continue;
      total += micros;
      const name = frame.functionName || '(anonymous)';
      let location = frame.url ? where(frame) : '';
      if (!frame.url && !name.startsWith('(')) {
        // A native (C++) function has no location, and one name can mean
        // several things (fs and sockets both call theirs writeBuffer): name
        // the nearest JavaScript caller instead.
        const caller = jsCaller(id, nodes, parents);
        if (caller) location = `from ${caller.functionName || '(anonymous)'} ${where(caller)}`;
      }
      const key = `${name}\u0000${location}`;
      const entry = byKey.get(key);
      if (entry) entry.selfMicros += micros;
      else byKey.set(key, { name, location, selfMicros: micros });
    }
  }
  const functions = [...byKey.values()].sort((a, b) => b.selfMicros - a.selfMicros);
  const idleMicros = functions.filter((f) => f.name === '(idle)').reduce((s, f) => s + f.selfMicros, 0);
  return { totalMicros: total, idleMicros, functions };
}

function jsCaller(id: number, nodes: Map<number, CpuProfileNode>, parents: Map<number, number>): CallFrame | undefined {
  for (let p = parents.get(id); p !== undefined; p = parents.get(p)) {
    const frame = nodes.get(p)?.callFrame;
    if (frame?.url) return frame;
  }
  return undefined;
}

function shortUrl(url: string, repoRoot?: string): string {
  if (!url.startsWith('file://')) return url; // node:internal/..., evalmachine, etc.
  const path = fileURLToPath(url);
  if (repoRoot) {
    const rel = relative(repoRoot, path);
    if (!rel.startsWith('..') && !rel.startsWith(sep)) return rel;
  }
  return path;
}

/** Reads the .cpuprofile files in a directory; with pids, only those written by these processes. */
export async function readProfiles(dir: string, pids?: readonly number[]): Promise<{ files: string[]; profiles: CpuProfile[] }> {
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => n.endsWith('.cpuprofile')).sort();
  } catch {
    return { files: [], profiles: [] };
  }
  // node names them CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile
  const wanted = pids ? names.filter((n) => pids.some((p) => n.split('.')[3] === String(p))) : names;
  const files = wanted.map((n) => join(dir, n));
  const profiles: CpuProfile[] = [];
  for (const f of files) profiles.push(JSON.parse(await readFile(f, 'utf8')) as CpuProfile);
  return { files, profiles };
}

/** The top functions by self time, as lines of text with a header. */
export function formatTopFunctions(summary: ProfileSummary, top: number): string {
  const busy = summary.totalMicros - summary.idleMicros;
  const pct = (us: number, of: number): string => (of > 0 ? `${((100 * us) / of).toFixed(1)}%` : '—');
  const lines = [
    `profiled ${(summary.totalMicros / 1e6).toFixed(1)} s, of which idle ${(summary.idleMicros / 1e6).toFixed(1)} s ` +
      `(busy ${pct(busy, summary.totalMicros)})`,
    `${'self ms'.padStart(9)} ${'% busy'.padStart(7)}  function (location)`,
  ];
  for (const f of summary.functions.slice(0, top)) {
    const share = f.name === '(idle)' ? '' : pct(f.selfMicros, busy);
    lines.push(`${(f.selfMicros / 1000).toFixed(1).padStart(9)} ${share.padStart(7)}  ${f.name}${f.location ? ` (${f.location})` : ''}`);
  }
  return lines.join('\n');
}
