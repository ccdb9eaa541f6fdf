/**
 * What the disk under the benchmark's files did: bytes written to the block
 * device during a row (from /sys/dev/block/MAJ:MIN/stat), and how fast that
 * device takes data that must reach it (a write followed by fdatasync).
 *
 * A row that writes only into the page cache is bounded by CPU; one whose
 * data must reach the device (a Secondary that flushes every epoch) is
 * bounded by the device as well. Printing both says which bound a row hit.
 */
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
