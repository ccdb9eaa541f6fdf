#!/usr/bin/env node
// `npm run test:soak -- --runs N [--seed S] [--kinds a,b]`: the fault soak
// through vitest, its options passed as the environment the soak reads.
import { spawnSync } from 'node:child_process';

const usage = 'usage: npm run test:soak -- --runs N [--seed S] [--kinds KIND,...] [--report FILE]\n';
const env = { ...process.env, MIRRORBD_FAULT_SOAK: '1' };
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const [flag, value] = [args[i], args[i + 1]];
  const name = { '--runs': 'MIRRORBD_FAULT_RUNS', '--seed': 'MIRRORBD_FAULT_SEED', '--kinds': 'MIRRORBD_FAULT_KINDS', '--report': 'MIRRORBD_FAULT_REPORT' }[flag];
  if (flag === '-h' || flag === '--help') {
    process.stdout.write(usage);
    process.exit(0);
  }
  if (name === undefined || value === undefined) {
    process.stderr.write(`test:soak: unknown or incomplete option ${flag}\n${usage}`);
    process.exit(2);
  }
  env[name] = value;
  i++;
}
const r = spawnSync('npx', ['vitest', 'run', '--config', 'test/faults/vitest.config.ts'], { stdio: 'inherit', env });
process.exit(r.status ?? 1);
