/**
 * `bench frontend`: mirrorbd's NBD frontend side by side with nbdkit and
 * qemu-nbd. One image file, served by each server in turn (the order rotates
 * every repetition), the same fio rows against each. Prints a markdown table
 * of medians over the repetitions and writes every sample to a JSON file.
 */

import { randomFillSync } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { formatTopFunctions, readProfiles, summarizeProfiles } from './cpuprofile.js';
import { FRONTEND_ROWS, RAMP_SECONDS, fioArgs, runFioRow, type FioResult, type FioRow } from './fio.js';
import { cpuSeconds, errorMessage, freePort, isInterrupted, onCleanup } from './proc.js';
import { BASELINE_SERVER, BENCH_HOST, SERVER_NAMES, launcher, type RunningServer, type ServerName } from './servers.js';
import { parseCommandLine, positiveInt } from './options.js';
import { median } from './stats.js';
import { fmtCount, fmtNs, fmtRatio, markdownTable } from './table.js';
import { REPO_ROOT, clockTicksPerSecond, commandLine, mirrorbdVersion, stamp, toolVersion } from './environment.js';

const MiB = 1024 * 1024;
/** The image size: 1 GiB, enough that random I/O is not one cache line, small enough to stay in page cache. */
const IMAGE_BYTES = 1024 * MiB;
const PROFILE_TOP = 25;
/** dist/bench/frontend.js -> the repository root. */

const USAGE = `usage: bench frontend [options]

Runs fio's nbd engine against mirrorbd (single node), nbdkit and qemu-nbd,
all serving the same 1 GiB file, and prints a markdown table.

  --reps N          repetitions; each runs every server once (default 3)
  --runtime S       seconds per fio row, after a ${RAMP_SECONDS} s ramp (default 10)
  --quick           1 repetition of 2 s (explicit --reps/--runtime win)
  --servers LIST    comma-separated, from ${SERVER_NAMES.join(',')} (default: all)
  --baseline DIR    also run the mirrorbd build of the checkout in DIR (its
                    dist/), as server ${BASELINE_SERVER}, alternating with this
                    one: an A/B comparison of two versions in one run
  --rows LIST       comma-separated row ids (default: all):
                    ${FRONTEND_ROWS.map((r) => r.id).join(',\n                    ')}
  --dir DIR         make the work directory (image, metadata) inside DIR
                    (default: the system temp directory)
  --out FILE        raw results JSON (default: a new file in the temp directory)
  --profile         run the mirrorbd daemon with --cpu-prof; print its top
                    ${PROFILE_TOP} functions by self time
  --keep            keep the work directory
  -h, --help        this text
`;

interface FrontendOptions {
  reps: number;
  runtime: number;
  servers: ServerName[];
  rows: FioRow[];
  dir: string;
  out?: string;
  /** Root of another built checkout, run as BASELINE_SERVER. */
  baseline?: string;
  profile: boolean;
  keep: boolean;
}

function parseOptions(argv: string[]): FrontendOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      reps: { type: 'string' },
      runtime: { type: 'string' },
      quick: { type: 'boolean', default: false },
      servers: { type: 'string' },
      rows: { type: 'string' },
      dir: { type: 'string' },
      out: { type: 'string' },
      baseline: { type: 'string' },
      profile: { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  const servers = (values.servers ?? SERVER_NAMES.join(','))
    .split(',')
    .filter(Boolean)
    .map((s) => {
      if (!(SERVER_NAMES as readonly string[]).includes(s)) throw new Error(`--servers: unknown server "${s}" (known: ${SERVER_NAMES.join(', ')})`);
      return s as ServerName;
    });
  if (values.baseline !== undefined) {
    // Right after mirrorbd, so the two versions alternate (the order rotates per repetition).
    const at = servers.indexOf('mirrorbd');
    servers.splice(at < 0 ? servers.length : at + 1, 0, BASELINE_SERVER);
  }
  if (servers.length === 0) throw new Error('--servers: name at least one server');
  const rows = values.rows
    ? values.rows.split(',').filter(Boolean).map((id) => {
        const row = FRONTEND_ROWS.find((r) => r.id === id);
        if (!row) throw new Error(`--rows: unknown row "${id}"`);
        return row;
      })
    : [...FRONTEND_ROWS];
  // Keep the documented order whatever order --rows named them in.
  rows.sort((a, b) => FRONTEND_ROWS.indexOf(a) - FRONTEND_ROWS.indexOf(b));
  const dir = values.dir ?? tmpdir();
  // The mirrorbd config names paths unquoted.
  if (/\s|[;{}"#]/.test(dir)) throw new Error(`--dir: use a path without whitespace or config punctuation`);
  return {
    reps: positiveInt('reps', values.reps, values.quick ? 1 : 3),
    runtime: positiveInt('runtime', values.runtime, values.quick ? 2 : 10),
    servers: [...new Set(servers)],
    rows,
    dir,
    out: values.out,
    baseline: values.baseline,
    profile: values.profile,
    keep: values.keep,
  };
}

interface Sample {
  rep: number;
  server: ServerName;
  row: string;
  iops?: number;
  mibps?: number;
  latNs?: { p50: number; p99: number; mean: number };
  flushLatNs?: { p50: number; p99: number; mean: number; count: number };
  /** Server CPU over the fio run (ramp included), percent of one core. */
  serverCpuPercent?: number;
  fioCpuPercent?: number;
  error?: string;
  fio?: unknown;
}

export async function frontendMain(argv: string[]): Promise<number> {
  const opts = parseCommandLine('frontend', USAGE, argv, parseOptions);
  if (typeof opts === 'number') return opts;

  const command = commandLine('frontend', argv);
  const versions = await toolVersions();
  if (!versions.fio) {
    process.stderr.write('bench frontend: fio is not installed (Debian: apt-get install fio)\n');
    return 1;
  }
  const servers: ServerName[] = [];
  for (const name of opts.servers) {
    const why = await launcher(name, opts.baseline).unavailable();
    if (why) process.stderr.write(`bench frontend: skipping ${name}: ${why}\n`);
    else servers.push(name);
  }
  if (servers.length === 0) {
    process.stderr.write('bench frontend: no server to run\n');
    return 1;
  }
  const clockTicks = await clockTicksPerSecond();

  const work = await mkdtemp(join(opts.dir, 'mirrorbd-bench-'));
  const keep = opts.keep;
  const removeWork = async (): Promise<void> => {
    if (!keep) await rm(work, { recursive: true, force: true });
  };
  const unregisterWork = onCleanup('work directory', removeWork);
  const image = join(work, 'disk.img');
  const profileDir = opts.profile ? await mkdtemp(join(tmpdir(), 'mirrorbd-bench-profile-')) : undefined;
  const startedAt = new Date();
  const out = opts.out ?? join(tmpdir(), `mirrorbd-bench-frontend-${stamp(startedAt)}.json`);

  const perSession = opts.rows.length * (opts.runtime + RAMP_SECONDS + 1);
  process.stderr.write(
    `bench frontend: ${opts.reps} rep(s) x ${servers.length} server(s) x ${opts.rows.length} row(s), ` +
      `about ${Math.ceil((opts.reps * servers.length * perSession) / 60)} min; work dir ${work}\n`,
  );
  process.stderr.write(`creating a ${IMAGE_BYTES / MiB} MiB image filled with data\n`);
  await createImage(image, IMAGE_BYTES);

  const samples: Sample[] = [];
  const daemonPids: number[] = [];
  for (let rep = 0; rep < opts.reps; rep++) {
    // Rotate the order so no server always runs first (or right after another).
    const order = servers.map((_, i) => servers[(i + rep) % servers.length] as ServerName);
    for (const name of order) {
      if (isInterrupted()) return 130;
      let server: RunningServer;
      try {
        // Only this checkout's daemon is profiled.
        const ctx = { dir: work, image, profileDir: name === 'mirrorbd' ? profileDir : undefined };
        server = await launcher(name, opts.baseline).start(ctx, await freePort(BENCH_HOST));
      } catch (e) {
        const error = `start failed: ${errorMessage(e)}`;
        process.stderr.write(`[rep ${rep + 1}/${opts.reps}] ${name}: ${error}\n`);
        for (const row of opts.rows) samples.push({ rep, server: name, row: row.id, error });
        continue;
      }
      if (name === 'mirrorbd') daemonPids.push(server.pid);
      try {
        for (const row of opts.rows) {
          const s = await runRow(rep, server, row, opts.runtime, clockTicks);
          if (isInterrupted()) return 130;
          samples.push(s);
          process.stderr.write(`[rep ${rep + 1}/${opts.reps}] ${name.padEnd(8)} ${row.title.padEnd(22)} ${describe(s)}\n`);
        }
      } finally {
        await server.stop();
        // Each server starts with the image's dirty pages already written back.
        await syncFile(image);
      }
    }
  }
  const finishedAt = new Date();

  const report: string[] = [];
  report.push(`## mirrorbd frontend benchmark, ${startedAt.toISOString()}`, '');
  report.push(`command: \`${command}\``, '');
  report.push(
    `tools: ${[versions.mirrorbd, versions.fio, versions.nbdkit, versions.qemuNbd, `node ${process.version}`].filter(Boolean).join(', ')}; ` +
      `host: ${cpus().length} CPUs (${cpus()[0]?.model.trim() ?? 'unknown'}), ${Math.round(totalmem() / 2 ** 30)} GiB; ` +
      `${opts.reps} rep(s) x ${opts.runtime} s (+${RAMP_SECONDS} s ramp), medians over reps`,
    '',
  );
  report.push(resultTable(opts.rows, servers, samples), '');
  report.push('p50 latency and CPU (server / fio, % of one core; medians):', '');
  report.push(detailTable(opts.rows, servers, samples), '');
  const errors = samples.filter((s) => s.error);
  if (errors.length > 0) {
    report.push(`${errors.length} sample(s) failed:`);
    const seen = new Set<string>();
    for (const s of errors) {
      const line = `- rep ${s.rep + 1} ${s.server} ${s.row}: ${s.error?.split('\n')[0]}`;
      if (!seen.has(line)) report.push(line);
      seen.add(line);
    }
    report.push('');
  }

  let profileText: string | undefined;
  if (profileDir) {
    const { files, profiles } = await readProfiles(profileDir, daemonPids);
    if (profiles.length === 0) {
      const all = await readProfiles(profileDir);
      profileText =
        `no .cpuprofile from the mirrorbd daemon (pids ${daemonPids.join(', ') || 'none'}) in ${profileDir}; ` +
        `${all.files.length} other profile(s) there. The daemon must inherit NODE_OPTIONS from \`up\` and exit ` +
        'normally (process.exit on SIGTERM) for V8 to write its profile.';
    } else {
      profileText =
        `mirrorbd daemon CPU profile (${files.length} file(s) in ${profileDir}), top ${PROFILE_TOP} by self time:\n\n` +
        '```\n' +
        formatTopFunctions(summarizeProfiles(profiles, REPO_ROOT), PROFILE_TOP) +
        '\n```';
    }
    report.push(profileText, '');
  }

  await writeFile(
    out,
    `${JSON.stringify(
      {
        benchmark: 'frontend',
        command,
        startedAt: startedAt.toISOString(),
        finishedAt: finishedAt.toISOString(),
        options: { reps: opts.reps, runtime: opts.runtime, baseline: opts.baseline, rampSeconds: RAMP_SECONDS, imageBytes: IMAGE_BYTES, servers, rows: opts.rows.map((r) => r.id) },
        versions: { ...versions, node: process.version },
        host: { cpus: cpus().length, cpuModel: cpus()[0]?.model.trim(), memoryBytes: totalmem() },
        rows: opts.rows.map((r) => ({ ...r, fioArgs: fioArgs(r, 'nbd://HOST:PORT/NAME', opts.runtime, IMAGE_BYTES) })),
        summary: summarize(opts.rows, servers, samples),
        samples,
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
  return errors.length > 0 ? 1 : 0;
}

async function runRow(rep: number, server: RunningServer, row: FioRow, runtime: number, clockTicks: number): Promise<Sample> {
  const cpu0 = await cpuSeconds(server.pid, clockTicks);
  const t0 = process.hrtime.bigint();
  let r: FioResult;
  try {
    r = await runFioRow(row, server.uri, runtime, IMAGE_BYTES);
  } catch (e) {
    return { rep, server: server.name, row: row.id, error: errorMessage(e) };
  }
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu1 = await cpuSeconds(server.pid, clockTicks);
  return {
    rep,
    server: server.name,
    row: row.id,
    iops: r.iops,
    mibps: r.mibps,
    latNs: r.lat,
    flushLatNs: r.flush,
    serverCpuPercent: cpu0 !== null && cpu1 !== null ? (100 * (cpu1 - cpu0)) / wall : undefined,
    fioCpuPercent: r.fioCpuPercent,
    fio: r.raw,
  };
}

function describe(s: Sample): string {
  if (s.error) return `FAILED: ${s.error.split('\n')[0]}`;
  const flush = s.flushLatNs ? ` flush p99 ${fmtNs(s.flushLatNs.p99)}` : '';
  return `${fmtCount(s.iops ?? NaN)} IOPS ${fmtCount(s.mibps ?? NaN)} MiB/s p99 ${fmtNs(s.latNs?.p99 ?? NaN)}${flush}`;
}

interface Cell {
  iops: number;
  /** The spread of IOPS over the repetitions. */
  iopsMin: number;
  iopsMax: number;
  mibps: number;
  p50: number;
  p99: number;
  flushP50: number;
  flushP99: number;
  serverCpu: number;
  fioCpu: number;
  n: number;
}

function cellOf(samples: readonly Sample[], server: ServerName, row: FioRow): Cell {
  const ok = samples.filter((s) => s.server === server && s.row === row.id && !s.error);
  const m = (f: (s: Sample) => number | undefined): number => median(ok.map((s) => f(s) ?? NaN));
  return {
    iops: m((s) => s.iops),
    iopsMin: Math.min(...ok.map((s) => s.iops ?? NaN)),
    iopsMax: Math.max(...ok.map((s) => s.iops ?? NaN)),
    mibps: m((s) => s.mibps),
    p50: m((s) => s.latNs?.p50),
    p99: m((s) => s.latNs?.p99),
    flushP50: m((s) => s.flushLatNs?.p50),
    flushP99: m((s) => s.flushLatNs?.p99),
    serverCpu: m((s) => s.serverCpuPercent),
    fioCpu: m((s) => s.fioCpuPercent),
    n: ok.length,
  };
}

function summarize(rows: readonly FioRow[], servers: readonly ServerName[], samples: readonly Sample[]): Record<string, Record<string, Cell>> {
  const out: Record<string, Record<string, Cell>> = {};
  for (const row of rows) {
    out[row.id] = {};
    for (const server of servers) (out[row.id] as Record<string, Cell>)[server] = cellOf(samples, server, row);
  }
  return out;
}

function resultTable(rows: readonly FioRow[], servers: readonly ServerName[], samples: readonly Sample[]): string {
  const others = servers.includes('mirrorbd') ? servers.filter((s) => s !== 'mirrorbd') : [];
  const headers = ['row', ...servers.flatMap((s) => [`${s} IOPS`, `${s} p99`]), ...others.map((o) => `mirrorbd/${o}`)];
  const body = rows.map((row) => {
    const cells = servers.map((s) => cellOf(samples, s, row));
    const iops = (c: Cell): string =>
      c.n === 0 ? 'failed' : row.bs >= MiB ? `${fmtCount(c.iops)} (${fmtCount(c.mibps)} MiB/s)` : fmtCount(c.iops);
    // For write+flush rows: the write's p99 + the flush's p99 (each a separate NBD request).
    const p99 = (c: Cell): string =>
      c.n === 0 ? '—' : row.fsync !== undefined ? `${fmtNs(c.p99)} + ${fmtNs(c.flushP99)} flush` : fmtNs(c.p99);
    const mine = cellOf(samples, 'mirrorbd', row);
    return [
      row.title,
      ...cells.flatMap((c) => [iops(c), p99(c)]),
      ...others.map((o) => fmtRatio(mine.iops / cellOf(samples, o, row).iops)),
    ];
  });
  return markdownTable(headers, body);
}

function detailTable(rows: readonly FioRow[], servers: readonly ServerName[], samples: readonly Sample[]): string {
  const headers = ['row', ...servers.flatMap((s) => [`${s} p50`, `${s} CPU`])];
  const pct = (v: number): string => (Number.isFinite(v) ? `${Math.round(v)}%` : '—');
  const body = rows.map((row) => [
    row.title,
    ...servers.flatMap((s) => {
      const c = cellOf(samples, s, row);
      if (c.n === 0) return ['—', '—'];
      const p50 = row.fsync !== undefined ? `${fmtNs(c.p50)} + ${fmtNs(c.flushP50)} flush` : fmtNs(c.p50);
      return [p50, `${pct(c.serverCpu)} / ${pct(c.fioCpu)}`];
    }),
  ]);
  return markdownTable(headers, body);
}

/** A 1 MiB random chunk, repeated with its offset stamped in, then made durable. */
async function createImage(path: string, bytes: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    const chunk = randomFillSync(Buffer.alloc(MiB));
    for (let off = 0; off < bytes; off += MiB) {
      chunk.writeBigUInt64LE(BigInt(off), 0);
      await fh.write(chunk, 0, MiB, off);
    }
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

interface Versions {
  fio?: string;
  nbdkit?: string;
  qemuNbd?: string;
  mirrorbd?: string;
}

async function toolVersions(): Promise<Versions> {
  return {
    mirrorbd: await mirrorbdVersion(),
    fio: await toolVersion('fio', ['--version']),
    nbdkit: await toolVersion('nbdkit', ['--version']),
    qemuNbd: await toolVersion('qemu-nbd', ['--version']),
  };
}


/** The command as the user can type it again. */


