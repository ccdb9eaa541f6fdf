/**
 * The fault suite (`npm run test:faults`, and `npm run test:soak`): only
 * test/faults/*.fault.ts, which the normal test run (test/**\/*.test.ts)
 * does not pick up. One file at a time: every run builds its own cluster of
 * namespaces and the faults are about timing, so runs never share the
 * machine with each other. (Not mergeConfig: it would append to the base
 * include list instead of replacing it.)
 */
import { defineConfig } from 'vitest/config';
import base from '../vitest.config.js';

export default defineConfig({
  ...base,
  test: {
    ...base.test,
    include: [process.env.MIRRORBD_FAULT_SOAK === '1' ? 'test/faults/soak.fault.ts' : 'test/faults/suite.fault.ts'],
    fileParallelism: false,
    maxWorkers: 1,
    // each run bounds its own waits; this is the backstop
    testTimeout: 300_000,
  },
});
