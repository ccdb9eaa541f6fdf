/**
 * The long fault run (`npm run test:soak -- --runs N`): N runs, the kind of
 * each drawn from its seed, seeds counted up from a printed base seed, then
 * the same report as the suite. The goal: 0 writes lost in 200 runs and more.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { skipWithoutNetns } from '../helpers/netns.js';
import { planFor } from './plan.js';
import { runFault, type FaultRunReport } from './run-fault.js';
import { baseSeed, kinds, soakRuns } from './seeds.js';
import { recordRun, replay, summarize } from './summary.js';

const noNetns = skipWithoutNetns();
const base = baseSeed();
const allowed = kinds();
const reports: FaultRunReport[] = [];

describe.skipIf(noNetns)(`fault soak (base seed ${base})`, () => {
  afterAll(() => {
    process.stdout.write(summarize(reports));
  });

  const runs = soakRuns();
  for (let i = 0; i < runs; i++) {
    const seed = base + i;
    const drawn = planFor(seed);
    // a kind filter keeps the seed's timing and picks the kind round-robin
    const plan = allowed.includes(drawn.kind) ? drawn : planFor(seed, allowed[i % allowed.length]!);
    it(`run ${i + 1}/${runs}: ${plan.kind}, seed ${seed}`, async () => {
      const r = await runFault(plan);
      reports.push(r);
      recordRun(r);
      expect(r.problem, `replay: ${replay(r)}`).toBeNull();
      expect(r.lost).toBe(0);
    });
  }
});
