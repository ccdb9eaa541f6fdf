/**
 * The long fuzz run (`npm run fuzz`): only test/fuzz/long.fuzz.ts, which the
 * normal test run (test/**\/*.test.ts) does not pick up. FUZZ_SECONDS sets
 * the wall time; the test timeout follows it. (Not mergeConfig: it would
 * append to the base include list instead of replacing it.)
 */
import { defineConfig } from 'vitest/config';
import base from '../vitest.config.js';

const seconds = Number(process.env.FUZZ_SECONDS ?? 60);

export default defineConfig({
  ...base,
  test: {
    ...base.test,
    include: ['test/fuzz/long.fuzz.ts'],
    testTimeout: (Number.isFinite(seconds) && seconds > 0 ? seconds : 60) * 1000 + 120_000,
  },
});
