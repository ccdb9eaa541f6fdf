/**
 * The Linux kernel's NBD client, end to end, in a small qemu guest (TCG; the
 * host needs no nbd module): nbd-client attaches the Primary's export as
 * /dev/nbd0, mkfs.ext4, mount, files written, umount, nbd-client -d. Then
 * the Primary's daemon is killed with SIGKILL, the Secondary is promoted, and
 * a second boot of the guest attached to it finds every file intact; the
 * host's e2fsck finds the filesystem on the new Primary's disk clean.
 *
 * The tests in this file run in order and build on each other.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, createReadStream, createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killDaemon } from '../../helpers/cluster-node.js';
import { expectSameData } from '../../helpers/disk-data.js';
import { makePair, statusOf, upPair, waitForStatus, type Pair, type PairNode } from '../../helpers/pair.js';
import { mustSucceed } from '../../helpers/single-node.js';
import { missingTools, requireTools } from '../../helpers/tools.js';
import { explain, run, tempDir } from '../proc.js';
import { prepareGuestImage, type GuestImage } from './guest-image.js';
import { explainGuest, killRunningGuests, runGuest, type GuestRun, type GuestStep } from './guest.js';

const SBIN = ['/usr/local/sbin', '/usr/sbin', '/sbin'];
/** nbd-client and e2fsprogs live in sbin, which is not on every user's PATH. */
function sbinPath(name: string): string | null {
  for (const d of SBIN) if (existsSync(join(d, name))) return join(d, name);
  return null;
}
const missing = missingTools(
  'qemu-system-x86_64',
  'busybox',
  'apt-get',
  'dpkg',
  'dpkg-deb',
  'ldd',
  ...['nbd-client', 'mke2fs', 'e2fsck'].filter((t) => sbinPath(t) === null),
);

const MIB = 1024 * 1024;
const GUEST_TIMEOUT_MS = 90_000;

/** Files of awkward sizes: empty, one byte, just under a block, several MiB across extents. */
function makeFiles(): Map<string, Buffer> {
  return new Map([
    ['empty', Buffer.alloc(0)],
    ['one-byte', randomBytes(1)],
    ['block-minus-one', randomBytes(4095)],
    ['odd-size', randomBytes(1 * MIB + 7)],
    ['large', randomBytes(6 * MIB)],
  ]);
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.skipIf(missing.length > 0)('the Linux kernel NBD client in a qemu guest', () => {
  let image: GuestImage;
  /** Why the guest cannot be built here (no kernel package reachable), when tools are not required. */
  let unavailable: string | null = null;
  let pair: Pair;
  let tmp: { path: string; remove(): Promise<void> };
  let sizeBytes = 0;
  const files = makeFiles();
  const timings: string[] = [];

  const boot = async (label: string, node: PairNode, steps: GuestStep[]): Promise<GuestRun> => {
    const r = await runGuest({ image, hostPort: node.nbdPort, exportName: 'r0', steps, files, workDir: tmp.path, timeoutMs: GUEST_TIMEOUT_MS });
    timings.push(`${label}: boot ${r.bootMs ?? '?'} ms, scenario ${r.scenarioMs ?? '?'} ms, qemu ${r.totalMs} ms`);
    return r;
  };

  beforeAll(async () => {
    tmp = await tempDir('kernel');
    const t0 = Date.now();
    try {
      image = await prepareGuestImage((line) => console.log(`guest image: ${line}`));
    } catch (e) {
      if (requireTools) throw e;
      unavailable = (e as Error).message;
      console.warn(`skipping: cannot build the kernel test guest: ${unavailable}`);
      return;
    }
    timings.push(`image ${image.kernelPackage}: ${Date.now() - t0} ms${image.downloaded ? ' (downloaded)' : ''}${image.built ? ' (initramfs built)' : ''}`);
    pair = await makePair({ diskSizeBytes: 64 * MIB });
    await upPair(pair);
    await mustSucceed(pair.alpha.cli('primary', 'r0', '--force'));
    const s = await waitForStatus(
      pair.alpha,
      (st) => st.peers[0]?.replication === 'Established' && st.peers[0]?.peerDisk === 'UpToDate',
      60_000,
    );
    sizeBytes = s.sizeBytes;
  }, 300_000);

  afterAll(async () => {
    killRunningGuests();
    if (timings.length > 0) console.log(`kernel client timings:\n  ${timings.join('\n  ')}`);
    await pair?.stop();
    await tmp?.remove();
  });

  it('formats, mounts and fills an ext4 filesystem on the Primary', async (ctx) => {
    if (unavailable !== null) return ctx.skip();
    const r = await boot('write via alpha', pair.alpha, ['connect', 'mkfs', 'mount', 'write', 'sync', 'umount', 'disconnect']);
    expect(r.ok, explainGuest(r)).toBe(true);
    for (const [name, data] of files) expect(r.sums.get(name), `sha256 of ${name} in the guest`).toBe(sha256(data));
  }, 120_000);

  it('after kill -9 of the Primary, both disks hold the same data and the Secondary can be promoted', async (ctx) => {
    if (unavailable !== null) return ctx.skip();
    await killDaemon(pair.alpha);
    await waitForStatus(pair.beta, (s) => s.peers[0]?.connection !== 'Connected', 15_000);
    // Protocol C, and the client flushed and disconnected before the kill:
    // the data areas of the two disks are byte for byte the same.
    await expectSameData([pair.beta, pair.alpha], sizeBytes);
    await mustSucceed(pair.beta.cli('primary', 'r0', '--force'));
    const s = await waitForStatus(pair.beta, (st) => st.role === 'Primary', 15_000);
    expect(s.disk).toBe('UpToDate');
    expect(s.sizeBytes).toBe(sizeBytes);
  }, 60_000);

  it('the promoted Secondary serves the filesystem with every file intact', async (ctx) => {
    if (unavailable !== null) return ctx.skip();
    const r = await boot('read via beta', pair.beta, ['connect', 'mount', 'read', 'umount', 'disconnect']);
    expect(r.ok, explainGuest(r)).toBe(true);
    for (const [name, data] of files) expect(r.sums.get(name), `sha256 of ${name} read back through beta`).toBe(sha256(data));
  }, 120_000);

  it("e2fsck on the host finds the filesystem on the new Primary's disk clean", async (ctx) => {
    if (unavailable !== null) return ctx.skip();
    const copy = join(tmp.path, 'beta-data.img');
    // The data area is the first sizeBytes of the disk (internal metadata follows it).
    await pipeline(createReadStream(pair.beta.diskPath, { start: 0, end: sizeBytes - 1 }), createWriteStream(copy));
    const r = await run(sbinPath('e2fsck') ?? 'e2fsck', ['-f', '-n', copy], { timeoutMs: 60_000 });
    expect(r.code, explain(r)).toBe(0);
    expect((await statusOf(pair.beta)).role).toBe('Primary');
  }, 60_000);
});
