#!/usr/bin/env node
// The thread-pool size must be set before any file I/O starts the pool.
import './threadpool.js';
import { CommanderError } from 'commander';
import { isMirrorError, describeError } from '../errors.js';
import { buildProgram } from './program.js';

/** Exit statuses: 0 success, 1 a refused or failed operation, 2 usage, 3 internal error. */
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTERNAL = 3;

try {
  await buildProgram().parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    // commander has printed the usage problem (or the help) already
    process.exitCode = e.exitCode === 0 ? 0 : EXIT_USAGE;
  } else if (isMirrorError(e)) {
    process.stderr.write(`mirrorbd: ${e.message} [${e.code}]\n`);
    process.exitCode = e.code === 'ERR_INTERNAL' ? EXIT_INTERNAL : EXIT_FAILED;
  } else {
    process.stderr.write(`mirrorbd: internal error: ${describeError(e)}\n`);
    if (process.env.MIRRORBD_DEBUG === '1' && e instanceof Error) process.stderr.write(`${e.stack}\n`);
    process.exitCode = EXIT_INTERNAL;
  }
}
