/**
 * The bounded fault suite CI runs (`npm run test:faults`): one run of every
 * fault kind, each on a fresh cluster in network namespaces, seeds counted
 * up from one base seed that is printed first. A failed run names its seed
 * and the command that replays it. The report at the end counts runs,
 * faults by kind, acknowledged writes checked and writes lost.
 *
 * Needs root, iproute2 and nft or iptables (network namespaces).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { skipWithoutNetns } from '../helpers/netns.js';
import { planFor } from './plan.js';
import { runFault, type FaultRunReport } from './run-fault.js';
import { baseSeed, kinds } from './seeds.js';
import { recordRun, replay, summarize } from './summary.js';

const noNetns = skipWithoutNetns();
const base = baseSeed();
const reports: FaultRunReport[] = [];

describe.skipIf(noNetns)(`fault suite (base seed ${base})`, () => {
  afterAll(() => {
    process.stdout.write(summarize(reports));
  });

  for (const [i, kind] of kinds().entries()) {
    const seed = base + i;
    it(`${kind}, seed ${seed}: no acknowledged write lost, one Primary, replicas identical`, async () => {
      const r = await runFault(planFor(seed, kind));
      reports.push(r);
      recordRun(r);
      expect(r.problem, `replay: ${replay(r)}`).toBeNull();
      expect(r.lost).toBe(0);
      expect(r.torn + r.foreign).toBe(0);
      expect(r.replicasIdentical).toBe(true);
    });
  }
});
