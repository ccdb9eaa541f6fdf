/**
 * What every fuzz target shares: a seeded source of choices built on the
 * shared PRNG, byte-level and structure-level mutators, a per-input time
 * budget, and the one error a target throws when it found something real.
 *
 * A target is a plain function `(seed, budget) => FuzzCounts`. It derives one
 * PRNG per input from (seed, input index), so any failure can be replayed
 * alone from the two numbers the FuzzFailure prints, without running the
 * inputs before it.
 */
import { seededRandom } from '../helpers/seeded-random.js';

export interface FuzzCounts {
  /** Inputs tried. */
  inputs: number;
  /** Inputs the code under test accepted (decoded, parsed). */
  accepted: number;
  /** Inputs it refused the documented way (violation, typed error). */
  rejected: number;
}

export interface FuzzBudget {
  /** Stop after this many inputs... */
  iterations: number;
  /** ...or when this much wall time has passed, whichever comes first. */
  deadlineMs?: number;
  /** One input may take at most this long; longer is reported as a hang. */
  perInputMs?: number;
  /** Index of the first input (replaying input N of a seed: from N, iterations 1). */
  from?: number;
}

export type FuzzTarget = (seed: number, budget: FuzzBudget) => FuzzCounts;

/** Default per-input time budget: generous for a slow CI core, far below a hang. */
export const DEFAULT_PER_INPUT_MS = 2000;

/** A real finding: the seed and input index replay it; `input` shows it. */
export class FuzzFailure extends Error {
  readonly target: string;
  readonly seed: number;
  readonly index: number;

  constructor(target: string, seed: number, index: number, problem: string, input: string) {
    super(`${target}: ${problem}\n  replay: seed 0x${(seed >>> 0).toString(16)}, input ${index}\n  input: ${input}`);
    this.name = 'FuzzFailure';
    this.target = target;
    this.seed = seed;
    this.index = index;
  }
}

/** A broken invariant inside one input (turned into a FuzzFailure by runInputs). */
export class InvariantError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvariantError';
  }
}

export function check(condition: boolean, message: string | (() => string)): asserts condition {
  if (!condition) throw new InvariantError(typeof message === 'string' ? message : message());
}

/** Seeded choices. Every method draws from the same stream, so a run is a pure function of its seed. */
export class Rng {
  private readonly next: () => number;

  constructor(seed: number) {
    this.next = seededRandom(seed);
  }

  float(): number {
    return this.next();
  }

  /** 0 .. n-1 (n up to 2^32). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** lo .. hi inclusive. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  u32(): number {
    return (this.int(0x10000) * 0x10000 + this.int(0x10000)) >>> 0;
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }

  /** Small lengths are most likely, big ones possible: how real inputs are shaped. */
  length(max: number): number {
    const r = this.next();
    if (r < 0.6) return this.int(Math.min(max, 16) + 1);
    if (r < 0.9) return this.int(Math.min(max, 512) + 1);
    return this.int(max + 1);
  }
}

/** The per-input PRNG seed: distinct for every (run seed, input index). */
export function inputSeed(seed: number, index: number): number {
  // A 32-bit mix (murmur3's finalizer) so neighbouring indices give unrelated streams.
  let h = (seed ^ Math.imul(index + 1, 0x9e3779b9)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** Boundary values that find off-by-ones in length and offset checks. */
export const INTERESTING_U32 = [0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 511, 512, 4095, 4096, 4097, 0x7fff, 0x8000, 0xffff, 0x10000, 0x10001, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff] as const;

export function interestingU32(rng: Rng): number {
  return rng.chance(0.8) ? rng.pick(INTERESTING_U32) : rng.u32();
}

/**
 * One to `maxEdits` byte-level edits: bit flips, random and boundary bytes,
 * boundary u16/u32 values written over the data, deletions, insertions,
 * duplicated and swapped runs, truncation. Returns a fresh buffer.
 */
export function mutateBytes(rng: Rng, input: Buffer, maxEdits = 4): Buffer {
  let b = Buffer.from(input);
  const edits = 1 + rng.int(maxEdits);
  for (let e = 0; e < edits; e++) {
    const at = rng.int(b.length + 1);
    switch (rng.int(9)) {
      case 0:
        if (at < b.length) b[at] = b[at]! ^ (1 << rng.int(8));
        break;
      case 1:
        if (at < b.length) b[at] = rng.pick([0x00, 0x01, 0x7f, 0x80, 0xff, rng.int(256)]);
        break;
      case 2:
        if (at + 4 <= b.length) b.writeUInt32BE(interestingU32(rng), at);
        break;
      case 3:
        if (at + 2 <= b.length) b.writeUInt16BE(interestingU32(rng) & 0xffff, at);
        break;
      case 4: // delete a run
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.length(64)))]);
        break;
      case 5: // insert random bytes
        b = Buffer.concat([b.subarray(0, at), rng.bytes(1 + rng.length(32)), b.subarray(at)]);
        break;
      case 6: { // duplicate a run elsewhere
        const from = rng.int(b.length + 1);
        const run = b.subarray(from, from + 1 + rng.length(128));
        b = Buffer.concat([b.subarray(0, at), run, b.subarray(at)]);
        break;
      }
      case 7: // truncate
        b = b.subarray(0, at);
        break;
      default: { // swap two runs of equal length
        const n = 1 + rng.length(16);
        const other = rng.int(b.length + 1);
        if (at + n <= b.length && other + n <= b.length) {
          const tmp = Buffer.from(b.subarray(at, at + n));
          b.copy(b, at, other, other + n);
          tmp.copy(b, other);
        }
      }
    }
  }
  return b;
}

/** Cuts `input` into random pieces, sometimes single bytes, as TCP may. */
export function randomSplit(rng: Rng, input: Buffer): Buffer[] {
  const pieces: Buffer[] = [];
  // Byte-sized pieces only for small inputs: a big one in single bytes costs time, not coverage.
  const mode = input.length <= 4096 ? rng.int(4) : 2 + rng.int(2);
  for (let at = 0; at < input.length; ) {
    const n = mode === 0 ? 1 : mode === 1 ? 1 + rng.int(8) : 1 + rng.length(256);
    pieces.push(input.subarray(at, at + n));
    at += n;
  }
  return pieces;
}

/** A short printable description of an input for a failure message. */
export function showBytes(b: Buffer, max = 256): string {
  const hex = b.subarray(0, max).toString('hex');
  return `${b.length} bytes: ${hex}${b.length > max ? '...' : ''}`;
}

export function showText(s: string, max = 600): string {
  return `${s.length} chars: ${JSON.stringify(s.length > max ? `${s.slice(0, max)}...` : s)}`;
}

/**
 * Runs `budget.iterations` inputs (or until the deadline). `one` gets a fresh
 * per-input PRNG and reports 'accepted' or 'rejected'; it throws
 * InvariantError for a broken invariant and anything else for a crash. Both
 * become a FuzzFailure naming the seed and the input; so does an input that
 * took longer than the per-input budget. `describe` renders the last input.
 */
export function runInputs(
  target: string,
  seed: number,
  budget: FuzzBudget,
  one: (rng: Rng, index: number, record: (shown: () => string) => void) => 'accepted' | 'rejected',
): FuzzCounts {
  const counts: FuzzCounts = { inputs: 0, accepted: 0, rejected: 0 };
  const perInputMs = budget.perInputMs ?? DEFAULT_PER_INPUT_MS;
  const stopAt = budget.deadlineMs === undefined ? Infinity : Date.now() + budget.deadlineMs;
  const first = budget.from ?? 0;
  for (let i = first; i < first + budget.iterations && Date.now() < stopAt; i++) {
    let shown: () => string = () => '(not recorded)';
    const started = performance.now();
    let verdict: 'accepted' | 'rejected';
    try {
      verdict = one(new Rng(inputSeed(seed, i)), i, (s) => (shown = s));
    } catch (e) {
      const problem = e instanceof InvariantError ? `broken invariant: ${e.message}` : `unexpected exception: ${describe(e)}`;
      throw new FuzzFailure(target, seed, i, problem, shown());
    }
    const took = performance.now() - started;
    if (took > perInputMs) {
      throw new FuzzFailure(target, seed, i, `one input took ${took.toFixed(0)} ms (budget ${perInputMs} ms): a hang or a super-linear path`, shown());
    }
    counts.inputs++;
    counts[verdict]++;
  }
  return counts;
}

export function describe(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    return `${e.name}${code !== undefined ? ` [${String(code)}]` : ''}: ${e.message}${e.stack ? `\n${e.stack.split('\n').slice(1, 6).join('\n')}` : ''}`;
  }
  return String(e);
}

/** Deep equality for plain data (numbers, bigints, strings, arrays, Buffers, typed arrays, objects). */
export function sameData(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (Buffer.isBuffer(a) || Buffer.isBuffer(b)) return Buffer.isBuffer(a) && Buffer.isBuffer(b) && a.equals(b);
  if (a instanceof Uint32Array || b instanceof Uint32Array) {
    return a instanceof Uint32Array && b instanceof Uint32Array && a.length === b.length && a.every((v, i) => v === b[i]);
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((v, i) => sameData(v, b[i]));
  }
  if (typeof a === 'object' && typeof b === 'object' && a !== null && b !== null) {
    const ka = Object.keys(a).filter((k) => (a as Record<string, unknown>)[k] !== undefined).sort();
    const kb = Object.keys(b).filter((k) => (b as Record<string, unknown>)[k] !== undefined).sort();
    return sameData(ka, kb) && ka.every((k) => sameData((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
  }
  return false;
}

/** JSON for failure messages that survives bigints and Buffers. */
export function show(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => {
    if (typeof x === 'bigint') return `${x}n`;
    if (x !== null && typeof x === 'object' && (x as { type?: unknown }).type === 'Buffer') return `hex:${Buffer.from((x as { data: number[] }).data).toString('hex')}`;
    return x;
  });
}
