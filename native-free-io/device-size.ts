/**
 * The size of a regular file or a block device, without native calls.
 *
 * fstat() reports 0 bytes for a block device and Node has no lseek(SEEK_END),
 * so for devices we ask sysfs (/sys/dev/block/MAJ:MIN/size counts 512-byte
 * sectors whatever the logical block size is) and, where sysfs is not
 * mounted, find the end by binary search with 1-byte positional reads.
 *
 * Accepts a FileHandle or a raw file descriptor: FileStore works on a raw fd
 * because the callback API is cheaper per call (see positional-io.ts).
 */
import fs, { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

const SYSFS_SECTOR_BYTES = 512;

/** An open file: a FileHandle or a file descriptor number. */
export type OpenFile = FileHandle | number;

export interface SizedFile {
  size: number;
  isBlockDevice: boolean;
  /** The device's sysfs directory, for queue attributes like rotational. */
  sysfsDir?: string;
}

export async function sizeOf(file: OpenFile): Promise<SizedFile> {
  const st = await statOf(file);
  if (st.isFile()) return { size: st.size, isBlockDevice: false };
  if (!st.isBlockDevice()) throw Object.assign(new Error('not a regular file or block device'), { code: 'EINVAL' });
  const sysfsDir = `/sys/dev/block/${deviceNumber(st.rdev)}`;
  try {
    const sectors = Number((await fsp.readFile(`${sysfsDir}/size`, 'utf8')).trim());
    if (Number.isSafeInteger(sectors) && sectors >= 0) return { size: sectors * SYSFS_SECTOR_BYTES, isBlockDevice: true, sysfsDir };
  } catch {
    // fall through to probing
  }
  return { size: await probeEnd(file), isBlockDevice: true };
}

/** "MAJ:MIN" from st_rdev, decoded the way glibc's makedev() encodes it. */
function deviceNumber(rdev: number): string {
  const dev = BigInt(rdev);
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn & 0xffffffffn);
  return `${major}:${minor}`;
}

function statOf(file: OpenFile): Promise<fs.Stats> {
  if (typeof file !== 'number') return file.stat();
  return new Promise((resolve, reject) => fs.fstat(file, (err, st) => (err ? reject(err) : resolve(st))));
}

function readAt(file: OpenFile, into: Buffer, position: number): Promise<number> {
  if (typeof file !== 'number') return file.read(into, 0, into.length, position).then((r) => r.bytesRead);
  return new Promise((resolve, reject) =>
    fs.read(file, into, 0, into.length, position, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead))),
  );
}

/** Largest n such that a read at n-1 returns a byte: the device size. */
async function probeEnd(file: OpenFile): Promise<number> {
  const one = Buffer.alloc(1);
  const readsAt = async (pos: number): Promise<boolean> => (await readAt(file, one, pos)) === 1;
  if (!(await readsAt(0))) return 0;
  let lo = 1; // known readable size
  let hi = 2;
  while (await readsAt(hi - 1)) {
    lo = hi;
    hi *= 2;
    if (hi > Number.MAX_SAFE_INTEGER / 2) break;
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (await readsAt(mid - 1)) lo = mid;
    else hi = mid;
  }
  return lo;
}
