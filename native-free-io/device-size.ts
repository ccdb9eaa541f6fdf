/**
 * The size of a regular file or a block device, without native calls.
 *
 * fstat() reports 0 bytes for a block device and Node has no lseek(SEEK_END),
 * so for devices we ask sysfs (/sys/dev/block/MAJ:MIN/size counts 512-byte
 * sectors whatever the logical block size is) and, where sysfs is not
 * mounted, find the end by binary search with 1-byte positional reads.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

const SYSFS_SECTOR_BYTES = 512;

export interface SizedFile {
  size: number;
  isBlockDevice: boolean;
  /** The device's sysfs directory, for queue attributes like rotational. */
  sysfsDir?: string;
}

export async function sizeOf(handle: FileHandle): Promise<SizedFile> {
  const st = await handle.stat();
  if (st.isFile()) return { size: st.size, isBlockDevice: false };
  if (!st.isBlockDevice()) throw Object.assign(new Error('not a regular file or block device'), { code: 'EINVAL' });
  // rdev encodes major and minor in glibc's layout.
  const major = Number((BigInt(st.rdev) >> 8n) & 0xfffn);
  const minor = Number((BigInt(st.rdev) & 0xffn) | ((BigInt(st.rdev) >> 12n) & 0xfff00n));
  const sysfsDir = `/sys/dev/block/${major}:${minor}`;
  try {
    const sectors = Number((await fsp.readFile(`${sysfsDir}/size`, 'utf8')).trim());
    if (Number.isSafeInteger(sectors) && sectors >= 0) return { size: sectors * SYSFS_SECTOR_BYTES, isBlockDevice: true, sysfsDir };
  } catch {
    // fall through to probing
  }
  return { size: await probeEnd(handle), isBlockDevice: true };
}

/** Largest n such that a read at n-1 returns a byte: the device size. */
async function probeEnd(handle: FileHandle): Promise<number> {
  const one = Buffer.alloc(1);
  const readsAt = async (pos: number): Promise<boolean> => (await handle.read(one, 0, 1, pos)).bytesRead === 1;
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
