/**
 * fio's nbd engine: the rows a benchmark runs, the command line for one row,
 * and the parser for fio's JSON output.
 *
 * Latency is fio's total latency (lat_ns, with --lat_percentiles=1): with the
 * nbd engine the slat/clat split is not meaningful (submission is a libnbd
 * queue operation, not the I/O).
 */

import { run, lastLines } from './proc.js';

export interface FioRow {
  /** Stable id used in results JSON and with --rows. */
  id: string;
  /** What the table calls it. */
  title: string;
  rw: 'write' | 'randwrite' | 'randread' | 'read';
  /** Block size in bytes. */
  bs: number;
  iodepth: number;
  /** fio --fsync=N: the nbd engine sends NBD_CMD_FLUSH after every N writes. */
  fsync?: number;
}

const KiB = 1024;
const MiB = 1024 * 1024;

/** In this order, so that the read rows read data the write rows wrote. */
export const FRONTEND_ROWS: readonly FioRow[] = [
  { id: 'seq-write-1m-qd8', title: '1 MiB seq write QD8', rw: 'write', bs: MiB, iodepth: 8 },
  { id: 'rand-write-4k-qd32', title: '4 KiB rand write QD32', rw: 'randwrite', bs: 4 * KiB, iodepth: 32 },
  { id: 'rand-write-4k-qd1', title: '4 KiB rand write QD1', rw: 'randwrite', bs: 4 * KiB, iodepth: 1 },
  { id: 'write-flush-4k-qd1', title: '4 KiB write+flush QD1', rw: 'randwrite', bs: 4 * KiB, iodepth: 1, fsync: 1 },
  { id: 'rand-read-4k-qd32', title: '4 KiB rand read QD32', rw: 'randread', bs: 4 * KiB, iodepth: 32 },
  { id: 'seq-read-1m-qd8', title: '1 MiB seq read QD8', rw: 'read', bs: MiB, iodepth: 8 },
];

/** fio ignores the first second of each run (connection, warm-up). */
export const RAMP_SECONDS = 1;

export function fioArgs(row: FioRow, uri: string, runtimeSeconds: number, sizeBytes: number): string[] {
  const args = [
    `--name=${row.id}`,
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${row.rw}`,
    `--bs=${row.bs}`,
    `--iodepth=${row.iodepth}`,
    '--numjobs=1',
    '--output-format=json',
    '--lat_percentiles=1',
    '--percentile_list=50:99',
    '--time_based',
    `--runtime=${runtimeSeconds}`,
    `--ramp_time=${RAMP_SECONDS}`,
    `--size=${sizeBytes}`,
  ];
  if (row.rw === 'randwrite' || row.rw === 'randread') {
    // No block-coverage map: every server gets the same pseudo-random
    // offsets (randrepeat defaults to on), without fio's map bookkeeping.
    args.push('--norandommap');
  }
  if (row.fsync !== undefined) args.push(`--fsync=${row.fsync}`);
  return args;
}

/** Latency figures in nanoseconds. */
export interface Latency {
  p50: number;
  p99: number;
  mean: number;
}

export interface FioResult {
  /** Operations per second of the row's direction (writes or reads). */
  iops: number;
  /** MiB per second of the row's direction. */
  mibps: number;
  lat: Latency;
  /** For rows with --fsync: the FLUSH requests' total latency. */
  flush?: Latency & { count: number };
  /** fio's own CPU use, percent of one core (user + system). */
  fioCpuPercent: number;
  /** fio's job object as it printed it. */
  raw: unknown;
}

/** Runs one row against a URI; throws with fio's last lines if fio fails. */
export async function runFioRow(row: FioRow, uri: string, runtimeSeconds: number, sizeBytes: number): Promise<FioResult> {
  const args = fioArgs(row, uri, runtimeSeconds, sizeBytes);
  // Generous deadline: connection, ramp, runtime, and the final drain.
  const timeoutMs = (runtimeSeconds + RAMP_SECONDS + 60) * 1000;
  const r = await run('fio', args, { timeoutMs });
  if (r.timedOut || r.code !== 0) {
    const why = r.timedOut ? 'timed out' : `exit ${r.code ?? r.signal}`;
    throw new Error(`fio ${row.id} against ${uri}: ${why}\n${lastLines(r.stderr || r.stdout, 5)}`);
  }
  return parseFioJson(r.stdout, row);
}

/**
 * Parses fio's --output-format=json output. The nbd engine prints
 * "fio: connected to NBD server" on stdout before the JSON, so parsing starts
 * at the first line that opens an object.
 */
export function parseFioJson(stdout: string, row: FioRow): FioResult {
  const start = stdout.search(/^\{/m);
  if (start < 0) throw new Error(`fio printed no JSON:\n${lastLines(stdout, 5)}`);
  const doc = JSON.parse(stdout.slice(start)) as { jobs?: unknown[] };
  const job = doc.jobs?.[0] as Record<string, unknown> | undefined;
  if (!job) throw new Error('fio JSON has no jobs');
  if (typeof job.error === 'number' && job.error !== 0) throw new Error(`fio job error ${job.error}`);
  const dir = row.rw === 'read' || row.rw === 'randread' ? 'read' : 'write';
  const side = job[dir] as FioSide | undefined;
  if (!side || !side.lat_ns) throw new Error(`fio JSON has no ${dir} section`);
  if (side.total_ios === 0) throw new Error(`fio completed no ${dir}s`);
  const result: FioResult = {
    iops: side.iops,
    mibps: side.bw_bytes / MiB,
    lat: latency(side.lat_ns),
    fioCpuPercent: num(job.usr_cpu) + num(job.sys_cpu),
    raw: job,
  };
  if (row.fsync !== undefined) {
    const sync = job.sync as { total_ios?: number; lat_ns?: FioLat } | undefined;
    if (!sync?.lat_ns || !sync.total_ios) throw new Error('fio JSON has no flushes for an --fsync row');
    result.flush = { ...latency(sync.lat_ns), count: sync.total_ios };
  }
  return result;
}

interface FioLat {
  mean: number;
  percentile?: Record<string, number>;
}

interface FioSide {
  iops: number;
  bw_bytes: number;
  total_ios: number;
  lat_ns?: FioLat;
}

function latency(lat: FioLat): Latency {
  const pct = lat.percentile ?? {};
  return { p50: num(pct['50.000000']), p99: num(pct['99.000000']), mean: lat.mean };
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : Number.NaN;
}
