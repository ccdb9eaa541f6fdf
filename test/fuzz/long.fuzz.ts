/**
 * The long fuzz run: every target, for FUZZ_SECONDS (default 60) shared
 * evenly between them, from FUZZ_SEED (default: a fresh random seed,
 * printed first so the run can be replayed). FUZZ_TARGET limits the run to
 * one target; FUZZ_INDEX with FUZZ_SEED replays one input of it.
 *
 *   FUZZ_SECONDS=300 npm run fuzz
 *   FUZZ_SEED=0x1234abcd FUZZ_TARGET=peer-packet FUZZ_INDEX=5821 npm run fuzz
 */
import { randomInt } from 'node:crypto';
import { expect, it } from 'vitest';
import { FuzzFailure, type FuzzCounts } from './fuzz-kit.js';
import { FUZZ_TARGETS } from './targets.js';

function envNumber(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return undefined;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name}=${raw} is not a whole number`);
  return n;
}

const seconds = envNumber('FUZZ_SECONDS') ?? 60;
const seed = (envNumber('FUZZ_SEED') ?? randomInt(2 ** 32)) >>> 0;
const only = process.env.FUZZ_TARGET;
const index = envNumber('FUZZ_INDEX');
const targets = FUZZ_TARGETS.filter((t) => only === undefined || only === '' || t.name === only);

/** A target runs in slices of this much wall time, yielding in between so the test worker stays responsive. */
const SLICE_MS = 1000;

it(`fuzz for ${seconds} s from seed 0x${seed.toString(16)}`, async () => {
  if (targets.length === 0) throw new Error(`no fuzz target named ${only}; there are ${FUZZ_TARGETS.map((t) => t.name).join(', ')}`);
  console.log(`fuzz: seed 0x${seed.toString(16)} (replay with FUZZ_SEED=0x${seed.toString(16)}), ${seconds} s over ${targets.length} target(s)`);
  const share = (seconds * 1000) / targets.length;
  let total = 0;
  for (const t of targets) {
    const started = Date.now();
    const sum: FuzzCounts = { inputs: 0, accepted: 0, rejected: 0 };
    try {
      if (index !== undefined) {
        Object.assign(sum, t.run(seed, { iterations: 1, from: index }));
      } else {
        // Slices continue the same input sequence (from), so the run equals one long call.
        for (let left = share; left > 0; left = share - (Date.now() - started)) {
          const c = t.run(seed, { iterations: Number.MAX_SAFE_INTEGER, deadlineMs: Math.min(SLICE_MS, left), from: sum.inputs });
          sum.inputs += c.inputs;
          sum.accepted += c.accepted;
          sum.rejected += c.rejected;
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
    } catch (e) {
      if (e instanceof FuzzFailure) {
        console.log(`fuzz ${t.name}: FAILED; replay: FUZZ_SEED=0x${(e.seed >>> 0).toString(16)} FUZZ_TARGET=${e.target} FUZZ_INDEX=${e.index} npm run fuzz`);
      }
      throw e;
    }
    total += sum.inputs;
    console.log(`fuzz ${t.name}: ${sum.inputs} inputs, ${sum.accepted} accepted, ${sum.rejected} rejected, ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
  console.log(`fuzz: ${total} inputs in all, no failures (seed 0x${seed.toString(16)})`);
  expect(total).toBeGreaterThan(0);
});
