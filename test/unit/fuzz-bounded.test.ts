/**
 * Every fuzz target (test/fuzz/) with fixed seeds and a budget small enough
 * for CI. A failure names the target, the seed and the input index, which
 * replay it alone; `npm run fuzz` runs the same targets for longer with a
 * fresh seed.
 */
import { describe, expect, it } from 'vitest';
import { FUZZ_TARGETS } from '../fuzz/targets.js';

/** Fixed, so CI runs the same inputs every time. */
const CI_SEED = 0x6d62_0001;
/** A target may stop early at this wall time (a slow machine runs fewer inputs, never times out). */
const PER_TARGET_MS = 4000;

describe('fuzz targets, bounded', () => {
  for (const target of FUZZ_TARGETS) {
    it(`${target.name} survives ${target.ciIterations} inputs from seed 0x${CI_SEED.toString(16)}`, () => {
      const started = Date.now();
      const counts = target.run(CI_SEED, { iterations: target.ciIterations, deadlineMs: PER_TARGET_MS });
      console.log(
        `fuzz ${target.name}: ${counts.inputs} inputs, ${counts.accepted} accepted, ${counts.rejected} rejected, ${Date.now() - started} ms (seed 0x${CI_SEED.toString(16)})`,
      );
      expect(counts.inputs).toBeGreaterThan(0);
      expect(counts.accepted + counts.rejected).toBe(counts.inputs);
      // Both outcomes must be reached, or the mutations are not exploring anything.
      expect(counts.accepted).toBeGreaterThan(0);
      expect(counts.rejected).toBeGreaterThan(0);
    });
  }
});
