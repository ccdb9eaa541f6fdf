/**
 * Builds, and caches under test/.cache/kernel/, what the kernel NBD client
 * test boots under qemu: a Debian cloud kernel and an initramfs with
 * busybox-static, nbd-client, e2fsprogs (each with the shared libraries ldd
 * names), nbd.ko and the virtio network driver with their dependencies.
 *
 * The kernel comes from Debian's repositories: `apt-get download` of the
 * linux-image-cloud-amd64 metapackage names the real image package (its
 * Depends), which is downloaded too and unpacked with `dpkg -x` (never
 * installed). Only vmlinuz and the modules the guest needs are kept. A
 * cached kernel is reused as long as it is there; delete the cache directory
 * to take a newer one.
 *
 * The initramfs is rebuilt whenever its contents change (new host packages,
 * a changed init script): it is assembled in memory on every call and its
 * hash names the cached file.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { buildCpio, parentDirs, type CpioEntry } from './cpio.js';

const execFileP = promisify(execFile);

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '../../..');
export const kernelCacheDir = path.join(repoRoot, 'test/.cache/kernel');
export const initScript = path.join(here, 'init.sh');

/** The metapackage that always depends on Debian's current cloud kernel image. */
const KERNEL_METAPACKAGE = 'linux-image-cloud-amd64';
/** Modules the guest loads (dependencies are added): the NBD client and the NIC qemu's user network is attached to. */
const WANTED_MODULES = ['nbd', 'virtio_pci', 'virtio_net'] as const;
/** Host programs copied into the guest, with the name each has there. */
const GUEST_PROGRAMS: ReadonlyArray<{ name: string; guestPath: string }> = [
  { name: 'busybox', guestPath: 'bin/busybox' },
  { name: 'nbd-client', guestPath: 'sbin/nbd-client' },
  { name: 'mke2fs', guestPath: 'sbin/mke2fs' },
  { name: 'e2fsck', guestPath: 'sbin/e2fsck' },
];

export interface GuestImage {
  /** The kernel release, e.g. "6.1.0-NN-cloud-amd64". */
  kernelRelease: string;
  /** The Debian package the kernel came from, with its version. */
  kernelPackage: string;
  kernel: string;
  initramfs: string;
  /** Whether this call had to download the kernel / build the initramfs. */
  downloaded: boolean;
  built: boolean;
}

interface KernelManifest {
  release: string;
  package: string;
  /** Module file names in load order, each beside the manifest under modules/. */
  modules: string[];
  wanted: string[];
}

async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { cwd, maxBuffer: 16 * 1024 * 1024, timeout: 300_000 });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    // apt-get warns that root downloads unsandboxed into a directory its
    // _apt user cannot read; that is expected here and hides the real error.
    const stderr = (err.stderr ?? '')
      .split('\n')
      .filter((l) => l.trim() !== '' && !/unsandboxed/.test(l))
      .join('; ');
    throw new Error(`${cmd} ${args.join(' ')} failed: ${stderr || err.message}`);
  }
}

/** Absolute path of a program on PATH (sbin included), or an error naming it. */
async function which(name: string): Promise<string> {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/local/sbin', '/usr/sbin', '/sbin', '/usr/bin', '/bin'];
  for (const d of dirs) {
    if (d === '') continue;
    const p = path.join(d, name);
    try {
      await fsp.access(p, 1 /* X_OK */);
      return p;
    } catch {
      // next
    }
  }
  throw new Error(`${name} not found on PATH`);
}

/**
 * The strings of a kernel module's .modinfo section ("depends=a,b",
 * "vermagic=...", ...), read from the ELF64 section headers. Offsets are
 * those of the ELF64 little-endian header and section header layouts.
 */
export function modinfo(ko: Buffer): Map<string, string> {
  if (ko.readUInt32BE(0) !== 0x7f454c46 || ko[4] !== 2 || ko[5] !== 1) throw new Error('not an ELF64 little-endian file');
  const shoff = Number(ko.readBigUInt64LE(0x28));
  const shentsize = ko.readUInt16LE(0x3a);
  const shnum = ko.readUInt16LE(0x3c);
  const shstrndx = ko.readUInt16LE(0x3e);
  const section = (i: number): { name: number; offset: number; size: number } => {
    const h = shoff + i * shentsize;
    return { name: ko.readUInt32LE(h), offset: Number(ko.readBigUInt64LE(h + 24)), size: Number(ko.readBigUInt64LE(h + 32)) };
  };
  const strtab = section(shstrndx);
  const out = new Map<string, string>();
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    const nameEnd = ko.indexOf(0, strtab.offset + s.name);
    if (ko.toString('latin1', strtab.offset + s.name, nameEnd) !== '.modinfo') continue;
    for (const kv of ko.toString('latin1', s.offset, s.offset + s.size).split('\0')) {
      const eq = kv.indexOf('=');
      if (eq > 0 && !out.has(kv.slice(0, eq))) out.set(kv.slice(0, eq), kv.slice(eq + 1));
    }
  }
  return out;
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(p)));
    else out.push(p);
  }
  return out;
}

/** `wanted` and everything they depend on, dependencies first. Names use underscores, as the kernel does. */
async function resolveModules(modulesRoot: string, wanted: readonly string[]): Promise<string[]> {
  const byName = new Map<string, string>();
  for (const f of await listFiles(modulesRoot)) {
    if (f.endsWith('.ko')) byName.set(path.basename(f, '.ko').replace(/-/g, '_'), f);
  }
  const order: string[] = [];
  const visiting = new Set<string>();
  const visit = async (name: string): Promise<void> => {
    if (order.includes(name)) return;
    if (visiting.has(name)) throw new Error(`module dependency cycle at ${name}`);
    const file = byName.get(name);
    // Not a module file: built into this kernel (or a name we do not know,
    // which insmod in the guest will report).
    if (file === undefined) return;
    visiting.add(name);
    const deps = modinfo(await fsp.readFile(file)).get('depends') ?? '';
    for (const d of deps.split(',').filter(Boolean)) await visit(d.replace(/-/g, '_'));
    visiting.delete(name);
    order.push(name);
  };
  for (const w of wanted) {
    if (!byName.has(w)) throw new Error(`module ${w} not in the kernel package`);
    await visit(w);
  }
  return order.map((n) => byName.get(n)!);
}

async function readKernelManifest(dir: string): Promise<KernelManifest | null> {
  try {
    const m = JSON.parse(await fsp.readFile(path.join(dir, 'manifest.json'), 'utf8')) as KernelManifest;
    if (m.wanted.join(',') !== WANTED_MODULES.join(',')) return null;
    if (!existsSync(path.join(dir, 'vmlinuz'))) return null;
    return m;
  } catch {
    return null;
  }
}

async function aptDownload(pkg: string, cwd: string): Promise<void> {
  try {
    await run('apt-get', ['download', '-q', pkg], cwd);
  } catch {
    // The package lists may be missing or stale (a newer kernel replaced the
    // one they name): refresh once and retry.
    await run('apt-get', ['update', '-qq'], cwd);
    await run('apt-get', ['download', '-q', pkg], cwd);
  }
}

/** The cached kernel, downloading and unpacking it first if there is none. */
async function ensureKernel(log: (line: string) => void): Promise<{ dir: string; manifest: KernelManifest; downloaded: boolean }> {
  const dir = path.join(kernelCacheDir, 'kernel');
  const cached = await readKernelManifest(dir);
  if (cached !== null) return { dir, manifest: cached, downloaded: false };

  await fsp.mkdir(kernelCacheDir, { recursive: true });
  const work = await fsp.mkdtemp(path.join(kernelCacheDir, 'download-'));
  try {
    log(`downloading ${KERNEL_METAPACKAGE} with apt-get`);
    await aptDownload(KERNEL_METAPACKAGE, work);
    const meta = (await fsp.readdir(work)).find((f) => f.startsWith(`${KERNEL_METAPACKAGE}_`) && f.endsWith('.deb'));
    if (meta === undefined) throw new Error(`apt-get download ${KERNEL_METAPACKAGE} left no .deb`);
    const depends = (await run('dpkg-deb', ['-f', path.join(work, meta), 'Depends'])).trim();
    // "linux-image-6.1.0-NN-cloud-amd64 (= 6.1.x-y)": the first package named.
    const imagePkg = /^(linux-image-[^\s,(|]+)/.exec(depends)?.[1];
    if (imagePkg === undefined) throw new Error(`${KERNEL_METAPACKAGE} depends on no linux-image package: ${depends}`);
    log(`downloading ${imagePkg}`);
    await aptDownload(imagePkg, work);
    const deb = (await fsp.readdir(work)).find((f) => f.startsWith(`${imagePkg}_`) && f.endsWith('.deb'));
    if (deb === undefined) throw new Error(`apt-get download ${imagePkg} left no .deb`);
    const version = (await run('dpkg-deb', ['-f', path.join(work, deb), 'Version'])).trim();
    const root = path.join(work, 'root');
    await run('dpkg', ['-x', path.join(work, deb), root]);

    const release = imagePkg.replace(/^linux-image-/, '');
    const vmlinuz = path.join(root, 'boot', `vmlinuz-${release}`);
    const modulesRoot = path.join(root, 'lib/modules', release);
    if (!existsSync(vmlinuz) || !existsSync(modulesRoot)) throw new Error(`${deb} has no vmlinuz-${release} or modules`);
    const modules = await resolveModules(modulesRoot, WANTED_MODULES);

    const staged = path.join(work, 'kernel');
    await fsp.mkdir(path.join(staged, 'modules'), { recursive: true });
    await fsp.copyFile(vmlinuz, path.join(staged, 'vmlinuz'));
    for (const m of modules) await fsp.copyFile(m, path.join(staged, 'modules', path.basename(m)));
    const manifest: KernelManifest = {
      release,
      package: `${imagePkg}=${version}`,
      modules: modules.map((m) => path.basename(m)),
      wanted: [...WANTED_MODULES],
    };
    await fsp.writeFile(path.join(staged, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    // Replace any older or incomplete cache in one step; a concurrent
    // builder that loses the race keeps its own copy out of the way.
    await fsp.rm(dir, { recursive: true, force: true });
    try {
      await fsp.rename(staged, dir);
    } catch (e) {
      const raced = await readKernelManifest(dir);
      if (raced === null) throw e;
      return { dir, manifest: raced, downloaded: true };
    }
    return { dir, manifest, downloaded: true };
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/** Shared libraries `ldd` lists for a program (none for a static one), as absolute paths. */
async function sharedLibraries(program: string): Promise<string[]> {
  let out: string;
  try {
    out = await run('ldd', [program]);
  } catch (e) {
    if (/not a dynamic executable/.test((e as Error).message)) return [];
    throw e;
  }
  const libs: string[] = [];
  for (const line of out.split('\n')) {
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m?.[1] !== undefined) libs.push(m[1]);
  }
  return libs;
}

async function initramfsEntries(kernelDir: string, manifest: KernelManifest): Promise<CpioEntry[]> {
  // Files first, keyed by their path in the guest; directories are derived.
  const files = new Map<string, { data: Buffer; mode: number }>();
  const symlinks: Array<{ path: string; target: string }> = [];
  files.set('init', { data: await fsp.readFile(initScript), mode: 0o755 });
  const libs = new Set<string>();
  for (const p of GUEST_PROGRAMS) {
    const hostPath = await which(p.name);
    // Read through symlinks (mkfs.ext4 -> mke2fs, merged /usr): the guest gets the real bytes.
    files.set(p.guestPath, { data: await fsp.readFile(hostPath), mode: 0o755 });
    for (const l of await sharedLibraries(hostPath)) libs.add(l);
  }
  for (const l of libs) files.set(l.replace(/^\/+/, ''), { data: await fsp.readFile(l), mode: 0o755 });
  symlinks.push({ path: 'sbin/mkfs.ext4', target: 'mke2fs' }, { path: 'sbin/fsck.ext4', target: 'e2fsck' });
  // mke2fs's defaults (features, inode size) as on the host, so the host's
  // e2fsck reads what the guest made.
  if (existsSync('/etc/mke2fs.conf')) files.set('etc/mke2fs.conf', { data: await fsp.readFile('/etc/mke2fs.conf'), mode: 0o644 });
  for (const m of manifest.modules) files.set(`lib/modules/${m}`, { data: await fsp.readFile(path.join(kernelDir, 'modules', m)), mode: 0o644 });
  files.set('etc/modules.order', { data: Buffer.from(`${manifest.modules.join('\n')}\n`), mode: 0o644 });

  const emptyDirs = ['proc', 'sys', 'dev', 'tmp', 'mnt', 'usr/bin', 'usr/sbin', 'scenario'];
  const allPaths = [...files.keys(), ...symlinks.map((s) => s.path), ...emptyDirs.map((d) => `${d}/x`)];
  return [
    ...parentDirs(allPaths).map((d): CpioEntry => ({ kind: 'dir', path: d })),
    ...[...files].sort(([a], [b]) => a.localeCompare(b)).map(([p, f]): CpioEntry => ({ kind: 'file', path: p, data: f.data, mode: f.mode })),
    ...symlinks.map((s): CpioEntry => ({ kind: 'symlink', path: s.path, target: s.target })),
    // The kernel opens /dev/console for /init's stdin, stdout and stderr
    // before anything mounts devtmpfs.
    { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
  ];
}

/** The kernel and initramfs to boot, from the cache when it is current. */
export async function prepareGuestImage(log: (line: string) => void = () => undefined): Promise<GuestImage> {
  const kernel = await ensureKernel(log);
  const cpio = buildCpio(await initramfsEntries(kernel.dir, kernel.manifest));
  const digest = createHash('sha256').update(cpio).update(kernel.manifest.release).digest('hex').slice(0, 16);
  const initramfs = path.join(kernelCacheDir, `initramfs-${digest}.cpio.gz`);
  let built = false;
  if (!existsSync(initramfs)) {
    log(`building ${path.basename(initramfs)}`);
    const tmp = `${initramfs}.${process.pid}.tmp`;
    // Level 1: a few percent bigger than level 6, and quicker to make and to unpack under TCG.
    await fsp.writeFile(tmp, gzipSync(cpio, { level: 1 }));
    await fsp.rename(tmp, initramfs);
    built = true;
    for (const f of await fsp.readdir(kernelCacheDir)) {
      if (/^initramfs-[0-9a-f]+\.cpio\.gz$/.test(f) && path.join(kernelCacheDir, f) !== initramfs) {
        await fsp.rm(path.join(kernelCacheDir, f), { force: true });
      }
    }
  }
  return {
    kernelRelease: kernel.manifest.release,
    kernelPackage: kernel.manifest.package,
    kernel: path.join(kernel.dir, 'vmlinuz'),
    initramfs,
    downloaded: kernel.downloaded,
    built,
  };
}
