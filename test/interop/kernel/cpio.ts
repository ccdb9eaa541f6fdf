/**
 * A writer for the "newc" cpio format, the one the Linux kernel unpacks as
 * an initramfs. Pure: entries in, bytes out. Several archives concatenated
 * (each ending with its TRAILER!!!, gzipped or not) unpack one after the
 * other, later entries replacing earlier ones; the guest runner relies on
 * that to add a small per-boot archive to the cached one.
 */
import assert from 'node:assert/strict';

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  /** A character device node (the kernel needs dev/console before /init runs). */
  | { kind: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const MAGIC = '070701';
/** A newc header: the magic and 13 fields of 8 hex digits. */
const HEADER_BYTES = 6 + 13 * 8;

function hex8(n: number): string {
  assert.ok(Number.isSafeInteger(n) && n >= 0 && n <= 0xffffffff, `cpio field out of range: ${n}`);
  return n.toString(16).padStart(8, '0');
}

/** Header, name and data are each padded to a multiple of 4 bytes (the name counted with its header). */
function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function record(ino: number, mode: number, name: string, data: Buffer, rdev: [number, number] = [0, 0]): Buffer {
  // Paths inside the archive are relative, without a leading slash.
  const nameBytes = Buffer.from(`${name.replace(/^\/+/, '')}\0`, 'utf8');
  const fields = [
    ino,
    mode,
    0, // uid
    0, // gid
    mode & S_IFDIR ? 2 : 1, // nlink
    0, // mtime: fixed, so the archive depends only on its contents
    data.length,
    0, // devmajor
    0, // devminor
    rdev[0], // rdevmajor
    rdev[1], // rdevminor
    nameBytes.length,
    0, // check (only for the "crc" variant)
  ];
  const header = Buffer.from(MAGIC + fields.map(hex8).join(''), 'ascii');
  assert.equal(header.length, HEADER_BYTES);
  return Buffer.concat([
    header,
    nameBytes,
    Buffer.alloc(pad4(HEADER_BYTES + nameBytes.length)),
    data,
    Buffer.alloc(pad4(data.length)),
  ]);
}

/** One complete archive (uncompressed) holding `entries` in order, then the trailer. */
export function buildCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    switch (e.kind) {
      case 'dir':
        parts.push(record(ino++, S_IFDIR | (e.mode ?? 0o755), e.path, Buffer.alloc(0)));
        break;
      case 'file':
        parts.push(record(ino++, S_IFREG | (e.mode ?? 0o644), e.path, e.data));
        break;
      case 'symlink':
        parts.push(record(ino++, S_IFLNK | 0o777, e.path, Buffer.from(e.target, 'utf8')));
        break;
      case 'chardev':
        parts.push(record(ino++, S_IFCHR | (e.mode ?? 0o600), e.path, Buffer.alloc(0), [e.major, e.minor]));
        break;
    }
  }
  parts.push(record(0, 0, 'TRAILER!!!', Buffer.alloc(0)));
  return Buffer.concat(parts);
}

/** The parent directories of `paths` ("a/b/c" gives "a" and "a/b"), parents first, each once. */
export function parentDirs(paths: Iterable<string>): string[] {
  const dirs = new Set<string>();
  for (const p of paths) {
    const parts = p.replace(/^\/+/, '').split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  }
  return [...dirs].sort((a, b) => a.split('/').length - b.split('/').length || a.localeCompare(b));
}
