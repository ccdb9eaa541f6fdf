/**
 * Three data nodes in a full mesh (alpha, beta, gamma; node-id 0, 1, 2):
 * every pair of nodes has its own connection and each node a bitmap slot
 * per peer. What a user of three replicas relies on: the initial sync
 * reaches both Secondaries, writes reach both, a Secondary cut off by the
 * network resyncs only what it missed, and after the Primary dies another
 * node takes over with every acknowledged write while the third catches up
 * from it.
 *
 * The partition test runs each node in its own network namespace (root
 * only); the others run on loopback.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { differingBlocks, expectSameData } from '../helpers/disk-data.js';
import { createNetns, skipWithoutNetns, type NetnsHarness } from '../helpers/netns.js';
import { mustSucceed } from '../helpers/single-node.js';
import { missingTools } from '../helpers/tools.js';
import { BLOCK, ackedMissingFrom, openExport, scatteredOrder, stampedWriteLoad } from './helpers/stamped-writes.js';
import {
  makeMesh,
  peerOf,
  statusOf,
  waitForStatus,
  type Mesh,
  type MeshNode,
  type MeshOptions,
} from './mesh/three-nodes.js';

const AL_EXTENT = 4 * 1024 * 1024;
/** Every test here starts three daemons and syncs 64 MiB disks on a shared machine. */
const TEST_TIMEOUT_MS = 180_000;
/** gamma's index in the network harness. */
const GAMMA = 2;
const missing = missingTools('nbdcopy', 'qemu-io');
const noNetns = skipWithoutNetns();

const meshes: Mesh[] = [];
afterEach(async () => {
  while (meshes.length > 0) await meshes.pop()!.stop();
});

function run(cmd: string, args: string[]): Promise<{ code: number; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let stdout = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stderr, stdout });
    });
  });
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** create-md and up on every node; wait until every pair is connected. */
async function upMesh(opts: MeshOptions = {}): Promise<Mesh> {
  const m = await makeMesh(opts);
  meshes.push(m);
  for (const n of m.nodes) await mustSucceed(n.cli('create-md', 'r0'));
  for (const n of m.nodes) await n.up();
  for (const n of m.nodes) {
    await waitForStatus(n, (s) => s.peers.length === 2 && s.peers.every((p) => p.connection === 'Connected'));
  }
  return m;
}

/**
 * In sync: every node UpToDate, every connection among `nodes` Connected and
 * Established, nothing marked between the Primary and any other node, and
 * the Primary sees every peer UpToDate. (What two Secondaries think of each
 * other is left to its own test.)
 */
async function waitInSync(nodes: MeshNode[], primary: MeshNode, timeoutMs = 60_000): Promise<void> {
  const names = nodes.map((n) => n.name);
  for (const n of nodes) {
    await waitForStatus(
      n,
      (s) =>
        s.disk === 'UpToDate' &&
        names
          .filter((x) => x !== n.name)
          .every((x) => {
            const p = peerOf(s, x);
            const withPrimary = n === primary || x === primary.name;
            return p.connection === 'Connected' && p.replication === 'Established' && (!withPrimary || (p.outOfSyncBytes === 0 && (n !== primary || p.peerDisk === 'UpToDate')));
          }),
      timeoutMs,
    );
  }
}

/** A mesh after `primary --force` on alpha and the initial sync. */
async function syncedMesh(opts: MeshOptions = {}): Promise<Mesh> {
  const m = await upMesh(opts);
  await mustSucceed(m.alpha.cli('primary', 'r0', '--force'));
  await waitInSync(m.nodes, m.alpha);
  return m;
}

/** Bytes this node received from all its peers since up (both channels). */
async function bytesReceived(n: MeshNode): Promise<number> {
  return (await statusOf(n)).peers.reduce((sum, p) => sum + p.bytesReceived, 0);
}

/** `count` scattered 4 KiB writes, each block filled with its own pattern byte, through qemu-io. */
async function scatteredWrites(uri: string, size: number, count: number, pattern: (i: number) => number, skew = 0): Promise<number[]> {
  const blocks = size / BLOCK;
  const offsets: number[] = [];
  const cmds: string[] = [];
  for (let i = 0; i < count; i++) {
    const offset = ((Math.floor((i * blocks) / count) + skew) % blocks) * BLOCK;
    offsets.push(offset);
    cmds.push('-c', `write -P ${pattern(i)} ${offset} 4k`);
  }
  await must('qemu-io', ['-f', 'raw', ...cmds, uri]);
  return offsets;
}

/**
 * Write every block once, in a scattered order, 8 in flight, each with its
 * own stamp, until `stopAfterMs` passes or the server goes away. Returns
 * the acknowledged writes (block -> stamp).
 */
async function writeLoad(n: MeshNode, opts: { blocks: number; stopAfterMs: number; onRunning?: () => void }): Promise<Map<number, number>> {
  const c = await openExport(n.nbdPort, n.host);
  try {
    const load = stampedWriteLoad(c, { order: scatteredOrder(opts.blocks), queueDepth: 8, stopAfterMs: opts.stopAfterMs });
    opts.onRunning?.();
    return (await load).acked;
  } finally {
    c.destroy();
  }
}

describe.skipIf(missing.length > 0)('three nodes in a full mesh (loopback)', () => {
  it('primary --force on alpha: the initial sync reaches beta and gamma, every node ends UpToDate with the same data, each copy sent once', async () => {
    const m = await upMesh();
    const before = await Promise.all(m.nodes.map(bytesReceived));
    await mustSucceed(m.alpha.cli('primary', 'r0', '--force'));
    await waitInSync(m.nodes, m.alpha);
    const size = (await statusOf(m.alpha)).sizeBytes;
    const alpha = await statusOf(m.alpha);
    expect(alpha.role).toBe('Primary');
    for (const n of [m.beta, m.gamma]) {
      const s = await statusOf(n);
      expect(s.role).toBe('Secondary');
      expect(peerOf(s, 'alpha')).toMatchObject({ role: 'Primary', connection: 'Connected', replication: 'Established', peerDisk: 'UpToDate' });
      expect(s.generation.current).toBe(alpha.generation.current);
    }
    // beta and gamma each received the disk from alpha, once
    for (const [i, n] of [m.beta, m.gamma].entries()) {
      const got = (await bytesReceived(n)) - before[i + 1]!;
      expect(got).toBeGreaterThanOrEqual(size);
      expect(got).toBeLessThan(size * 1.2);
    }
    await expectSameData(m.nodes, size);
  }, TEST_TIMEOUT_MS);

  it('writes through nbdcopy and qemu-io on the Primary reach both Secondaries', async () => {
    const m = await syncedMesh();
    const size = (await statusOf(m.alpha)).sizeBytes;
    const src = path.join(m.dir, 'src.bin');
    const data = randomBytes(16 * 1024 * 1024);
    await fsp.writeFile(src, data);
    await must('nbdcopy', ['--flush', src, m.alpha.uri]);
    const overwritten = new Set(await scatteredWrites(m.alpha.uri, size, 64, (i) => (i % 250) + 3, 5));
    const alpha = await statusOf(m.alpha);
    expect(peerOf(alpha, 'beta').outOfSyncBytes).toBe(0);
    expect(peerOf(alpha, 'gamma').outOfSyncBytes).toBe(0);
    // protocol C: what was acknowledged is on both Secondaries' disks now
    await expectSameData(m.nodes, size);
    // and it is what nbdcopy wrote, except where the scattered writes went over it
    for (const n of [m.beta, m.gamma]) {
      const fh = await fsp.open(n.diskPath, 'r');
      try {
        const buf = Buffer.alloc(data.length);
        await fh.read(buf, 0, data.length, 0);
        for (let o = 0; o < data.length; o += BLOCK) {
          if (overwritten.has(o)) continue;
          if (!buf.subarray(o, o + BLOCK).equals(data.subarray(o, o + BLOCK))) throw new Error(`${n.name}: the block at ${o} is not what nbdcopy wrote`);
        }
      } finally {
        await fh.close();
      }
    }
  }, TEST_TIMEOUT_MS);

  it('kill -9 of the Primary under load, beta promoted: every acknowledged write is on beta and gamma, and alpha resyncs from beta when it returns', async () => {
    const m = await syncedMesh();
    const size = (await statusOf(m.alpha)).sizeBytes;
    let killer: NodeJS.Timeout | null = null;
    // whole 4 MiB activity-log extents only: the last, partial one has a test of its own
    const acked = await writeLoad(m.alpha, {
      blocks: (Math.floor(size / AL_EXTENT) * AL_EXTENT) / BLOCK,
      stopAfterMs: 20_000,
      onRunning: () => {
        killer = setTimeout(() => void m.alpha.killHard(), 1500);
      },
    });
    if (killer) clearTimeout(killer);
    await m.alpha.killHard().catch(() => undefined);
    expect(acked.size).toBeGreaterThan(50);
    expect(acked.size).toBeLessThan(size / BLOCK); // the kill landed mid-load

    for (const n of [m.beta, m.gamma]) await waitForStatus(n, (s) => peerOf(s, 'alpha').connection !== 'Connected');
    // beta had every acknowledged write: it is UpToDate and needs no --force
    expect((await statusOf(m.beta)).disk).toBe('UpToDate');
    await mustSucceed(m.beta.cli('primary', 'r0'));
    expect(await ackedMissingFrom(m.beta.diskPath, acked)).toEqual([]);
    expect(await ackedMissingFrom(m.gamma.diskPath, acked)).toEqual([]);

    // alpha comes back as a crashed Primary and takes what it missed from beta
    await m.alpha.up();
    await waitForStatus(m.alpha, (s) => s.disk === 'UpToDate' && ['beta', 'gamma'].every((x) => peerOf(s, x as 'beta').replication === 'Established'));
    await waitForStatus(m.beta, (s) => peerOf(s, 'alpha').outOfSyncBytes === 0 && peerOf(s, 'alpha').replication === 'Established');
    expect((await statusOf(m.alpha)).role).toBe('Secondary');
    expect(await ackedMissingFrom(m.alpha.diskPath, acked)).toEqual([]);
    await expectSameData([m.beta, m.alpha], size);
    // gamma and beta may differ only where a write was in flight (never acknowledged) at the kill
    const differ = await differingBlocks(m.beta.diskPath, m.gamma.diskPath, size, 1000);
    expect(differ.filter((b) => acked.has(b))).toEqual([]);
    if (differ.length > 0) console.warn(`gamma differs from the new Primary beta in ${differ.length} block(s) that were in flight at the kill: ${differ.join(', ')}`);
  }, TEST_TIMEOUT_MS);

  // The data area with internal metadata is never a multiple of the 4 MiB
  // activity-log extent: a crashed Primary's hot last extent is marked only
  // as far as the data reaches (it once made `up` fail).
  it('a Primary killed after writing into the last, partial 4 MiB extent comes up again', async () => {
    const m = await syncedMesh();
    const size = (await statusOf(m.alpha)).sizeBytes;
    expect(size % AL_EXTENT).not.toBe(0);
    await must('qemu-io', ['-f', 'raw', '-c', `write -P 0x5a ${size - BLOCK} 4k`, m.alpha.uri]);
    await m.alpha.killHard();
    await m.alpha.up();
    expect((await statusOf(m.alpha)).flags).toContain('CRASHED_PRIMARY');
  }, TEST_TIMEOUT_MS);

  // A node that ends a resync as SyncTarget tells every peer, not only its
  // source, that its disk is UpToDate; a full sync from the Primary settles
  // the marks the two Secondaries kept for each other.
  it('after the initial sync the two Secondaries see each other UpToDate', async () => {
    const m = await syncedMesh();
    await waitForStatus(m.beta, (s) => peerOf(s, 'gamma').peerDisk === 'UpToDate' && peerOf(s, 'gamma').outOfSyncBytes === 0, 10_000);
    await waitForStatus(m.gamma, (s) => peerOf(s, 'beta').peerDisk === 'UpToDate' && peerOf(s, 'beta').outOfSyncBytes === 0, 10_000);
  }, TEST_TIMEOUT_MS);

  // After a failover the new Primary replicates to the third node, which is
  // connected and UpToDate, instead of acknowledging writes only it holds (G1).
  it('after a failover the new Primary replicates every write to the third node at once (protocol C)', async () => {
    const m = await syncedMesh();
    const size = (await statusOf(m.alpha)).sizeBytes;
    await m.alpha.killHard();
    for (const n of [m.beta, m.gamma]) await waitForStatus(n, (s) => peerOf(s, 'alpha').connection !== 'Connected');
    await mustSucceed(m.beta.cli('primary', 'r0'));
    const offsets = await scatteredWrites(m.beta.uri, size, 16, () => 0x6b, 11);
    const beta = await statusOf(m.beta);
    expect(peerOf(beta, 'gamma')).toMatchObject({ connection: 'Connected', replication: 'Established', peerDisk: 'UpToDate', outOfSyncBytes: 0 });
    const fh = await fsp.open(m.gamma.diskPath, 'r');
    try {
      const buf = Buffer.alloc(BLOCK);
      for (const o of offsets) {
        await fh.read(buf, 0, BLOCK, o);
        expect(buf.equals(Buffer.alloc(BLOCK, 0x6b)), `gamma lacks the acknowledged write at ${o}`).toBe(true);
      }
    } finally {
      await fh.close();
    }
  }, TEST_TIMEOUT_MS);

  // A Secondary must mark the Primary's writes for its peers that are away:
  // when it becomes Primary, it is the one to bring them up to date.
  it('a node that was away when the Primary died resyncs from the new Primary what both Primaries wrote meanwhile', async () => {
    const m = await syncedMesh();
    const size = (await statusOf(m.alpha)).sizeBytes;
    // gamma goes away; alpha writes (acknowledged by alpha and beta)
    await m.gamma.killHard();
    await waitForStatus(m.alpha, (s) => peerOf(s, 'gamma').connection !== 'Connected');
    await waitForStatus(m.beta, (s) => peerOf(s, 'gamma').connection !== 'Connected');
    const underAlpha = await scatteredWrites(m.alpha.uri, size, 40, () => 0x41, 3);
    // alpha dies; beta, UpToDate, takes over and writes too
    await m.alpha.killHard();
    await waitForStatus(m.beta, (s) => peerOf(s, 'alpha').connection !== 'Connected');
    await mustSucceed(m.beta.cli('primary', 'r0'));
    const underBeta = await scatteredWrites(m.beta.uri, size, 40, () => 0x42, 7);
    // gamma returns: beta is the only node up with the data
    await m.gamma.up();
    await waitForStatus(m.gamma, (s) => {
      const b = peerOf(s, 'beta');
      return s.disk === 'UpToDate' && b.connection === 'Connected' && b.replication === 'Established';
    });
    await waitForStatus(m.beta, (s) => peerOf(s, 'gamma').outOfSyncBytes === 0 && peerOf(s, 'gamma').replication === 'Established');
    const lacking = async (offsets: number[], byte: number): Promise<number[]> => {
      const fh = await fsp.open(m.gamma.diskPath, 'r');
      try {
        const buf = Buffer.alloc(BLOCK);
        const out: number[] = [];
        for (const o of offsets) {
          await fh.read(buf, 0, BLOCK, o);
          if (!buf.equals(Buffer.alloc(BLOCK, byte))) out.push(o);
        }
        return out;
      } finally {
        await fh.close();
      }
    };
    // what beta wrote as Primary was marked for gamma and arrives...
    expect(await lacking(underBeta, 0x42), 'blocks written under beta that gamma lacks').toEqual([]);
    // ...and so must what alpha wrote while gamma was away (beta holds it)
    expect(await lacking(underAlpha, 0x41), 'blocks written under alpha that gamma lacks').toEqual([]);
    await expectSameData([m.beta, m.gamma], size);
  }, TEST_TIMEOUT_MS);
});

describe.skipIf(missing.length > 0 || noNetns)('three nodes in a full mesh (network namespaces)', () => {
  let h: NetnsHarness | null = null;
  afterEach(async () => {
    // the mesh first (the file's afterEach), then its namespaces
    while (meshes.length > 0) await meshes.pop()!.stop();
    await h?.destroy();
    h = null;
  });

  /**
   * alpha Primary, gamma cut off by the network (alpha and beta both see it
   * gone) while alpha writes 1 % of the blocks, scattered. Returns what the
   * test needs to check the return.
   */
  async function gammaMissesWrites(harness: NetnsHarness, opts: { alphaFirst?: boolean } = {}): Promise<{ m: Mesh; size: number; dirty: number; receivedBefore: number }> {
    const m = await syncedMesh({ netns: harness });
    const size = (await statusOf(m.alpha)).sizeBytes;
    const receivedBefore = await bytesReceived(m.gamma);
    if (opts.alphaFirst) {
      // alpha loses gamma while beta still has it: beta takes alpha's new
      // generation with gamma still connected (the drops stay in place)
      await harness.dropOneWay(0, GAMMA);
      await harness.dropOneWay(GAMMA, 0);
      await waitForStatus(m.alpha, (s) => peerOf(s, 'gamma').connection !== 'Connected', 15_000);
      const current = (await statusOf(m.alpha)).generation.current;
      await waitForStatus(m.beta, (s) => s.generation.current === current && peerOf(s, 'gamma').connection === 'Connected');
    }
    await harness.partition(GAMMA);
    await waitForStatus(m.alpha, (s) => peerOf(s, 'gamma').connection !== 'Connected', 15_000);
    await waitForStatus(m.beta, (s) => peerOf(s, 'gamma').connection !== 'Connected', 15_000);
    const dirty = Math.round(size / BLOCK / 100);
    await scatteredWrites(m.alpha.uri, size, dirty, (i) => (i % 250) + 1);
    const alpha = await statusOf(m.alpha);
    expect(peerOf(alpha, 'gamma').outOfSyncBytes).toBe(dirty * BLOCK);
    expect(peerOf(alpha, 'beta').outOfSyncBytes).toBe(0);
    await expectSameData([m.alpha, m.beta], size);
    return { m, size, dirty, receivedBefore };
  }

  // Losing gamma, alpha starts a new data generation and gives it to beta,
  // which stays connected and gets every write (NEW_GENERATION); gamma
  // resyncs only what it missed, from the Primary, and beta never becomes
  // SyncTarget of gamma for the whole disk.
  it('a Secondary cut off by the network misses writes, returns, resyncs only what it missed, and all three end identical', async () => {
    h = await createNetns({ nodes: 3 });
    const { m, size, dirty, receivedBefore } = await gammaMissesWrites(h);
    // gamma meets the Primary first (beta and gamma still apart)
    await h.dropOneWay(1, GAMMA);
    await h.dropOneWay(GAMMA, 1);
    await h.heal(GAMMA);
    await waitInSync([m.alpha, m.gamma], m.alpha);
    await h.restoreOneWay(1, GAMMA);
    await h.restoreOneWay(GAMMA, 1);
    await waitInSync(m.nodes, m.alpha);
    const moved = (await bytesReceived(m.gamma)) - receivedBefore;
    // the missed blocks plus headers, pings and handshakes; not the disk, and not twice
    expect(moved).toBeGreaterThanOrEqual(dirty * BLOCK);
    expect(moved).toBeLessThan(dirty * BLOCK * 1.25 + 256 * 1024);
    await expectSameData(m.nodes, size);
  }, TEST_TIMEOUT_MS);

  // gamma meets beta first. beta took alpha's new generation while it still
  // saw gamma (alpha lost gamma first), so only alpha's
  // NEW_GENERATION, which names gamma as missing it, tells beta that gamma
  // needs a bitmap UUID: without it gamma would look merely older than beta
  // and get the whole disk. While beta is connected to the Primary both
  // defer the resync (the Primary syncs gamma) and gamma changes nothing;
  // once the Primary is gone, beta syncs the marks.
  it('a Secondary that returns to the other Secondary first resyncs from the marks, not the whole disk', async () => {
    h = await createNetns({ nodes: 3 });
    const { m, size, dirty, receivedBefore } = await gammaMissesWrites(h, { alphaFirst: true });
    const gammaBefore = await statusOf(m.gamma);
    await h.heal(GAMMA);
    const deferred = await waitForStatus(m.gamma, (s) => /deferred/.test(peerOf(s, 'beta').lastError ?? ''));
    expect(deferred.disk).toBe('UpToDate');
    expect(deferred.generation).toEqual(gammaBefore.generation);
    expect(peerOf(deferred, 'beta').lastDecision).toMatch(/use-bitmap/);

    await m.alpha.killHard();
    await waitForStatus(m.gamma, (s) => {
      const b = peerOf(s, 'beta');
      return s.disk === 'UpToDate' && b.connection === 'Connected' && b.replication === 'Established' && s.generation.current !== gammaBefore.generation.current;
    }, 60_000);
    const moved = (await bytesReceived(m.gamma)) - receivedBefore;
    expect(moved).toBeGreaterThanOrEqual(dirty * BLOCK);
    expect(moved).toBeLessThan(dirty * BLOCK * 1.25 + 256 * 1024);
    await expectSameData([m.beta, m.gamma], size);
  }, TEST_TIMEOUT_MS);
});
