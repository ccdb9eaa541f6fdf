/**
 * Command-line handling every benchmark shares: a positive whole-number
 * option, and the step from argv to options, help text or usage error.
 */

import { errorMessage } from './proc.js';

/** The value of `--name`, a positive integer; `dflt` when it was not given. */
export function positiveInt(name: string, v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} wants a positive integer, not "${v}"`);
  return n;
}

/**
 * Parses argv with `parse`. On --help prints `usage` and gives exit code 0;
 * on a bad option prints the error and `usage` to stderr and gives 2.
 */
export function parseCommandLine<T>(bench: string, usage: string, argv: string[], parse: (argv: string[]) => T | 'help'): T | number {
  let opts: T | 'help';
  try {
    opts = parse(argv);
  } catch (e) {
    process.stderr.write(`bench ${bench}: ${errorMessage(e)}\n\n${usage}`);
    return 2;
  }
  if (opts === 'help') {
    process.stdout.write(usage);
    return 0;
  }
  return opts;
}
