/**
 * `mirrorbd check`: the acknowledged-write checker's command line.
 *
 *   check write URI --log FILE ...     drive stamped writes, log what was acknowledged
 *   check verify TARGET --log FILE     every acknowledged write is there (or superseded)
 *   check compare A B                  two replicas hold the same bytes
 *
 * Exit status (unlike the other verbs, a finding and a failure to look
 * differ, for scripts): 0 OK, 1 a violation was found, 2 the check could
 * not be made (usage, connection, unreadable log or disk), 3 a bug.
 * A server that dies under `check write` is what it is for: that run exits 0.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { isMirrorError } from '../errors.js';
import { parseNbdUri, type NbdUri } from './nbd-uri.js';
import { STAMP_BLOCK_BYTES } from './stamp.js';
import { DEFAULT_BLOCKS, DEFAULT_FLUSH_EVERY, DEFAULT_QUEUE_DEPTH } from './defaults.js';

export const CHECK_EXIT_OK = 0;
export const CHECK_EXIT_VIOLATION = 1;
export const CHECK_EXIT_ERROR = 2;

/** How often a terminal sees how the run goes. */
const PROGRESS_INTERVAL_MS = 5_000;

interface WriteOpts {
  log: string;
  append?: boolean;
  queueDepth: number;
  seconds?: number;
  writes?: number;
  blocks?: number;
  firstBlock?: number;
  writer?: number;
  flushEvery: number;
  flushIntervalMs: number;
  fuaEvery: number;
  seed?: number;
  json?: boolean;
}

export function registerCheck(program: Command): void {
  const check = program
    .command('check')
    .description('acknowledged-write checker: drive stamped writes over NBD, then prove after a fault that none was lost (docs/check.md)');

  check
    .command('write')
    .argument('<uri>', 'the export: nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH', uriArg)
    .requiredOption('--log <file>', 'the ack log to create (or, with --append, to continue)')
    .option('--append', 'continue an existing log (after a failover: the same blocks, later sequences)')
    .option('--queue-depth <n>', 'requests in flight', count('--queue-depth', 1), DEFAULT_QUEUE_DEPTH)
    .addOption(new Option('--seconds <s>', 'stop after this long (default: until Ctrl-C or the server goes away)').argParser(positiveNumber('--seconds')).conflicts('writes'))
    .option('--writes <n>', 'stop after sending this many writes', count('--writes', 1))
    .option('--blocks <n>', `how many 4 KiB blocks to write to (a new log; default ${DEFAULT_BLOCKS} or the export, if smaller)`, count('--blocks', 1))
    .option('--first-block <n>', 'the first of them (a new log; default 0)', count('--first-block', 0))
    .option('--writer <id>', 'writer id stamped in each block (a new log; default 1)', count('--writer', 0, 0xffff_ffff))
    .option('--flush-every <n>', 'a FLUSH after every N writes; 0: none', count('--flush-every', 0), DEFAULT_FLUSH_EVERY)
    .option('--flush-interval-ms <ms>', 'a FLUSH at least this often; 0: none', count('--flush-interval-ms', 0), 0)
    .option('--fua-every <n>', 'every Nth write with FUA; 0: none', count('--fua-every', 0), 0)
    .option('--seed <n>', 'seed of the block choice (default random; recorded in the log)', count('--seed', 0, 0xffff_ffff))
    .option('--json', 'print the result as JSON')
    .description('write stamped 4 KiB blocks and log every write and FLUSH the server acknowledged')
    .action(guard(checkWrite));

  check
    .command('verify')
    .argument('<target>', "an NBD URI, or a disk or file (a node's backing disk after `down`)")
    .requiredOption('--log <file>', 'the ack log `check write` kept')
    .option('--crash', 'every node crashed: require only writes made durable (acknowledged before an acknowledged FLUSH, or with FUA)')
    .option('--full-range', "read every block of the log's range, not only the blocks it wrote (finds misdirected writes)")
    .option('--json', 'print the report as JSON')
    .description('check that every acknowledged write is present or superseded, and no block is torn or foreign')
    .action(
      guard(async (target: string, o: { log: string; crash?: boolean; fullRange?: boolean; json?: boolean }) => {
        const { verifyCheck, formatVerify } = await checkModules();
        const report = await verifyCheck({ target, logPath: o.log, mode: o.crash ? 'crash' : 'acknowledged', fullRange: o.fullRange === true });
        process.stdout.write(o.json ? `${JSON.stringify(report, null, 2)}\n` : formatVerify(report));
        return report.ok;
      }),
    );

  check
    .command('compare')
    .argument('<a>', 'an NBD URI, or a disk or file')
    .argument('<b>', 'an NBD URI, or a disk or file')
    .option('--size <bytes>', 'compare this many bytes (suffix K, M, G, T: powers of 1024)', byteSize('--size'))
    .option('--offset <bytes>', 'start here (a multiple of 4096)', byteSize('--offset'))
    .option('--data-area', 'A and B are mirrorbd disks with internal metadata: compare their data areas, not the metadata that ends them')
    .option('--json', 'print the report as JSON')
    .description('check that two replicas hold identical data, block by block')
    .action(
      guard(async (a: string, b: string, o: { size?: number; offset?: number; dataArea?: boolean; json?: boolean }) => {
        if (o.offset !== undefined && o.offset % STAMP_BLOCK_BYTES !== 0) throw new InvalidArgumentError('--offset must be a multiple of 4096');
        const { compareCheck, formatCompare } = await checkModules();
        const report = await compareCheck({ a, b, offset: o.offset, length: o.size, dataArea: o.dataArea === true });
        process.stdout.write(o.json ? `${JSON.stringify(report, null, 2)}\n` : formatCompare(report));
        return report.ok;
      }),
    );
}

async function checkWrite(uri: NbdUri, o: WriteOpts): Promise<boolean> {
  if (o.append && (o.blocks !== undefined || o.firstBlock !== undefined || o.writer !== undefined)) {
    throw new InvalidArgumentError('--blocks, --first-block and --writer come from the log with --append');
  }
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const tty = process.stderr.isTTY === true;
  const { writeCheck, formatWrite } = await checkModules();
  try {
    const result = await writeCheck({
      uri,
      logPath: o.log,
      append: o.append === true,
      firstBlock: o.firstBlock,
      blocks: o.blocks,
      writer: o.writer,
      seed: o.seed,
      queueDepth: o.queueDepth,
      writes: o.writes,
      durationMs: o.seconds === undefined ? undefined : o.seconds * 1000,
      flushEvery: o.flushEvery,
      flushIntervalMs: o.flushIntervalMs,
      fuaEvery: o.fuaEvery,
      signal: abort.signal,
      // Chatter only for a person watching; a script reads the result.
      onStart: (h) => {
        if (!tty) return;
        const until = o.seconds !== undefined ? `for ${o.seconds} s` : o.writes !== undefined ? `for ${o.writes} writes` : 'until Ctrl-C';
        process.stderr.write(`check write: blocks ${h.firstBlock}..${h.firstBlock + h.blocks - 1} of ${uri.text}, queue depth ${o.queueDepth}, ${until}\n`);
      },
      progressIntervalMs: tty ? PROGRESS_INTERVAL_MS : undefined,
      onProgress: (p) => process.stderr.write(`check write: ${p.writesAcked.toLocaleString('en-US')} acknowledged, ${(p.elapsedMs / 1000).toFixed(0)} s\n`),
    });
    process.stdout.write(o.json ? `${JSON.stringify(result, null, 2)}\n` : formatWrite(result, o.log));
    return true;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/**
 * Runs a check action: its result picks the exit status (true OK, false a
 * violation); a refusal or failure to check prints one line and exits 2.
 * Anything else is a bug and goes to main's internal-error path.
 */
function guard<A extends unknown[]>(fn: (...args: A) => Promise<boolean>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      process.exitCode = (await fn(...args)) ? CHECK_EXIT_OK : CHECK_EXIT_VIOLATION;
    } catch (e) {
      if (isMirrorError(e)) process.stderr.write(`mirrorbd: check: ${e.message} [${e.code}]\n`);
      else if (e instanceof InvalidArgumentError) process.stderr.write(`mirrorbd: check: ${e.message}\n`);
      else throw e;
      process.exitCode = CHECK_EXIT_ERROR;
    }
  };
}

// --- argument parsers (commander reports their errors as usage errors) ---------

function uriArg(text: string): NbdUri {
  const r = parseNbdUri(text);
  if (!r.ok) throw new InvalidArgumentError(r.reason);
  return r.uri;
}

function count(what: string, min: number, max = Number.MAX_SAFE_INTEGER): (v: string) => number {
  return (v) => {
    const x = /^\d+$/.test(v) ? Number(v) : NaN;
    if (!Number.isSafeInteger(x) || x < min || x > max) {
      throw new InvalidArgumentError(`${what} must be an integer from ${min}${max === Number.MAX_SAFE_INTEGER ? '' : ` to ${max}`}`);
    }
    return x;
  };
}

function positiveNumber(what: string): (v: string) => number {
  return (v) => {
    const x = /^\d+(\.\d+)?$/.test(v) ? Number(v) : NaN;
    if (!(x > 0)) throw new InvalidArgumentError(`${what} must be a positive number`);
    return x;
  };
}

const SIZE_UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

function byteSize(what: string): (v: string) => number {
  return (v) => {
    const m = /^(\d+)([KMGT]?)$/i.exec(v);
    const x = m ? Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]! : NaN;
    if (!Number.isSafeInteger(x)) throw new InvalidArgumentError(`${what} must be a byte count, optionally with K, M, G or T`);
    return x;
  };
}

/**
 * What the check commands run, loaded when one runs: every other CLI call
 * would pay for loading the NBD client, the ack log and the verifier.
 */
async function checkModules(): Promise<typeof import('./actions.js') & typeof import('./report.js')> {
  const [actions, report] = await Promise.all([import('./actions.js'), import('./report.js')]);
  return { ...actions, ...report };
}
