/**
 * `bench replication`: what replication costs, on one machine over loopback.
 *
 * 1. fio's nbd engine (the frontend benchmark's rows) against mirrorbd on
 *    one node, and against the Primary of a two-node pair with protocol A, B
 *    and C (initial sync skipped, so the rows measure steady state).
 * 2. A full resync of the whole disk, timed from `primary --force` until the
 *    SyncTarget is UpToDate, next to nbdcopy copying the same files between
 *    two nbdkit servers.
 * 3. A resync after 1 % of the 4 KiB blocks were written while disconnected,
 *    timed from `connect` until Established with nothing out of sync.
 */

import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { randomFillSync } from 'node:crypto';

import { Cluster, EventWatcher, NODES, RESYNC_RATE, type ClusterSpec, type MirrorEvent, type NodeName, type Protocol } from './cluster.js';
import { formatTopFunctions, readProfiles, summarizeProfiles } from './cpuprofile.js';
import { diskCounterFor, flushedWriteMiBps, scatteredCopyCost, type DiskCounter, type ScatteredCopyCost } from './disk-stats.js';
import { FRONTEND_ROWS, RAMP_SECONDS, fioArgs, runFioRow, type FioResult, type FioRow } from './fio.js';
import { createImage, scatteredIndices, syncFile } from './images.js';
import { NbdClient } from './nbd-client.js';
import { cpuSeconds, errorMessage, freePort, isInterrupted, onCleanup, runChecked } from './proc.js';
import { BENCH_HOST, launcher, type RunningServer } from './servers.js';
import { parseCommandLine, positiveInt } from './options.js';
import { median } from './stats.js';
import { fmtCount, fmtNs, fmtRatio, markdownTable } from './table.js';
import { REPO_ROOT, clockTicksPerSecond, commandLine, mirrorbdVersion, stamp, toolVersion } from './environment.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
/** The fio rows' image, as in the frontend benchmark. */
const FIO_IMAGE_BYTES = GiB;
/** Written and flushed once to measure the disk (see disk-stats.ts). */
const DISK_PROBE_BYTES = 1024 * MiB;
const BLOCK = 4 * KiB;
/** Share of the 4 KiB blocks written while disconnected. */
const DIRTY_FRACTION = 0.01;
/** Requests in flight while writing the dirty blocks. */
const DIRTY_WRITE_DEPTH = 16;
const DIRTY_SEED = 20240611;
const PROFILE_TOP = 25;
/** Deadline for one resync (or nbdcopy): generous, far above any plausible rate. */
const RESYNC_TIMEOUT_MS = 600_000;

/** The fio targets: single node, then the pair with each protocol. */
const SETUPS = ['single', 'A', 'B', 'C'] as const;
type Setup = (typeof SETUPS)[number];
const PARTS = ['fio', 'resync'] as const;
type Part = (typeof PARTS)[number];

const TARGETS = {
  cSeqWriteRatio: 0.6,
  cQd1LatencyRatio: 2,
  fullResyncVsNbdcopy: 0.8,
  dirtyVsFullTime: 0.03,
};

const USAGE = `usage: bench replication [options]

Two mirrorbd nodes on this machine, replicating over loopback:
fio rows against one node and against the Primary with protocol A, B, C;
a full resync against nbdcopy between two nbdkit servers; a resync of 1 %
dirty blocks against the full one.

  --reps N          repetitions (default 3); each runs every setup once, in a
                    rotated order, and each resync measurement once
  --runtime S       seconds per fio row, after a ${RAMP_SECONDS} s ramp (default 10)
  --quick           1 repetition of 2 s, and a 256 MiB disk for the resync
                    parts (explicit --reps/--runtime/--resync-size win)
  --parts LIST      comma-separated from ${PARTS.join(',')} (default: both)
  --setups LIST     fio setups, comma-separated from ${SETUPS.join(',')} (default: all)
  --rows LIST       comma-separated fio row ids (default: all):
                    ${FRONTEND_ROWS.map((r) => r.id).join(',\n                    ')}
  --resync-size M   MiB of disk for the resync parts (default 1024, --quick 256)
  --dir DIR         make the work directory inside DIR (default: the system
                    temp directory); it needs about 2 GiB + 2 x the resync size
  --out FILE        raw results JSON (default: a new file in the temp directory)
  --baseline DIR    resync parts: also run the mirrorbd build of the checkout
                    in DIR (its dist/), alternating with this one in every
                    repetition: an A/B of two versions in one run
  --profile         run the mirrorbd daemon (single node, and alpha of the
                    pair) with --cpu-prof; print its top ${PROFILE_TOP} functions per setup
  --keep            keep the work directory (daemon logs in its run-* dirs)
  -h, --help        this text
`;

interface Options {
  reps: number;
  runtime: number;
  parts: Part[];
  setups: Setup[];
  rows: FioRow[];
  resyncBytes: number;
  dir: string;
  out?: string;
  baseline?: string;
  profile: boolean;
  keep: boolean;
}

function parseOptions(argv: string[]): Options | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      reps: { type: 'string' },
      runtime: { type: 'string' },
      quick: { type: 'boolean', default: false },
      parts: { type: 'string' },
      setups: { type: 'string' },
      rows: { type: 'string' },
      'resync-size': { type: 'string' },
      dir: { type: 'string' },
      out: { type: 'string' },
      baseline: { type: 'string' },
      profile: { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  const list = <T extends string>(name: string, v: string | undefined, known: readonly T[]): T[] => {
    if (v === undefined) return [...known];
    const out = v.split(',').filter(Boolean).map((s) => {
      if (!(known as readonly string[]).includes(s)) throw new Error(`--${name}: unknown "${s}" (known: ${known.join(', ')})`);
      return s as T;
    });
    if (out.length === 0) throw new Error(`--${name}: name at least one`);
    // Keep the documented order.
    return known.filter((k) => out.includes(k));
  };
  const rowIds = list('rows', values.rows, FRONTEND_ROWS.map((r) => r.id));
  const resyncMiB = positiveInt('resync-size', values['resync-size'], values.quick ? 256 : 1024);
  if (resyncMiB % 4 !== 0) throw new Error('--resync-size: a multiple of 4 MiB');
  const dir = values.dir ?? tmpdir();
  // The mirrorbd config names paths unquoted.
  if (/\s|[;{}"#]/.test(dir)) throw new Error('--dir: use a path without whitespace or config punctuation');
  return {
    reps: positiveInt('reps', values.reps, values.quick ? 1 : 3),
    runtime: positiveInt('runtime', values.runtime, values.quick ? 2 : 10),
    parts: list('parts', values.parts, PARTS),
    setups: list('setups', values.setups, SETUPS),
    rows: FRONTEND_ROWS.filter((r) => rowIds.includes(r.id)),
    resyncBytes: resyncMiB * MiB,
    dir,
    out: values.out,
    baseline: values.baseline,
    profile: values.profile,
    keep: values.keep,
  };
}

// ---------------------------------------------------------------------------
// Results

interface FioSample {
  rep: number;
  setup: Setup;
  row: string;
  iops?: number;
  mibps?: number;
  latNs?: { p50: number; p99: number; mean: number };
  flushLatNs?: { p50: number; p99: number; mean: number; count: number };
  /** CPU over the fio run, percent of one core: the Primary's daemon, the Secondary's, fio. */
  primaryCpuPercent?: number;
  secondaryCpuPercent?: number;
  fioCpuPercent?: number;
  /** Bytes the Primary sent to its peer during the row (two-node setups). */
  replicatedBytes?: number;
  /** Bytes written to the block device under the images during the row (both nodes share it here). */
  diskWrittenBytes?: number;
  /** The row's wall time in seconds (fio's ramp included), for diskWrittenBytes as a rate. */
  wallSeconds?: number;
  error?: string;
  fio?: unknown;
}

interface ResyncSample {
  rep: number;
  bytes: number;
  nbdcopy?: { seconds: number; error?: string };
  full?: {
    /** From starting `primary --force` to beta's disk event UpToDate. */
    seconds: number;
    /** From alpha's role event (the daemon acting on the command) to beta UpToDate. */
    daemonSeconds?: number;
    /** The SyncTarget's own account (resync-done event): bytes copied and ms. */
    targetBytes?: number;
    targetMs?: number;
    bytesSent: number;
    primaryCpuPercent?: number;
    secondaryCpuPercent?: number;
  };
  dirty?: {
    blocks: number;
    /** outOfSyncBytes on the Primary before `connect`. */
    outOfSyncBytes: number;
    /** From starting `connect` to beta's disk event UpToDate (the end of the resync, as for the full one). */
    seconds: number;
    /** From alpha's first event after `connect` (the daemon acting on it) to beta UpToDate. */
    daemonSeconds?: number;
    /** connect until the Primary's connection event Connected. */
    connectSeconds?: number;
    /** alpha Connected until beta is SyncTarget: sync decision, bitmap exchange, the target persisting Inconsistent. */
    handshakeSeconds?: number;
    /** beta SyncTarget until beta UpToDate: the copy and the target's finish. */
    copySeconds?: number;
    /** From starting `connect` until alpha, too, is done (Established after its resync-done). */
    sourceDoneSeconds?: number;
    targetBytes?: number;
    targetMs?: number;
    /** Primary's bytesSent / bytesReceived over the reconnect and resync. */
    bytesSent: number;
    bytesReceived: number;
  };
  /**
   * The same blocks as the dirty resync copied by plain system calls, after
   * the pair stopped: alpha's image read, beta's written and flushed (see
   * scatteredCopyCost).
   */
  filesAlone?: ScatteredCopyCost;
  /** Both nodes' events during the measurements, ms from the command's start. */
  timeline?: { full: string[]; dirty: string[] };
  error?: string;
}

// ---------------------------------------------------------------------------

export async function replicationMain(argv: string[]): Promise<number> {
  const opts = parseCommandLine('replication', USAGE, argv, parseOptions);
  if (typeof opts === 'number') return opts;
  const command = commandLine('replication', argv);
  const versions = await toolVersions();
  const missing: string[] = [];
  if (opts.parts.includes('fio') && !versions.fio) missing.push('fio (Debian: fio)');
  if (opts.parts.includes('resync') && !versions.nbdkit) missing.push('nbdkit (Debian: nbdkit)');
  if (opts.parts.includes('resync') && !versions.nbdcopy) missing.push('nbdcopy (Debian: libnbd-bin)');
  if (missing.length > 0) {
    process.stderr.write(`bench replication: missing ${missing.join(', ')}\n`);
    return 1;
  }
  const mirrorbdWhy = await launcher('mirrorbd').unavailable();
  if (mirrorbdWhy) {
    process.stderr.write(`bench replication: ${mirrorbdWhy}\n`);
    return 1;
  }
  if (opts.baseline !== undefined && !existsSync(join(opts.baseline, 'dist', 'src', 'cli', 'main.js'))) {
    process.stderr.write(`bench replication: --baseline ${opts.baseline}: no dist/src/cli/main.js there (build that checkout first)\n`);
    return 2;
  }
  const clockTicks = await clockTicksPerSecond();

  const work = await mkdtemp(join(opts.dir, 'mirrorbd-bench-repl-'));
  const keep = opts.keep;
  const removeWork = async (): Promise<void> => {
    if (!keep) await rm(work, { recursive: true, force: true });
  };
  const unregisterWork = onCleanup('work directory', removeWork);
  const profileDir = opts.profile ? await mkdtemp(join(tmpdir(), 'mirrorbd-bench-profile-')) : undefined;
  const startedAt = new Date();
  const out = opts.out ?? join(tmpdir(), `mirrorbd-bench-replication-${stamp(startedAt)}.json`);

  const fioMinutes = opts.parts.includes('fio')
    ? (opts.reps * opts.setups.length * (opts.rows.length * (opts.runtime + RAMP_SECONDS + 1) + 8)) / 60
    : 0;
  process.stderr.write(
    `bench replication: ${opts.reps} rep(s); fio: ${opts.setups.length} setup(s) x ${opts.rows.length} row(s) x ${opts.runtime} s ` +
      `(about ${Math.ceil(fioMinutes)} min); resync parts on ${opts.resyncBytes / MiB} MiB; work dir ${work}\n`,
  );

  const fioSamples: FioSample[] = [];
  const disk = await diskCounterFor(work);
  let diskMiBps: number | undefined;
  const resyncSamples: ResyncSample[] = [];
  /** --baseline: the other build's resyncs, with the same repetition's nbdcopy time. */
  const baselineSamples: ResyncSample[] = [];
  const baselineCli = opts.baseline === undefined ? undefined : join(opts.baseline, 'dist', 'src', 'cli', 'main.js');
  const profilePids: Record<string, number[]> = {};
  const addPid = (key: string, pid: number | undefined): void => {
    if (pid !== undefined) (profilePids[key] ??= []).push(pid);
  };

  const interrupted = (): number => 130;

  // ---- part 1: fio rows -----------------------------------------------------
  if (opts.parts.includes('fio')) {
    const fAlpha = join(work, 'fio-alpha.img');
    const fBeta = join(work, 'fio-beta.img');
    process.stderr.write(`creating two ${FIO_IMAGE_BYTES / MiB} MiB images filled with data\n`);
    await createImage(fAlpha, FIO_IMAGE_BYTES, 'random');
    await copyFile(fAlpha, fBeta);
    await syncFile(fBeta);
    diskMiBps = await flushedWriteMiBps(work, DISK_PROBE_BYTES);
    process.stderr.write(`the disk under ${work} takes ${fmtCount(diskMiBps)} MiB/s written and flushed (fdatasync)\n`);
    for (let rep = 0; rep < opts.reps; rep++) {
      const order = opts.setups.map((_, i) => opts.setups[(i + rep) % opts.setups.length] as Setup);
      for (const setup of order) {
        if (isInterrupted()) return interrupted();
        let target: FioTarget;
        try {
          target = await startFioTarget(setup, work, fAlpha, fBeta, profileDir);
        } catch (e) {
          const error = `start failed: ${errorMessage(e)}`;
          process.stderr.write(`[rep ${rep + 1}/${opts.reps}] ${setup}: ${error}\n`);
          for (const row of opts.rows) fioSamples.push({ rep, setup, row: row.id, error });
          continue;
        }
        addPid(setup, target.primaryPid);
        try {
          for (const row of opts.rows) {
            const s = await runRow(rep, setup, target, row, opts.runtime, clockTicks, disk, setup === 'single' ? [fAlpha] : [fAlpha, fBeta]);
            if (isInterrupted()) return interrupted();
            fioSamples.push(s);
            process.stderr.write(`[rep ${rep + 1}/${opts.reps}] ${setupTitle(setup).padEnd(14)} ${row.title.padEnd(22)} ${describe(s)}\n`);
          }
        } finally {
          await target.stop();
          await syncFile(fAlpha);
          await syncFile(fBeta);
        }
      }
    }
  }

  // ---- parts 2 and 3: resync ------------------------------------------------
  if (opts.parts.includes('resync')) {
    const rAlpha = join(work, 'resync-alpha.img');
    const rBeta = join(work, 'resync-beta.img');
    process.stderr.write(`creating a ${opts.resyncBytes / MiB} MiB image of random data and a zero-filled one\n`);
    await createImage(rAlpha, opts.resyncBytes, 'random');
    await createImage(rBeta, opts.resyncBytes, 'zero');
    for (let rep = 0; rep < opts.reps; rep++) {
      if (isInterrupted()) return interrupted();
      const sample: ResyncSample = { rep, bytes: opts.resyncBytes };
      resyncSamples.push(sample);
      const base: ResyncSample = { rep, bytes: opts.resyncBytes };
      if (baselineCli !== undefined) baselineSamples.push(base);
      // Rotate which copy runs first.
      const kinds: Array<'nbdcopy' | 'mirrorbd' | 'baseline'> = baselineCli === undefined ? ['nbdcopy', 'mirrorbd'] : ['nbdcopy', 'mirrorbd', 'baseline'];
      const steps = kinds.map((_, i) => kinds[(i + rep) % kinds.length]!);
      for (const step of steps) {
        if (isInterrupted()) return interrupted();
        await syncFile(rAlpha);
        await syncFile(rBeta);
        if (step === 'nbdcopy') {
          try {
            sample.nbdcopy = { seconds: await timeNbdcopy(work, rAlpha, rBeta) };
            process.stderr.write(
              `[rep ${rep + 1}/${opts.reps}] nbdcopy        ${mibps(opts.resyncBytes, sample.nbdcopy.seconds)} MiB/s (${sample.nbdcopy.seconds.toFixed(2)} s)\n`,
            );
          } catch (e) {
            sample.nbdcopy = { seconds: Number.NaN, error: errorMessage(e) };
            process.stderr.write(`[rep ${rep + 1}/${opts.reps}] nbdcopy FAILED: ${errorMessage(e)}\n`);
          }
        } else {
          const into = step === 'baseline' ? base : sample;
          try {
            await mirrorbdResync(
              into,
              work,
              rAlpha,
              rBeta,
              opts.resyncBytes,
              clockTicks,
              step === 'baseline' ? undefined : profileDir,
              (node, pid) => addPid(`resync-${node}`, pid),
              rep,
              opts.reps,
              step === 'baseline' ? baselineCli : undefined,
            );
          } catch (e) {
            into.error = errorMessage(e);
            process.stderr.write(`[rep ${rep + 1}/${opts.reps}] ${step} resync FAILED: ${into.error}\n`);
          }
        }
        base.nbdcopy = sample.nbdcopy;
      }
      if (sample.dirty !== undefined) {
        // Beta's image is rewritten by the next repetition's copies anyway.
        sample.filesAlone = scatteredCopyCost(rAlpha, rBeta, dirtyOffsets(opts.resyncBytes, rep), BLOCK);
        const f = sample.filesAlone;
        process.stderr.write(
          `[rep ${rep + 1}/${opts.reps}] the same blocks by plain system calls: read ${f.readMs.toFixed(1)} ms, ` +
            `write ${f.writeMs.toFixed(1)} ms, fdatasync ${f.flushMs.toFixed(1)} ms\n`,
        );
      }
    }
  }
  const finishedAt = new Date();

  // ---- report ---------------------------------------------------------------
  const report: string[] = [];
  report.push(`## mirrorbd replication benchmark, ${startedAt.toISOString()}`, '');
  report.push(`command: \`${command}\``, '');
  report.push(
    `tools: ${[versions.mirrorbd, versions.fio, versions.nbdkit, versions.nbdcopy, `node ${process.version}`].filter(Boolean).join(', ')}; ` +
      `host: ${cpus().length} CPUs (${cpus()[0]?.model.trim() ?? 'unknown'}), ${Math.round(totalmem() / 2 ** 30)} GiB; ` +
      `${opts.reps} rep(s), medians over reps; resync-rate ${RESYNC_RATE} (the largest the config takes, so no rate limit applies)`,
    '',
  );
  const targetLines: string[] = [];
  if (opts.parts.includes('fio')) {
    report.push(`fio rows, ${opts.runtime} s each (+${RAMP_SECONDS} s ramp), against the Primary; ratios are IOPS to single-node:`, '');
    if (diskMiBps !== undefined) {
      report.push(`the disk under the images takes ${fmtCount(diskMiBps)} MiB/s written and flushed (${DISK_PROBE_BYTES / MiB} MiB, then fdatasync)`, '');
    }
    report.push(fioTable(opts.rows, opts.setups, fioSamples), '');
    report.push(
      'p50 latency, CPU (Primary / Secondary / fio, % of one core) and what reached the disk under both nodes\' images ' +
        `(MiB/s written to block device ${disk?.device ?? 'unknown'} during the row; medians):`,
      '',
    );
    report.push(fioDetailTable(opts.rows, opts.setups, fioSamples), '');
    targetLines.push(...fioTargets(opts.setups, fioSamples));
  }
  if (opts.parts.includes('resync')) {
    report.push(`resync of ${opts.resyncBytes / MiB} MiB (medians over ${opts.reps} rep(s)):`, '');
    report.push(resyncTable(resyncSamples), '');
    targetLines.push(...resyncTargets(resyncSamples));
    if (baselineSamples.length > 0) {
      report.push(`the baseline build (${opts.baseline}), alternating with this one in the same repetitions:`, '');
      report.push(resyncTable(baselineSamples), '');
      targetLines.push(...resyncTargets(baselineSamples).map((l) => l.replace('- ', '- baseline: ')));
    }
  }
  if (targetLines.length > 0) report.push('targets:', '', ...targetLines, '');

  const failures = [
    ...fioSamples.filter((s) => s.error).map((s) => `- rep ${s.rep + 1} ${s.setup} ${s.row}: ${s.error?.split('\n')[0]}`),
    ...resyncSamples.flatMap((s) => [
      ...(s.error ? [`- rep ${s.rep + 1} mirrorbd resync: ${s.error.split('\n')[0]}`] : []),
      ...(s.nbdcopy?.error ? [`- rep ${s.rep + 1} nbdcopy: ${s.nbdcopy.error.split('\n')[0]}`] : []),
    ]),
  ];
  if (failures.length > 0) report.push(`${failures.length} measurement(s) failed:`, ...new Set(failures), '');

  const profiles: Record<string, string> = {};
  if (profileDir) {
    for (const [key, pids] of Object.entries(profilePids)) {
      const { files, profiles: ps } = await readProfiles(profileDir, pids);
      const title = key.startsWith('resync-')
        ? `resync parts, ${key.slice('resync-'.length)}`
        : `${setupTitle(key as Setup)}, ${key === 'single' ? 'the node' : 'alpha (Primary)'}`;
      profiles[key] =
        ps.length === 0
          ? `no .cpuprofile from pids ${pids.join(', ')} in ${profileDir}`
          : `mirrorbd daemon CPU profile, ${title} (${files.length} file(s) in ${profileDir}), top ${PROFILE_TOP} by self time:\n\n` +
            '```\n' +
            formatTopFunctions(summarizeProfiles(ps, REPO_ROOT), PROFILE_TOP) +
            '\n```';
      report.push(profiles[key] as string, '');
    }
  }

  await writeFile(
    out,
    `${JSON.stringify(
      {
        benchmark: 'replication',
        command,
        startedAt: startedAt.toISOString(),
        finishedAt: finishedAt.toISOString(),
        options: {
          reps: opts.reps,
          runtime: opts.runtime,
          rampSeconds: RAMP_SECONDS,
          parts: opts.parts,
          setups: opts.setups,
          rows: opts.rows.map((r) => r.id),
          fioImageBytes: FIO_IMAGE_BYTES,
          resyncBytes: opts.resyncBytes,
          resyncRate: RESYNC_RATE,
          dirtyFraction: DIRTY_FRACTION,
          dirtyWriteDepth: DIRTY_WRITE_DEPTH,
        },
        versions: { ...versions, node: process.version },
        host: { cpus: cpus().length, cpuModel: cpus()[0]?.model.trim(), memoryBytes: totalmem() },
        targets: TARGETS,
        rows: opts.rows.map((r) => ({ ...r, fioArgs: fioArgs(r, 'nbd://HOST:PORT/NAME', opts.runtime, FIO_IMAGE_BYTES) })),
        summary: { fio: summarizeFio(opts.rows, opts.setups, fioSamples), resync: summarizeResync(resyncSamples) },
        fioSamples,
        resyncSamples,
        baselineSamples,
        profiles,
      },
      null,
      1,
    )}\n`,
  );
  report.push(`raw results: ${out}`);
  if (keep) report.push(`work directory kept: ${work}`);
  process.stdout.write(`${report.join('\n')}\n`);
  unregisterWork();
  await removeWork();
  return failures.length > 0 ? 1 : 0;
}

// ---------------------------------------------------------------------------
// fio setups

interface FioTarget {
  uri: string;
  primaryPid: number | undefined;
  secondaryPid: number | undefined;
  /** Bytes the Primary has sent to its peer so far (two-node setups). */
  bytesSent(): Promise<number | undefined>;
  stop(): Promise<void>;
}

function setupTitle(s: Setup): string {
  return s === 'single' ? 'single node' : `protocol ${s}`;
}

async function freePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  for (let i = 0; ports.size < n && i < 50; i++) ports.add(await freePort(BENCH_HOST));
  if (ports.size < n) throw new Error('could not find free ports');
  return [...ports];
}

async function startFioTarget(setup: Setup, work: string, fAlpha: string, fBeta: string, profileDir: string | undefined): Promise<FioTarget> {
  if (setup === 'single') {
    // The frontend benchmark's mirrorbd: one node, no peers, the whole image exported.
    const ctx = { dir: join(work, 'single'), image: fAlpha, profileDir };
    await mkdir(ctx.dir, { recursive: true });
    const server: RunningServer = await launcher('mirrorbd').start(ctx, await freePort(BENCH_HOST));
    return {
      uri: server.uri,
      primaryPid: server.pid,
      secondaryPid: undefined,
      bytesSent: async () => undefined,
      stop: () => server.stop(),
    };
  }
  const cluster = await Cluster.create(await pairSpec(join(work, `pair-${setup}`), setup, fAlpha, fBeta, profileDir));
  try {
    await cluster.skipSyncAndPromote();
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return {
    uri: cluster.nbdUri('alpha'),
    primaryPid: cluster.pids.alpha,
    secondaryPid: cluster.pids.beta,
    bytesSent: async () => (await cluster.status('alpha')).peers[0]?.bytesSent,
    stop: () => cluster.stop(),
  };
}

async function pairSpec(
  dir: string,
  protocol: Protocol,
  imageAlpha: string,
  imageBeta: string,
  profileDir: string | undefined,
  profileNodes?: readonly NodeName[],
): Promise<ClusterSpec> {
  const [a, b, c, d] = (await freePorts(4)) as [number, number, number, number];
  return {
    dir,
    protocol,
    profileDir,
    profileNodes,
    nodes: {
      alpha: { image: imageAlpha, meta: join(dir, 'alpha.md'), replPort: a, nbdPort: b },
      beta: { image: imageBeta, meta: join(dir, 'beta.md'), replPort: c, nbdPort: d },
    },
  };
}

async function runRow(
  rep: number,
  setup: Setup,
  target: FioTarget,
  row: FioRow,
  runtime: number,
  clockTicks: number,
  disk: DiskCounter | undefined,
  images: readonly string[],
): Promise<FioSample> {
  const cpu = async (pid: number | undefined): Promise<number | null> => (pid === undefined ? null : cpuSeconds(pid, clockTicks));
  // What earlier rows left dirty in the page cache goes to the disk now, not
  // by the kernel's write-back in the middle of this row (it writes pages
  // back about 30 s after they were dirtied, into whichever row runs then).
  for (const image of images) await syncFile(image);
  const sent0 = await target.bytesSent().catch(() => undefined);
  const disk0 = await disk?.written();
  const p0 = await cpu(target.primaryPid);
  const s0 = await cpu(target.secondaryPid);
  const t0 = process.hrtime.bigint();
  let r: FioResult;
  try {
    r = await runFioRow(row, target.uri, runtime, FIO_IMAGE_BYTES);
  } catch (e) {
    return { rep, setup, row: row.id, error: errorMessage(e) };
  }
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const p1 = await cpu(target.primaryPid);
  const s1 = await cpu(target.secondaryPid);
  const sent1 = await target.bytesSent().catch(() => undefined);
  const disk1 = await disk?.written();
  const pct = (a: number | null, b: number | null): number | undefined => (a !== null && b !== null ? (100 * (b - a)) / wall : undefined);
  return {
    rep,
    setup,
    row: row.id,
    iops: r.iops,
    mibps: r.mibps,
    latNs: r.lat,
    flushLatNs: r.flush,
    primaryCpuPercent: pct(p0, p1),
    secondaryCpuPercent: pct(s0, s1),
    fioCpuPercent: r.fioCpuPercent,
    replicatedBytes: sent0 !== undefined && sent1 !== undefined ? sent1 - sent0 : undefined,
    diskWrittenBytes: disk0 !== undefined && disk1 !== undefined ? disk1 - disk0 : undefined,
    wallSeconds: wall,
    fio: r.raw,
  };
}

function describe(s: FioSample): string {
  if (s.error) return `FAILED: ${s.error.split('\n')[0]}`;
  const flush = s.flushLatNs ? ` flush p99 ${fmtNs(s.flushLatNs.p99)}` : '';
  return `${fmtCount(s.iops ?? NaN)} IOPS ${fmtCount(s.mibps ?? NaN)} MiB/s p99 ${fmtNs(s.latNs?.p99 ?? NaN)}${flush}`;
}

interface FioCell {
  iops: number;
  iopsMin: number;
  iopsMax: number;
  mibps: number;
  p50: number;
  p99: number;
  /** Median over the repetitions of each one's mean latency. */
  lat: { mean: number };
  flushP50: number;
  flushP99: number;
  primaryCpu: number;
  secondaryCpu: number;
  fioCpu: number;
  replicatedBytes: number;
  /** MiB/s written to the block device during the row. */
  diskMiBps: number;
  n: number;
}

function fioCell(samples: readonly FioSample[], setup: Setup, row: FioRow): FioCell {
  const ok = samples.filter((s) => s.setup === setup && s.row === row.id && !s.error);
  const m = (f: (s: FioSample) => number | undefined): number => median(ok.map((s) => f(s) ?? NaN));
  return {
    iops: m((s) => s.iops),
    iopsMin: Math.min(...ok.map((s) => s.iops ?? NaN)),
    iopsMax: Math.max(...ok.map((s) => s.iops ?? NaN)),
    mibps: m((s) => s.mibps),
    p50: m((s) => s.latNs?.p50),
    p99: m((s) => s.latNs?.p99),
    lat: { mean: m((s) => s.latNs?.mean) },
    flushP50: m((s) => s.flushLatNs?.p50),
    flushP99: m((s) => s.flushLatNs?.p99),
    primaryCpu: m((s) => s.primaryCpuPercent),
    secondaryCpu: m((s) => s.secondaryCpuPercent),
    fioCpu: m((s) => s.fioCpuPercent),
    replicatedBytes: m((s) => s.replicatedBytes),
    diskMiBps: m((s) => (s.diskWrittenBytes !== undefined && s.wallSeconds ? s.diskWrittenBytes / MiB / s.wallSeconds : undefined)),
    n: ok.length,
  };
}

function summarizeFio(rows: readonly FioRow[], setups: readonly Setup[], samples: readonly FioSample[]): Record<string, Record<string, FioCell>> {
  const out: Record<string, Record<string, FioCell>> = {};
  for (const row of rows) {
    const r: Record<string, FioCell> = {};
    for (const s of setups) r[s] = fioCell(samples, s, row);
    out[row.id] = r;
  }
  return out;
}

function fioTable(rows: readonly FioRow[], setups: readonly Setup[], samples: readonly FioSample[]): string {
  const pairs = setups.includes('single') ? setups.filter((s) => s !== 'single') : [];
  const name = (s: Setup): string => (s === 'single' ? 'single' : `prot ${s}`);
  const headers = ['row', ...setups.flatMap((s) => [`${name(s)} IOPS`, `${name(s)} p99`]), ...pairs.map((p) => `${p}/single`)];
  const body = rows.map((row) => {
    const cells = setups.map((s) => fioCell(samples, s, row));
    const iops = (c: FioCell): string =>
      c.n === 0 ? 'failed' : row.bs >= MiB ? `${fmtCount(c.iops)} (${fmtCount(c.mibps)} MiB/s)` : fmtCount(c.iops);
    const p99 = (c: FioCell): string =>
      c.n === 0 ? '—' : row.fsync !== undefined ? `${fmtNs(c.p99)} + ${fmtNs(c.flushP99)} flush` : fmtNs(c.p99);
    const single = fioCell(samples, 'single', row);
    return [row.title, ...cells.flatMap((c) => [iops(c), p99(c)]), ...pairs.map((p) => fmtRatio(fioCell(samples, p, row).iops / single.iops))];
  });
  return markdownTable(headers, body);
}

function fioDetailTable(rows: readonly FioRow[], setups: readonly Setup[], samples: readonly FioSample[]): string {
  const name = (s: Setup): string => (s === 'single' ? 'single' : `prot ${s}`);
  const headers = ['row', ...setups.flatMap((s) => [`${name(s)} p50`, `${name(s)} CPU`, `${name(s)} disk`])];
  const pct = (v: number): string => (Number.isFinite(v) ? `${Math.round(v)}%` : '—');
  const rate = (v: number): string => (Number.isFinite(v) ? `${fmtCount(v)} MiB/s` : '—');
  const body = rows.map((row) => [
    row.title,
    ...setups.flatMap((s) => {
      const c = fioCell(samples, s, row);
      if (c.n === 0) return ['—', '—', '—'];
      const p50 = row.fsync !== undefined ? `${fmtNs(c.p50)} + ${fmtNs(c.flushP50)} flush` : fmtNs(c.p50);
      const cpu = s === 'single' ? `${pct(c.primaryCpu)} / — / ${pct(c.fioCpu)}` : `${pct(c.primaryCpu)} / ${pct(c.secondaryCpu)} / ${pct(c.fioCpu)}`;
      return [p50, cpu, rate(c.diskMiBps)];
    }),
  ]);
  return markdownTable(headers, body);
}

function verdict(ok: boolean | undefined): string {
  return ok === undefined ? 'n/a' : ok ? 'met' : 'MISSED';
}

function fioTargets(setups: readonly Setup[], samples: readonly FioSample[]): string[] {
  if (!setups.includes('single') || !setups.includes('C')) return [];
  const out: string[] = [];
  const seq = FRONTEND_ROWS.find((r) => r.id === 'seq-write-1m-qd8');
  const qd1 = FRONTEND_ROWS.find((r) => r.id === 'rand-write-4k-qd1');
  if (seq && samples.some((s) => s.row === seq.id)) {
    const r = fioCell(samples, 'C', seq).mibps / fioCell(samples, 'single', seq).mibps;
    out.push(
      `- protocol C 1 MiB seq write: ${fmtRatio(r)} of single-node MiB/s (target ≥ ${TARGETS.cSeqWriteRatio}×): ` +
        verdict(Number.isFinite(r) ? r >= TARGETS.cSeqWriteRatio : undefined),
    );
  }
  if (qd1 && samples.some((s) => s.row === qd1.id)) {
    const c = fioCell(samples, 'C', qd1);
    const s = fioCell(samples, 'single', qd1);
    const r50 = c.p50 / s.p50;
    const rMean = c.lat.mean / s.lat.mean;
    const r99 = c.p99 / s.p99;
    const v = (r: number): string => verdict(Number.isFinite(r) ? r <= TARGETS.cQd1LatencyRatio : undefined);
    out.push(
      `- protocol C 4 KiB QD1 write latency (target ≤ ${TARGETS.cQd1LatencyRatio}× single-node): ` +
        `p50 ${fmtNs(c.p50)} = ${fmtRatio(r50)} ${v(r50)}; mean ${fmtNs(c.lat.mean)} = ${fmtRatio(rMean)} ${v(rMean)}; ` +
        `p99 ${fmtNs(c.p99)} = ${fmtRatio(r99)} ${v(r99)}`,
    );
  }
  return out;
}

// ---------------------------------------------------------------------------
// Resync parts

async function timeNbdcopy(work: string, src: string, dst: string): Promise<number> {
  const [p1, p2] = (await freePorts(2)) as [number, number];
  const srcDir = join(work, 'nbdkit-src');
  const dstDir = join(work, 'nbdkit-dst');
  await mkdir(srcDir, { recursive: true });
  await mkdir(dstDir, { recursive: true });
  const a = await launcher('nbdkit').start({ dir: srcDir, image: src }, p1);
  try {
    const b = await launcher('nbdkit').start({ dir: dstDir, image: dst }, p2);
    try {
      const t0 = process.hrtime.bigint();
      // --flush: the copy is durable at the end, as a finished resync is.
      await runChecked('nbdcopy', ['--flush', `nbd://${BENCH_HOST}:${p1}/`, `nbd://${BENCH_HOST}:${p2}/`], { timeoutMs: RESYNC_TIMEOUT_MS });
      return Number(process.hrtime.bigint() - t0) / 1e9;
    } finally {
      await b.stop();
    }
  } finally {
    await a.stop();
  }
}

async function mirrorbdResync(
  sample: ResyncSample,
  work: string,
  rAlpha: string,
  rBeta: string,
  bytes: number,
  clockTicks: number,
  profileDir: string | undefined,
  notePid: (node: NodeName, pid: number | undefined) => void,
  rep: number,
  reps: number,
  cli?: string,
): Promise<void> {
  const tag = `[rep ${rep + 1}/${reps}]${cli === undefined ? '' : ' baseline'}`;
  // Fresh metadata on both nodes: the handshake decides a full sync once alpha is forced Primary.
  const cluster = await Cluster.create({ ...(await pairSpec(join(work, 'pair-resync'), 'C', rAlpha, rBeta, profileDir, NODES)), cli });
  for (const node of NODES) notePid(node, cluster.pids[node]);
  const watchers: EventWatcher[] = [];
  try {
    const alphaEv = await EventWatcher.start(cluster.conf, 'alpha', cluster.cliPath);
    watchers.push(alphaEv);
    const betaEv = await EventWatcher.start(cluster.conf, 'beta', cluster.cliPath);
    watchers.push(betaEv);
    const cpu = async (node: NodeName): Promise<number | null> => {
      const pid = cluster.pids[node];
      return pid === undefined ? null : cpuSeconds(pid, clockTicks);
    };

    // ---- full resync
    const cpuA0 = await cpu('alpha');
    const cpuB0 = await cpu('beta');
    const sent0 = (await cluster.status('alpha')).peers[0]?.bytesSent ?? 0;
    const startMs = Date.now();
    const markFullA = alphaEv.events.length;
    const markFullB = betaEv.events.length;
    await cluster.cli('alpha', ['primary', 'r0', '--force']);
    const upToDate = await betaEv.waitFor((e) => e.type === 'disk' && e.to === 'UpToDate', RESYNC_TIMEOUT_MS, 'beta UpToDate');
    const fullEndMs = upToDate.timeMs;
    const done = await betaEv.waitFor((e) => e.type === 'resync-done', 10_000, 'resync-done on beta').catch(() => undefined);
    const cpuA1 = await cpu('alpha');
    const cpuB1 = await cpu('beta');
    const wall = (Date.now() - startMs) / 1000;
    const srcDone = await alphaEv.waitFor((e) => e.type === 'resync-done', 30_000, 'resync-done on alpha');
    await alphaEv.waitFor((e) => e.type === 'replication' && e.to === 'Established', 30_000, 'alpha Established', alphaEv.events.indexOf(srcDone));
    const st = await cluster.status('alpha');
    const pct = (a: number | null, b: number | null): number | undefined => (a !== null && b !== null ? (100 * (b - a)) / wall : undefined);
    const promoted = alphaEv.events.slice(markFullA).find((e) => e.type === 'role' && e.to === 'Primary');
    sample.full = {
      seconds: (fullEndMs - startMs) / 1000,
      daemonSeconds: promoted ? (fullEndMs - promoted.timeMs) / 1000 : undefined,
      targetBytes: numberField(done, 'bytes'),
      targetMs: numberField(done, 'ms'),
      bytesSent: (st.peers[0]?.bytesSent ?? 0) - sent0,
      primaryCpuPercent: pct(cpuA0, cpuA1),
      secondaryCpuPercent: pct(cpuB0, cpuB1),
    };
    process.stderr.write(
      `${tag} mirrorbd full  ${mibps(bytes, sample.full.seconds)} MiB/s (${sample.full.seconds.toFixed(2)} s to UpToDate; ` +
        `target's resync ${sample.full.targetMs ?? '?'} ms)\n`,
    );

    // ---- 1 % dirty
    await cluster.cli('alpha', ['disconnect', 'r0']);
    await cluster.waitStatus('alpha', (s) => s.peers[0]?.connection === 'StandAlone', 30_000, 'alpha StandAlone');
    const offsets = dirtyOffsets(bytes, rep);
    const blocks = offsets.length;
    const client = await NbdClient.open(BENCH_HOST, cluster.spec.nodes.alpha.nbdPort, 'r0');
    try {
      await client.writeBlocks(offsets, randomFillSync(Buffer.alloc(BLOCK)), DIRTY_WRITE_DEPTH);
    } finally {
      await client.close();
    }
    const before = await cluster.status('alpha');
    const oos = before.peers[0]?.outOfSyncBytes ?? 0;
    const sentD0 = before.peers[0]?.bytesSent ?? 0;
    const recvD0 = before.peers[0]?.bytesReceived ?? 0;
    await syncFile(rAlpha);
    await syncFile(rBeta);
    const mark = alphaEv.events.length;
    const markB = betaEv.events.length;
    const t0 = Date.now();
    await cluster.cli('alpha', ['connect', 'r0']);
    // The end, as for the full resync: the SyncTarget says UpToDate (its
    // disk event). Every time below is a daemon's own event timestamp, read
    // from the events stream: nothing polls while the resync runs.
    const upToDateD = await betaEv.waitFor((e) => e.type === 'disk' && e.to === 'UpToDate', RESYNC_TIMEOUT_MS, 'beta UpToDate after connect', markB);
    // The source ends its side with resync-done, then replication Established.
    const srcDoneD = await alphaEv.waitFor((e) => e.type === 'resync-done', 30_000, 'resync-done on alpha after connect', mark);
    const est = await alphaEv.waitFor(
      (e) => e.type === 'replication' && e.to === 'Established',
      30_000,
      'alpha Established after connect',
      alphaEv.events.indexOf(srcDoneD),
    );
    const connected = alphaEv.events.slice(mark).find((e) => e.type === 'connection' && e.to === 'Connected');
    const syncTarget = betaEv.events.slice(markB).find((e) => e.type === 'replication' && e.to === 'SyncTarget');
    const acted = alphaEv.events[mark];
    const doneD = await betaEv.waitFor((e) => e.type === 'resync-done', 5_000, 'resync-done on beta', markB).catch(() => undefined);
    // Measured already; this only checks the outcome.
    const after = await cluster.waitStatus('alpha', (s) => s.peers[0]?.outOfSyncBytes === 0, 30_000, 'outOfSyncBytes 0');
    const endMs = upToDateD.timeMs;
    sample.dirty = {
      blocks,
      outOfSyncBytes: oos,
      seconds: (endMs - t0) / 1000,
      daemonSeconds: acted ? (endMs - acted.timeMs) / 1000 : undefined,
      connectSeconds: connected ? (connected.timeMs - t0) / 1000 : undefined,
      handshakeSeconds: connected && syncTarget ? (syncTarget.timeMs - connected.timeMs) / 1000 : undefined,
      copySeconds: syncTarget ? (endMs - syncTarget.timeMs) / 1000 : undefined,
      sourceDoneSeconds: (est.timeMs - t0) / 1000,
      targetBytes: numberField(doneD, 'bytes'),
      targetMs: numberField(doneD, 'ms'),
      bytesSent: (after.peers[0]?.bytesSent ?? 0) - sentD0,
      bytesReceived: (after.peers[0]?.bytesReceived ?? 0) - recvD0,
    };
    sample.timeline = {
      full: timeline(startMs, alphaEv.events.slice(markFullA, mark), betaEv.events.slice(markFullB, markB)),
      dirty: timeline(t0, alphaEv.events.slice(mark), betaEv.events.slice(markB)),
    };
    process.stderr.write(
      `${tag} mirrorbd dirty ${blocks} blocks (${fmtBytes(oos)} out of sync): ${sample.dirty.seconds.toFixed(3)} s to UpToDate ` +
        `(${pctOf(sample.dirty.seconds, sample.full.seconds)} of full); in the daemons ${sample.dirty.daemonSeconds?.toFixed(3) ?? '?'} s ` +
        `(${pctOf(sample.dirty.daemonSeconds ?? NaN, sample.full.daemonSeconds ?? NaN)} of full), ${fmtBytes(sample.dirty.bytesSent)} sent\n`,
    );
  } finally {
    for (const w of watchers) await w.stop();
    await cluster.stop();
  }
}

/** The blocks the 1 % dirty resync of repetition `rep` marks (byte offsets), the same for every build. */
function dirtyOffsets(bytes: number, rep: number): number[] {
  const blocks = Math.round((bytes / BLOCK) * DIRTY_FRACTION);
  return scatteredIndices(bytes / BLOCK, blocks, DIRTY_SEED + rep).map((i) => i * BLOCK);
}

/** Events of both nodes in time order, as "+MS node type to/details". */
function timeline(t0: number, alpha: readonly MirrorEvent[], beta: readonly MirrorEvent[]): string[] {
  const tagged = [...alpha.map((e) => ['alpha', e] as const), ...beta.map((e) => ['beta', e] as const)];
  tagged.sort((a, b) => a[1].timeMs - b[1].timeMs);
  return tagged.map(([node, e]) => {
    const { type, seq: _seq, timeMs, resource: _res, ...rest } = e;
    return `+${timeMs - t0} ms ${node} ${type} ${JSON.stringify(rest)}`;
  });
}

function numberField(e: MirrorEvent | undefined, key: string): number | undefined {
  const v = e?.[key];
  return typeof v === 'number' ? v : undefined;
}

function mibps(bytes: number, seconds: number): string {
  return fmtCount(bytes / MiB / seconds);
}

function pctOf(part: number, whole: number): string {
  const r = part / whole;
  return Number.isFinite(r) ? `${(100 * r).toFixed(1)} %` : '—';
}

function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return '—';
  if (n >= MiB) return `${fmtCount(n / MiB)} MiB`;
  if (n >= KiB) return `${fmtCount(n / KiB)} KiB`;
  return `${n} B`;
}

interface ResyncSummary {
  bytes: number;
  nbdcopySeconds: number;
  fullSeconds: number;
  fullDaemonSeconds: number;
  fullTargetMs: number;
  fullBytesSent: number;
  dirtySeconds: number;
  dirtyDaemonSeconds: number;
  dirtyConnectSeconds: number;
  dirtyHandshakeSeconds: number;
  dirtyCopySeconds: number;
  dirtySourceDoneSeconds: number;
  dirtyTargetMs: number;
  dirtyOutOfSyncBytes: number;
  dirtyBytesSent: number;
  dirtyBytesReceived: number;
  filesReadMs: number;
  filesWriteMs: number;
  filesFlushMs: number;
  n: number;
}

function summarizeResync(samples: readonly ResyncSample[]): ResyncSummary {
  const m = (f: (s: ResyncSample) => number | undefined): number => median(samples.map((s) => f(s) ?? NaN));
  return {
    bytes: samples[0]?.bytes ?? NaN,
    nbdcopySeconds: m((s) => (s.nbdcopy?.error ? undefined : s.nbdcopy?.seconds)),
    fullSeconds: m((s) => s.full?.seconds),
    fullDaemonSeconds: m((s) => s.full?.daemonSeconds),
    fullTargetMs: m((s) => s.full?.targetMs),
    fullBytesSent: m((s) => s.full?.bytesSent),
    dirtySeconds: m((s) => s.dirty?.seconds),
    dirtyDaemonSeconds: m((s) => s.dirty?.daemonSeconds),
    dirtyConnectSeconds: m((s) => s.dirty?.connectSeconds),
    dirtyHandshakeSeconds: m((s) => s.dirty?.handshakeSeconds),
    dirtyCopySeconds: m((s) => s.dirty?.copySeconds),
    dirtySourceDoneSeconds: m((s) => s.dirty?.sourceDoneSeconds),
    dirtyTargetMs: m((s) => s.dirty?.targetMs),
    dirtyOutOfSyncBytes: m((s) => s.dirty?.outOfSyncBytes),
    dirtyBytesSent: m((s) => s.dirty?.bytesSent),
    dirtyBytesReceived: m((s) => s.dirty?.bytesReceived),
    filesReadMs: m((s) => s.filesAlone?.readMs),
    filesWriteMs: m((s) => s.filesAlone?.writeMs),
    filesFlushMs: m((s) => s.filesAlone?.flushMs),
    n: samples.length,
  };
}

/**
 * What no resync of the dirty blocks can beat on this disk: beta's writes of
 * them and the flush that makes them durable, by plain system calls.
 */
function filesFloorSeconds(s: ResyncSummary): number {
  return (s.filesWriteMs + s.filesFlushMs) / 1000;
}

function resyncTable(samples: readonly ResyncSample[]): string {
  const s = summarizeResync(samples);
  const ms = (v: number): string => (Number.isFinite(v) ? `${v.toFixed(1)} ms` : '—');
  const sec = (v: number): string => (Number.isFinite(v) ? `${v.toFixed(v < 1 ? 3 : 2)} s` : '—');
  const rate = (seconds: number): string => (Number.isFinite(seconds) ? `${mibps(s.bytes, seconds)} MiB/s` : '—');
  const rows: string[][] = [
    ['nbdcopy --flush, nbdkit → nbdkit', sec(s.nbdcopySeconds), rate(s.nbdcopySeconds), fmtBytes(s.bytes), '1.00×'],
    [
      'mirrorbd full resync: `primary --force` → beta UpToDate',
      sec(s.fullSeconds),
      rate(s.fullSeconds),
      fmtBytes(s.fullBytesSent),
      fmtRatio(s.nbdcopySeconds / s.fullSeconds),
    ],
    [
      '  from the daemon\'s promotion (role event) → beta UpToDate',
      sec(s.fullDaemonSeconds),
      rate(s.fullDaemonSeconds),
      '',
      fmtRatio(s.nbdcopySeconds / s.fullDaemonSeconds),
    ],
    [
      '  (the SyncTarget\'s own count: resync start → done)',
      sec(s.fullTargetMs / 1000),
      rate(s.fullTargetMs / 1000),
      '',
      fmtRatio(s.nbdcopySeconds / (s.fullTargetMs / 1000)),
    ],
    [
      `mirrorbd 1 % dirty (${fmtBytes(s.dirtyOutOfSyncBytes)} out of sync): \`connect\` → beta UpToDate`,
      sec(s.dirtySeconds),
      `${pctOf(s.dirtySeconds, s.fullSeconds)} of full`,
      `${fmtBytes(s.dirtyBytesSent)} (received ${fmtBytes(s.dirtyBytesReceived)})`,
      '',
    ],
    [
      '  from the daemon\'s taking `connect` (first event) → beta UpToDate',
      sec(s.dirtyDaemonSeconds),
      `${pctOf(s.dirtyDaemonSeconds, s.fullDaemonSeconds)} of full (same)`,
      '',
      '',
    ],
    ['    `connect` → Connected (from the command)', sec(s.dirtyConnectSeconds), '', '', ''],
    ['    Connected → beta SyncTarget (decision, bitmaps, Inconsistent persisted)', sec(s.dirtyHandshakeSeconds), '', '', ''],
    ['    beta SyncTarget → beta UpToDate (the copy and its end)', sec(s.dirtyCopySeconds), '', '', ''],
    ['  (the SyncTarget\'s own count: resync start → done)', sec(s.dirtyTargetMs / 1000), '', '', ''],
    ['  (`connect` → alpha, too, Established after its resync-done)', sec(s.dirtySourceDoneSeconds), '', '', ''],
    [
      'the same blocks by plain system calls (no mirrorbd): beta\'s writes + fdatasync',
      sec(filesFloorSeconds(s)),
      `${pctOf(filesFloorSeconds(s), s.fullDaemonSeconds)} of full (daemons)`,
      '',
      '',
    ],
    ['  alpha\'s reads / beta\'s writes / beta\'s fdatasync', `${ms(s.filesReadMs)} / ${ms(s.filesWriteMs)} / ${ms(s.filesFlushMs)}`, '', '', ''],
  ];
  return markdownTable(['copy', 'time', 'rate', 'bytes sent by alpha', 'rate / nbdcopy'], rows);
}

function resyncTargets(samples: readonly ResyncSample[]): string[] {
  const s = summarizeResync(samples);
  const full = s.nbdcopySeconds / s.fullSeconds;
  const fullDaemon = s.nbdcopySeconds / s.fullDaemonSeconds;
  const dirty = s.dirtySeconds / s.fullSeconds;
  const dirtyDaemon = s.dirtyDaemonSeconds / s.fullDaemonSeconds;
  const atLeast = (v: number, t: number): string => verdict(Number.isFinite(v) ? v >= t : undefined);
  const atMost = (v: number, t: number): string => verdict(Number.isFinite(v) ? v <= t : undefined);
  return [
    `- full resync: ${fmtRatio(full)} of nbdcopy's rate from the command (target ≥ ${TARGETS.fullResyncVsNbdcopy}×): ` +
      `${atLeast(full, TARGETS.fullResyncVsNbdcopy)}; inside the daemons (promotion → UpToDate, without the CLI's start-up): ` +
      `${fmtRatio(fullDaemon)}, ${atLeast(fullDaemon, TARGETS.fullResyncVsNbdcopy)}`,
    `- 1 % dirty resync: ${pctOf(s.dirtySeconds, s.fullSeconds)} of the full resync's time from the command ` +
      `(target ≤ ${100 * TARGETS.dirtyVsFullTime} %): ${atMost(dirty, TARGETS.dirtyVsFullTime)}; inside the daemons: ` +
      `${pctOf(s.dirtyDaemonSeconds, s.fullDaemonSeconds)}, ${atMost(dirtyDaemon, TARGETS.dirtyVsFullTime)}; ` +
      `beta's writes and fdatasync of the same blocks alone, without mirrorbd: ${pctOf(filesFloorSeconds(s), s.fullDaemonSeconds)}`,
  ];
}

// ---------------------------------------------------------------------------

interface Versions {
  mirrorbd?: string;
  fio?: string;
  nbdkit?: string;
  nbdcopy?: string;
}

async function toolVersions(): Promise<Versions> {
  return {
    mirrorbd: await mirrorbdVersion(),
    fio: await toolVersion('fio', ['--version']),
    nbdkit: await toolVersion('nbdkit', ['--version']),
    nbdcopy: await toolVersion('nbdcopy', ['--version']),
  };
}




