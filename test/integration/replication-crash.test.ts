/**
 * Crashes of a replicating Primary (kill -9): no acknowledged write is lost
 * when the other node takes over (G1), and a crashed Primary that comes back
 * resyncs only its activity-log extents, never the whole disk (G3).
 */
import { promises as fsp } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { NBD_CMD_WRITE } from '../../src/nbd/constants.js';
import { killDaemon } from '../helpers/cluster-node.js';
import { makePair, statusOf, upPair, waitForStatus, type Pair } from '../helpers/pair.js';
import { mustSucceed, runCli } from '../helpers/single-node.js';
import { BLOCK, errorOf, expectAckedReadBack, openExport, scatteredOrder, stamped, stampedWriteLoad } from './helpers/stamped-writes.js';

const QUEUE_DEPTH = 8;

const pairs: Pair[] = [];
afterEach(async () => {
  while (pairs.length > 0) await pairs.pop()!.stop();
});

async function syncedPair(): Promise<Pair> {
  const p = await makePair();
  pairs.push(p);
  await upPair(p);
  await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'Connected');
  await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
  await waitForStatus(p.beta, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established');
  await waitForStatus(p.alpha, (s) => s.peers[0]?.replication === 'Established' && s.peers[0]?.peerDisk === 'UpToDate');
  return p;
}

describe('a Primary crashes', () => {
  it('kill -9 during a write load, the other node promoted with --force: every acknowledged write is there', async () => {
    const p = await syncedPair();
    const blocks = (await statusOf(p.alpha)).sizeBytes / BLOCK;
    const c = await openExport(p.alpha.nbdPort);
    // Each block is written once, in a scattered order, with its own stamp.
    const order = scatteredOrder(blocks);
    const killer = setTimeout(() => void killDaemon(p.alpha).catch(() => undefined), 1500);
    const { acked, sent } = await stampedWriteLoad(c, { order, queueDepth: QUEUE_DEPTH, errorReply: 'end' }).finally(() => {
      clearTimeout(killer);
      c.destroy();
    });
    expect(sent).toBeLessThan(order.length); // the kill landed mid-load
    expect(acked.size).toBeGreaterThan(50);
    await killDaemon(p.alpha).catch(() => undefined);

    await waitForStatus(p.beta, (s) => s.peers[0]?.connection !== 'Connected');
    await mustSucceed(p.beta.cli('primary', 'r0', '--force'));
    const reader = await openExport(p.beta.nbdPort);
    try {
      await expectAckedReadBack(reader, acked, 'beta');
    } finally {
      reader.destroy();
    }
  });

  it('kill -9 and restart of a Primary: only its activity-log extents resync', async () => {
    const p = await syncedPair();
    const size = (await statusOf(p.alpha)).sizeBytes;
    const c = await openExport(p.alpha.nbdPort);
    // writes into two 4 MiB extents only
    let cookie = 1n;
    for (const offset of [4 * 1024 * 1024 + 8192, 20 * 1024 * 1024]) {
      c.request({ type: NBD_CMD_WRITE, cookie, offset, length: BLOCK }, stamped(offset / BLOCK, 1));
      expect(errorOf(await c.readReply())).toBe(0);
      cookie++;
    }
    c.destroy();
    await killDaemon(p.alpha);
    await waitForStatus(p.beta, (s) => s.peers[0]?.connection !== 'Connected');
    // Keep beta away until alpha's marks can be read.
    await mustSucceed(p.beta.cli('disconnect', 'r0'));
    const sentBefore = ((await statusOf(p.beta)) as unknown as { peers: Array<{ bytesReceived: number }> }).peers[0]!.bytesReceived;

    await mustSucceed(p.alpha.cli('up', 'r0'));
    const alpha = await statusOf(p.alpha);
    expect((alpha as unknown as { flags: string[] }).flags).toContain('CRASHED_PRIMARY');
    // the hot extents are marked for beta, not the whole disk
    const marked = alpha.peers[0]!.outOfSyncBytes!;
    expect(marked).toBeGreaterThan(0);
    expect(marked).toBeLessThanOrEqual(3 * 4 * 1024 * 1024);
    await mustSucceed(p.beta.cli('connect', 'r0'));
    await waitForStatus(p.beta, (s) => s.peers[0]?.replication === 'Established' && s.disk === 'UpToDate');
    await waitForStatus(p.alpha, (s) => s.peers[0]?.outOfSyncBytes === 0);
    const received = ((await statusOf(p.beta)) as unknown as { peers: Array<{ bytesReceived: number }> }).peers[0]!.bytesReceived - sentBefore;
    expect(received).toBeLessThan(size / 2);
    expect(received).toBeGreaterThanOrEqual(marked);
    const a = await fsp.readFile(p.alpha.diskPath);
    const b = await fsp.readFile(p.beta.diskPath);
    expect(a.subarray(0, size).equals(b.subarray(0, size))).toBe(true);
  });
});

describe('a disk that fails', () => {
  it('on-io-error detach: the Primary detaches its failing disk and keeps serving through its peer; nothing acknowledged is lost', async () => {
    const p = await makePair();
    pairs.push(p);
    for (const n of p.nodes) await mustSucceed(n.cli('create-md', 'r0'));
    // alpha's disk will fail every write after its first 30 data writes
    const faults = JSON.stringify({ [p.alpha.diskPath]: { op: 'write', afterCalls: 30, errno: 'EIO' } });
    await mustSucceed(runCli(p.configFile, 'alpha', ['up', 'r0'], { MIRRORBD_TEST_FAULTS: faults }));
    await mustSucceed(p.beta.cli('up', 'r0'));
    await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'Connected');
    await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established');

    const c = await openExport(p.alpha.nbdPort);
    const acked = new Map<number, number>();
    let failed = 0;
    try {
      for (let i = 0; i < 80; i++) {
        const block = (i * 37) % 1000;
        c.request({ type: NBD_CMD_WRITE, cookie: BigInt(i + 1), offset: block * BLOCK, length: BLOCK }, stamped(block, i + 1));
        const r = await c.readReply();
        if (errorOf(r) === 0) acked.set(block, i + 1);
        else failed++;
      }
    } finally {
      c.destroy();
    }
    // the write that hit the failure is refused; the node detached and went on
    expect(failed).toBeGreaterThanOrEqual(1);
    expect(failed).toBeLessThanOrEqual(2);
    expect(acked.size).toBeGreaterThanOrEqual(70);
    const alpha = await waitForStatus(p.alpha, (s) => s.disk === 'Diskless');
    expect(alpha.role).toBe('Primary');
    // every acknowledged block reads back through alpha (served by beta) and from beta itself
    await mustSucceed(p.alpha.cli('secondary', 'r0'));
    await mustSucceed(p.beta.cli('primary', 'r0'));
    const reader = await openExport(p.beta.nbdPort);
    try {
      await expectAckedReadBack(reader, acked, 'beta');
    } finally {
      reader.destroy();
    }
  });
});
