import { expect, test } from 'vitest';
import { MirrorError } from '../../src/errors.js';
import { formatConfig, parseConfig } from '../../src/config/index.js';
import { seededRandom as rng } from '../helpers/seeded-random.js';

const VALID = `global { run-dir /run/mirrorbd; log-level info; }
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
`;


const PIECES = ['{', '}', ';', '"', '\\', '#', '\n', ' ', ':', '[', ']', '/', '.', '0', '9', '-', 'x', 'on', 'resource', 'net', 'include', '\x00', 'é', '99999999999999999999'];

function mutate(text: string, next: () => number): string {
  const pick = (n: number) => Math.floor(next() * n);
  let out = text;
  const edits = 1 + pick(4);
  for (let i = 0; i < edits; i++) {
    const at = pick(out.length + 1);
    switch (pick(4)) {
      case 0: // delete a run
        out = out.slice(0, at) + out.slice(at + 1 + pick(8));
        break;
      case 1: // insert a piece
        out = out.slice(0, at) + PIECES[pick(PIECES.length)]! + out.slice(at);
        break;
      case 2: { // duplicate a run elsewhere
        const from = pick(out.length);
        out = out.slice(0, at) + out.slice(from, from + pick(30)) + out.slice(at);
        break;
      }
      default: // replace one character with a random printable one
        out = out.slice(0, at) + String.fromCharCode(32 + pick(95)) + out.slice(at + 1);
    }
  }
  return out;
}

test('random mutations of a valid config only ever give a config or ERR_BAD_CONFIG', () => {
  const next = rng(0x5eed);
  const RUNS = 5000;
  let accepted = 0;
  let rejected = 0;
  const started = Date.now();
  for (let i = 0; i < RUNS; i++) {
    const text = mutate(VALID, next);
    try {
      const config = parseConfig(text, 'fuzz.conf');
      accepted++;
      // whatever parses also prints and parses back the same
      const { file: _a, ...again } = parseConfig(formatConfig(config), 'again.conf');
      const { file: _b, ...first } = config;
      expect(again).toEqual(first);
    } catch (e) {
      if (!(e instanceof MirrorError) || e.code !== 'ERR_BAD_CONFIG') {
        throw new Error(`mutation ${i} threw ${String(e)} for:\n${text}`);
      }
      expect(e.message).toMatch(/^fuzz\.conf:\d+:\d+: found .+, expected /s);
      rejected++;
    }
  }
  console.log(`config fuzz: ${RUNS} mutations, ${accepted} accepted, ${rejected} rejected, ${Date.now() - started} ms`);
  expect(accepted + rejected).toBe(RUNS);
  expect(rejected).toBeGreaterThan(RUNS / 2);
});

test('deep nesting and huge tokens are refused, not recursed into or buffered', () => {
  expect(() => parseConfig('a {'.repeat(10_000), 'deep.conf')).toThrow(/nested more than 8 deep/);
  expect(() => parseConfig(`resource ${'r'.repeat(100_000)} { }`, 'big.conf')).toThrow(/longer than 4096 characters/);
});
