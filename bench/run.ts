/**
 * Entry point of the benchmarks: `node dist/bench/run.js SUBCOMMAND [options]`
 * (or `npm run bench -- SUBCOMMAND [options]`, which builds first).
 *
 * Every benchmark is a function from its arguments to an exit status. The
 * signal handlers here stop whatever a benchmark started (by PID) on Ctrl-C.
 */

import { frontendMain } from './frontend.js';
import { failoverMain } from './failover.js';
import { errorMessage, installSignalHandlers, runCleanups } from './proc.js';
import { replicationMain } from './replication.js';

interface Benchmark {
  summary: string;
  main(argv: string[]): Promise<number>;
}

const BENCHMARKS: Record<string, Benchmark> = {
  frontend: {
    summary: 'NBD frontend: mirrorbd (single node) vs nbdkit vs qemu-nbd under fio',
    main: frontendMain,
  },
  replication: {
    summary: 'replication: one node vs two-node protocol A/B/C under fio; full and 1 % dirty resync vs nbdcopy',
    main: replicationMain,
  },
  failover: {
    summary: 'automatic failover: kill -9 of the Primary to the first write served by the survivor (two data nodes + witness)',
    main: failoverMain,
  },
};

function usage(): string {
  const names = Object.entries(BENCHMARKS).map(([name, b]) => `  ${name.padEnd(12)} ${b.summary}`);
  return `usage: bench SUBCOMMAND [options]   (SUBCOMMAND --help for its options)\n\n${names.join('\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  const bench = BENCHMARKS[name];
  if (!bench) {
    process.stderr.write(`bench: unknown benchmark "${name}"\n\n${usage()}`);
    return 2;
  }
  installSignalHandlers();
  try {
    return await bench.main(rest);
  } catch (e) {
    process.stderr.write(`bench ${name}: ${errorMessage(e)}\n`);
    return 1;
  } finally {
    await runCleanups();
  }
}

process.exitCode = await main(process.argv.slice(2));
