/**
 * What the disk under the benchmark's files did: bytes written to the block
 * device during a row (from /sys/dev/block/MAJ:MIN/stat), and how fast that
 * device takes data that must reach it (a write followed by fdatasync).
 *
 * A row that writes only into the page cache is bounded by CPU; one whose
 * data must reach the device (a Secondary that flushes every epoch) is
 * bounded by the device as well. Printing both says which bound a row hit.
 */
import { closeSync, fdatasyncSync, openSync, readSync, writeSync } from 'node:fs';
import { open, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

const SECTOR_BYTES = 512;
/** Field 7 of the block layer's stat file: sectors written. */
const SECTORS_WRITTEN_FIELD = 6;

export interface DiskCounter {
  /** The device as MAJ:MIN. */
  device: string;
  /** Bytes written to the device since it came up. */
  written(): Promise<number>;
}

/** Linux dev_t as major and minor numbers (glibc's gnu_dev_major/minor). */
export function deviceNumbers(dev: number): { major: number; minor: number } {
  const d = BigInt(dev);
  const major = Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn));
  const minor = Number((d & 0xffn) | ((d >> 12n) & ~0xffn));
  return { major, minor };
}

/** Sectors written, from the text of a block device's stat file. */
export function sectorsWritten(statText: string): number {
  const fields = statText.trim().split(/\s+/);
  const n = Number(fields[SECTORS_WRITTEN_FIELD]);
  if (!Number.isFinite(n)) throw new Error(`block stat without a sectors-written field: ${JSON.stringify(statText.slice(0, 80))}`);
  return n;
}

/** The counter of the block device holding `path`; undefined where there is none (tmpfs, overlay, not Linux). */
export async function diskCounterFor(path: string): Promise<DiskCounter | undefined> {
  const { major, minor } = deviceNumbers((await stat(path)).dev);
  const device = `${major}:${minor}`;
  const file = `/sys/dev/block/${device}/stat`;
  try {
    sectorsWritten(await readFile(file, 'utf8'));
  } catch {
    return undefined;
  }
  return { device, written: async () => sectorsWritten(await readFile(file, 'utf8')) * SECTOR_BYTES };
}

/**
 * MiB/s at which `dir`'s file system takes `bytes` of new data written and
 * flushed (fdatasync), in 1 MiB writes; the file is removed afterwards.
 */
export async function flushedWriteMiBps(dir: string, bytes: number): Promise<number> {
  const file = join(dir, 'disk-speed.tmp');
  const chunk = Buffer.alloc(1024 * 1024, 0x5a);
  const fh = await open(file, 'w');
  try {
    const t0 = process.hrtime.bigint();
    for (let at = 0; at < bytes; at += chunk.length) await fh.write(chunk, 0, Math.min(chunk.length, bytes - at), at);
    await fh.datasync();
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    return bytes / (1024 * 1024) / seconds;
  } finally {
    await fh.close();
    await rm(file, { force: true });
  }
}

export interface ScatteredCopyCost {
  /** The reads of every block from the source's image, back to back (ms). */
  readMs: number;
  /** The writes of every block into the target's image, back to back (ms). */
  writeMs: number;
  /** The target image's fdatasync after them (ms). */
  flushMs: number;
}

/**
 * What a copy of `offsets` (blocks of `blockBytes`) from `source` to
 * `target` costs the files alone: synchronous preads and pwrites on one
 * thread, then fdatasync of the target: no protocol, no threads, no
 * messages. The target's writes and its flush are the part a durable
 * resync cannot hide; the bench prints them beside its dirty resync. The
 * target's blocks are overwritten with the source's: run it only on images
 * whose content no longer matters.
 */
export function scatteredCopyCost(source: string, target: string, offsets: readonly number[], blockBytes: number): ScatteredCopyCost {
  const buf = Buffer.alloc(offsets.length * blockBytes);
  const src = openSync(source, 'r');
  const dst = openSync(target, 'r+');
  try {
    const t0 = performance.now();
    offsets.forEach((o, i) => readSync(src, buf, i * blockBytes, blockBytes, o));
    const t1 = performance.now();
    offsets.forEach((o, i) => writeSync(dst, buf, i * blockBytes, blockBytes, o));
    const t2 = performance.now();
    fdatasyncSync(dst);
    const t3 = performance.now();
    return { readMs: t1 - t0, writeMs: t2 - t1, flushMs: t3 - t2 };
  } finally {
    closeSync(src);
    closeSync(dst);
  }
}
