/**
 * Fuzz target: the config parser (src/config, parseConfig).
 *
 * Valid configs are mutated at the text level (deleted, inserted, duplicated
 * and replaced runs) and at the structure level: a section repeated many
 * times, a value replaced by a token at or around the 4096-character limit
 * or far beyond it, deep nesting of braces, long runs of separators,
 * comments, control characters and non-ASCII text. Oracles:
 * - parseConfig returns a Config or throws MirrorError ERR_BAD_CONFIG with a
 *   `FILE:LINE:COL: found ..., expected ...` message, nothing else;
 * - what parses prints (formatConfig) and parses back to the same Config;
 * - one input stays within the per-input time budget (no super-linear path
 *   on big or deep inputs).
 */
import { MirrorError } from '../../src/errors.js';
import { formatConfig, parseConfig, type Config } from '../../src/config/index.js';
import { InvariantError, check, runInputs, sameData, showText, type FuzzBudget, type FuzzCounts, type Rng } from './fuzz-kit.js';

const BASES = [
  `global { run-dir /run/mirrorbd; log-level info; }
common {
  net { protocol C; ping-int 2; ping-timeout 0.5; shared-secret "change me"; }
  disk { resync-rate 200M; al-extents 1237; }
  nbd { allow 10.0.0.0/8 ::1; max-payload 32M; }
}
resource r0 {
  meta-disk internal;
  options { quorum majority; auto-promote no; }
  handlers { split-brain "/bin/notify \\"sb\\""; }
  on alpha { node-id 0; disk /d/a; address 192.0.2.1:7789; nbd-address unix:/run/a.sock; }
  on beta { node-id 1; disk none; address [2001:db8::2]:7789; }
}
`,
  `resource data {
  nbd { description "the data disk"; tls off; }
  on n1 { node-id 3; disk /dev/vdb; address 10.1.0.1:7790; nbd-address 127.0.0.1:10809; }
}
`,
  `# comment only
resource a { on x { node-id 0; disk /a; } }
resource b { on x { node-id 0; disk /b; } }
`,
];

/** Tokens at and around the limits the lexer and the value parsers enforce. */
function bigToken(rng: Rng): string {
  const n = rng.chance(0.9) ? rng.pick([4095, 4096, 4097, 10_000]) : rng.pick([100_000, 1_000_000]);
  switch (rng.int(6)) {
    case 0:
      return 'w'.repeat(n);
    case 1:
      return `"${'s'.repeat(n - 2)}"`;
    case 2:
      return `"${'\\"'.repeat(Math.floor(n / 2))}"`;
    case 3:
      return '9'.repeat(n);
    case 4:
      return `${'1'.repeat(Math.min(n, 400))}M`;
    default:
      return `/${'p/'.repeat(Math.floor(n / 2))}`;
  }
}

const PIECES = ['{', '}', ';', '"', '\\', '#', '\n', '\r\n', '\t', ' ', ':', '[', ']', '/', '.', '0', '-', 'on', 'resource', 'net', 'nbd', 'include', '\x00', '\x7f', 'é', '\u{1f4be}', '\ufeff', '99999999999999999999', '0x10', '1e9', '-1', 'NaN'];

function textEdit(rng: Rng, s: string): string {
  const at = rng.int(s.length + 1);
  switch (rng.int(4)) {
    case 0:
      return s.slice(0, at) + s.slice(at + 1 + rng.length(12));
    case 1:
      return s.slice(0, at) + rng.pick(PIECES) + s.slice(at);
    case 2: {
      const from = rng.int(s.length);
      return s.slice(0, at) + s.slice(from, from + rng.length(40)) + s.slice(at);
    }
    default:
      return s.slice(0, at) + String.fromCharCode(32 + rng.int(95)) + s.slice(at + 1);
  }
}

/** Positions of value tokens: the word after a key, before its `;`. */
function replaceValue(rng: Rng, s: string, value: string): string {
  const values = [...s.matchAll(/ ([^ {};\n]+);/g)];
  if (values.length === 0) return s;
  const m = rng.pick(values);
  return s.slice(0, m.index! + 1) + value + s.slice(m.index! + 1 + m[1]!.length);
}

function structuralEdit(rng: Rng, s: string): string {
  switch (rng.int(7)) {
    case 0:
      return replaceValue(rng, s, bigToken(rng));
    case 1: {
      // A name (resource, node) at the limits.
      const n = rng.chance(0.9) ? rng.pick([4095, 4096, 4097]) : 50_000;
      return s.replace(rng.chance(0.5) ? /resource \w+/ : /on \w+/, (m) => `${m.split(' ')[0]} ${'n'.repeat(n)}`);
    }
    case 2: {
      // Deep nesting, closed or not, around the depth limit or far beyond it.
      const depth = rng.chance(0.9) ? rng.pick([7, 8, 9, 50]) : rng.pick([2_000, 20_000]);
      const open = `${rng.pick(['a', 'resource', 'net', 'on x'])} {`.repeat(depth);
      const close = rng.chance(0.5) ? '}'.repeat(depth) : '';
      const at = rng.int(s.length + 1);
      return s.slice(0, at) + open + close + s.slice(at);
    }
    case 3: {
      // A section repeated many times (duplicates must be refused, not slow).
      const sections = [...s.matchAll(/resource \w+ \{[^]*?\n\}\n/g)];
      if (sections.length === 0) return s;
      return s + sections[0]![0].repeat(rng.chance(0.9) ? rng.pick([2, 3, 100]) : 500);
    }
    case 4:
      // Long runs of separators or comments.
      return s.replace('\n', `\n${rng.pick([';', '{}', '# c\n', ' ', '\n', '""'])}`.repeat(rng.chance(0.9) ? rng.pick([10, 1000]) : 50_000));
    case 5:
      return rng.chance(0.5) ? `\ufeff${s}` : s.replace(/\n/g, '\r\n');
    default:
      return replaceValue(rng, s, rng.pick(['""', '"\\n"', '"\\t"', '"a b"', '0', '1', '-0', '4294967296', '1T', '1P', '1.5', '0.0000001', '[::1]:0', '[::1]:65536', '256.0.0.1:1', 'unix:', 'unix:/']));
  }
}

function withoutFile(c: Config): Omit<Config, 'file'> {
  const { file: _file, ...rest } = c;
  return rest;
}

export function fuzzConfig(seed: number, budget: FuzzBudget): FuzzCounts {
  return runInputs('config', seed, budget, (rng, _i, record) => {
    let text = rng.pick(BASES);
    const edits = 1 + rng.int(3);
    for (let e = 0; e < edits; e++) text = rng.chance(0.35) ? structuralEdit(rng, text) : textEdit(rng, text);
    const input = text;
    record(() => showText(input));
    let config: Config;
    try {
      config = parseConfig(input, 'fuzz.conf');
    } catch (e) {
      check(e instanceof MirrorError && e.code === 'ERR_BAD_CONFIG', () => `threw ${e instanceof Error ? `${e.name}${(e as { code?: string }).code ? ` ${(e as { code?: string }).code}` : ''}: ${e.message.slice(0, 300)}` : String(e)}`);
      check(/^fuzz\.conf:\d+:\d+: found .+, expected /s.test(e.message), () => `message without a location or expectation: ${e.message.slice(0, 300)}`);
      return 'rejected';
    }
    const printed = formatConfig(config);
    let again: Config;
    try {
      again = parseConfig(printed, 'again.conf');
    } catch (e) {
      throw new InvariantError(`a config that parsed does not parse after formatConfig: ${e instanceof Error ? e.message.slice(0, 300) : String(e)}\nprinted: ${showText(printed)}`);
    }
    check(sameData(withoutFile(again), withoutFile(config)), () => `formatConfig does not round-trip; printed ${showText(printed)}`);
    return 'accepted';
  });
}
