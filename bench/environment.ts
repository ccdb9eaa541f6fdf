/**
 * What every benchmark prints about where it ran: tool versions, the clock
 * tick for CPU accounting, the command line that reproduces it, a file stamp.
 */
import { readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './proc.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** The first line a tool prints for its version, or undefined when it is missing. */
export async function toolVersion(cmd: string, args: string[]): Promise<string | undefined> {
  try {
    const r = await run(cmd, args, { timeoutMs: 10_000 });
    return r.code === 0 ? r.stdout.split('\n')[0]?.trim() : undefined;
  } catch {
    return undefined;
  }
}

export async function mirrorbdVersion(): Promise<string | undefined> {
  try {
    const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { version?: string };
    return pkg.version ? `mirrorbd ${pkg.version}` : undefined;
  } catch {
    return undefined;
  }
}

/** Kernel clock ticks per second (for /proc CPU times); 100 when getconf is missing. */
export async function clockTicksPerSecond(): Promise<number> {
  try {
    const r = await run('getconf', ['CLK_TCK'], { timeoutMs: 5000 });
    const n = Number(r.stdout.trim());
    if (Number.isInteger(n) && n > 0) return n;
  } catch {
    // fall through
  }
  return 100;
}

/** The command that reproduces this run, shell-quoted. */
export function commandLine(subcommand: string, argv: string[]): string {
  const script = relative(process.cwd(), process.argv[1] ?? 'dist/bench/run.js') || 'dist/bench/run.js';
  return ['node', script, subcommand, ...argv].map(shellQuote).join(' ');
}

export function shellQuote(s: string): string {
  return /^[\w./:=,@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A compact UTC time stamp for file names: 20261121T223723. */
export function stamp(d: Date): string {
  return d.toISOString().replace(/[-:]/g, '').replace(/\..*$/, '');
}
