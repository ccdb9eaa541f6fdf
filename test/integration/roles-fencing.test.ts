/**
 * Fencing on two real daemons. The fence-peer handler is a script that
 * does what a real one does over ssh or a cluster manager: it runs
 * `mirrorbd outdate r0` on the peer (here the same machine, with the peer's
 * node name from MIRRORBD_PEER) and exits 4 when that worked, 5 when the
 * peer could not be reached. Tests can also make it exit with any status or
 * sleep first.
 *
 * - `fencing resource-only`: a Secondary that cannot reach its peer runs
 *   fence-peer before it promotes and promotes only when the peer is known
 *   not to be promotable; `primary --force` skips it. A Primary that loses
 *   its peer runs fence-peer and writes on.
 * - `mirrorbd outdate` makes a Secondary Outdated: no plain `primary` then.
 * - `fencing resource-and-stonith`: a Primary that loses its peer holds
 *   I/O until fence-peer answers, and keeps holding it when the handler
 *   fails, until `mirrorbd resume-io`.
 */
import { describe, expect, it } from 'vitest';
import { mustSucceed } from '../helpers/single-node.js';
import { missingTools } from '../helpers/tools.js';
import {
  clusterPerTest,
  ctl,
  dataArea,
  killDaemon,
  qemuIo,
  sleep,
  status,
  upSynced,
  waitFor,
  type Cluster,
  type MirrorEventJson,
} from './roles-sb/cluster.js';

const missing = missingTools('qemu-io');

const cluster = clusterPerTest(['fence-peer']);

const seqOf = (events: MirrorEventJson[], pred: (e: MirrorEventJson) => boolean): number => events.find(pred)?.seq ?? -1;

describe.skipIf(missing.length > 0)('fencing resource-only', () => {
  it('a Secondary that cannot reach its peer runs fence-peer first; the peer outdated (exit 4), it promotes and the peer cannot', async () => {
    const c = await cluster('fencing resource-only;');
    await upSynced(c);
    await c.setHook(c.beta, 'fence-peer', { kind: 'outdate-peer' });
    await ctl(c.alpha, 'disconnect');
    await ctl(c.beta, 'disconnect');
    const ev = await c.record(c.beta);
    await mustSucceed(c.beta.cli('primary', 'r0'));

    const runs = await c.hookRuns(c.beta, 'fence-peer');
    expect(runs).toHaveLength(1);
    expect(runs[0]!.env).toMatchObject({
      MIRRORBD_RESOURCE: 'r0',
      DRBD_RESOURCE: 'r0',
      MIRRORBD_NODE: 'beta',
      MIRRORBD_HANDLER: 'fence-peer',
      MIRRORBD_PEER: 'alpha',
      DRBD_PEER: 'alpha',
      MIRRORBD_PEER_ID: '0',
    });
    expect(ev.of('fence-peer')).toEqual([expect.objectContaining({ peer: 'alpha', outcome: 'peer-outdated', fenced: true })]);
    expect(ev.of('handler').find((e) => e.handler === 'fence-peer')).toMatchObject({ exitCode: 4, peer: 'alpha' });
    // fencing happens while Promoting, before the node is Primary
    const fenced = seqOf(ev.events, (e) => e.type === 'fence-peer');
    expect(fenced).toBeGreaterThan(seqOf(ev.events, (e) => e.type === 'role' && e.to === 'Promoting'));
    expect(fenced).toBeLessThan(seqOf(ev.events, (e) => e.type === 'role' && e.to === 'Primary'));

    const a = await status(c.alpha);
    expect(a.disk).toBe('Outdated');
    expect(a.flags).not.toContain('WAS_UP_TO_DATE');
    const refused = await c.alpha.cli('primary', 'r0');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/Outdated/);
    expect(refused.stderr).toMatch(/\[ERR_NOT_UP_TO_DATE\]/);

    // back together, the outdated node takes what the new Primary wrote
    await qemuIo(c.beta, ['write -P 0x4f 1M 64k']);
    await ctl(c.beta, 'connect');
    await ctl(c.alpha, 'connect');
    await waitFor(c.alpha, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established');
    const size = a.sizeBytes;
    expect((await dataArea(c.alpha.diskPath, size)).equals(await dataArea(c.beta.diskPath, size))).toBe(true);
  });

  it('fence-peer exit 1, 5 or 6 refuses the promotion with ERR_FENCING; --force promotes without it; exit 7 (fenced) lets it proceed', async () => {
    const c = await cluster('fencing resource-only;');
    await upSynced(c);
    await ctl(c.alpha, 'disconnect');
    await ctl(c.beta, 'disconnect');
    const ev = await c.record(c.beta);
    for (const code of [1, 5, 6]) {
      await c.setHook(c.beta, 'fence-peer', { kind: 'exit', code });
      const r = await c.beta.cli('primary', 'r0');
      expect(r.code, `fence-peer exit ${code}`).not.toBe(0);
      expect(r.stderr).toMatch(/\[ERR_FENCING\]/);
      expect(r.stderr).toMatch(/alpha is unreachable/);
      expect(r.stderr).toMatch(/primary --force/);
      expect((await status(c.beta)).role).toBe('Secondary');
    }
    expect(ev.of('fence-peer').map((e) => [e.outcome, e.fenced])).toEqual([
      ['failed', false],
      ['unreachable', false],
      ['peer-primary', false],
    ]);
    expect((await c.hookRuns(c.beta, 'fence-peer')).length).toBe(3);
    // the peer was never touched
    expect((await status(c.alpha)).disk).toBe('UpToDate');

    await mustSucceed(c.beta.cli('primary', 'r0', '--force'));
    expect((await status(c.beta)).role).toBe('Primary');
    expect((await c.hookRuns(c.beta, 'fence-peer')).length, '--force runs no fence-peer').toBe(3);
    await mustSucceed(c.beta.cli('secondary', 'r0'));

    await c.setHook(c.beta, 'fence-peer', { kind: 'exit', code: 7 });
    await mustSucceed(c.beta.cli('primary', 'r0'));
    expect(ev.of('fence-peer').at(-1)).toMatchObject({ outcome: 'peer-fenced', fenced: true });
  });

  it('a killed peer cannot be outdated: the promotion is refused until --force', async () => {
    const c = await cluster('fencing resource-only;');
    await upSynced(c, c.alpha);
    await c.setHook(c.beta, 'fence-peer', { kind: 'outdate-peer' });
    await killDaemon(c.alpha);
    await waitFor(c.beta, (s) => s.peers[0]?.connection !== 'Connected');
    const r = await c.beta.cli('primary', 'r0');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/\[ERR_FENCING\]/);
    const runs = await c.hookRuns(c.beta, 'fence-peer');
    expect(runs.map((x) => x.env.MIRRORBD_PEER)).toEqual(['alpha']);
    expect((await status(c.beta)).role).toBe('Secondary');
    await mustSucceed(c.beta.cli('primary', 'r0', '--force'));
    await qemuIo(c.beta, ['write -P 0x6b 0 64k', 'read -P 0x6b 0 64k']);
  });

  it('outdate on a Secondary makes it Outdated and a later plain primary is refused; outdate on the Primary is refused', async () => {
    const c = await cluster('fencing resource-only;');
    await upSynced(c, c.alpha);
    await mustSucceed(c.beta.cli('outdate', 'r0'));
    const b = await status(c.beta);
    expect(b.disk).toBe('Outdated');
    expect(b.flags).toContain('CONSISTENT');
    expect(b.flags).not.toContain('WAS_UP_TO_DATE');
    await waitFor(c.alpha, (s) => s.peers[0]?.peerDisk === 'Outdated');
    const onPrimary = await c.alpha.cli('outdate', 'r0');
    expect(onPrimary.code).not.toBe(0);
    expect(onPrimary.stderr).toMatch(/\[ERR_ROLE\]/);
    expect((await status(c.alpha)).disk).toBe('UpToDate');
    // alpha steps down; beta still may not take over with Outdated data
    await mustSucceed(c.alpha.cli('secondary', 'r0'));
    await waitFor(c.beta, (s) => s.peers[0]?.role === 'Secondary');
    const r = await c.beta.cli('primary', 'r0');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Outdated/);
    expect(r.stderr).toMatch(/\[ERR_NOT_UP_TO_DATE\]/);
    expect((await status(c.beta)).role).toBe('Secondary');
    // the mark is in the metadata: it survives down and up (read before any peer connects)
    await ctl(c.alpha, 'disconnect');
    await mustSucceed(c.beta.cli('down', 'r0'));
    await mustSucceed(c.beta.cli('up', 'r0'));
    expect((await status(c.beta)).disk).toBe('Outdated');
    expect((await c.beta.cli('primary', 'r0')).stderr).toMatch(/\[ERR_NOT_UP_TO_DATE\]/);
  });

  it('a Primary that loses its peer runs fence-peer and writes on without waiting for it', async () => {
    const c = await cluster('fencing resource-only;');
    await upSynced(c, c.alpha);
    await c.setHook(c.alpha, 'fence-peer', { kind: 'outdate-peer', sleepSec: 4 });
    const ev = await c.record(c.alpha);
    await ctl(c.beta, 'disconnect');
    await waitFor(c.alpha, (s) => s.peers[0]?.connection !== 'Connected');
    await qemuIo(c.alpha, ['write -P 0x3c 2M 64k']);
    // fence-peer takes 4 s: the write completed before it answered
    expect(ev.of('fence-peer'), 'the write did not wait for fence-peer').toEqual([]);
    expect((await status(c.alpha)).suspended).toEqual([]);
    const f = await ev.waitFor((e) => e.type === 'fence-peer', 'fence-peer answered');
    expect(f).toMatchObject({ peer: 'beta', outcome: 'peer-outdated', fenced: true });
    expect((await c.hookRuns(c.alpha, 'fence-peer'))[0]!.env).toMatchObject({ MIRRORBD_PEER: 'beta', MIRRORBD_ROLE: 'Primary' });
    expect((await status(c.beta)).disk).toBe('Outdated');
  });

  it('a Primary runs fence-peer once for a lost peer, not again at every attempt to reach it while it is StandAlone', async () => {
    const c = await cluster('fencing resource-only;');
    await upSynced(c, c.alpha);
    await c.setHook(c.alpha, 'fence-peer', { kind: 'outdate-peer' });
    const ev = await c.record(c.alpha);
    await ctl(c.beta, 'disconnect');
    await ev.waitFor((e) => e.type === 'fence-peer', 'fence-peer answered');
    await sleep(3500);
    expect((await c.hookRuns(c.alpha, 'fence-peer')).length).toBe(1);
    expect(ev.of('connection').filter((e) => e.to === 'Connected')).toEqual([]);
  });
});

describe.skipIf(missing.length > 0)('fencing resource-and-stonith', () => {
  // The peer is killed: its address refuses connections, so the Primary
  // sees it lost once (and the handler can only fence it, not outdate it).
  async function primaryLosesKilledPeer(code: number, sleepSec?: number): Promise<{ c: Cluster; ev: Awaited<ReturnType<Cluster['record']>> }> {
    const c = await cluster('fencing resource-and-stonith;');
    await upSynced(c, c.alpha);
    await c.setHook(c.alpha, 'fence-peer', { kind: 'exit', code, ...(sleepSec ? { sleepSec } : {}) });
    const ev = await c.record(c.alpha);
    await killDaemon(c.beta);
    return { c, ev };
  }

  it('a Primary that loses its peer suspends I/O until fence-peer answers (exit 7: fenced), then writes on', async () => {
    const { c, ev } = await primaryLosesKilledPeer(7, 2);
    const s = await waitFor(c.alpha, (x) => x.suspended.length > 0, 10_000);
    expect(s.suspended).toEqual(['fencing beta']);
    expect(s.role).toBe('Primary');
    const write = c.qemuIoBackground(c.alpha, ['write -P 0x71 3M 64k']);
    await sleep(1000);
    const answered = ev.of('fence-peer').length > 0;
    if (!answered) expect(write.finished(), 'a write while fence-peer runs waits').toBe(false);
    const f = await ev.waitFor((e) => e.type === 'fence-peer', 'fence-peer answered');
    expect(f).toMatchObject({ peer: 'beta', outcome: 'peer-fenced', fenced: true });
    const done = await write.done;
    expect(done.code, done.stdout + done.stderr).toBe(0);
    expect(done.stdout).not.toMatch(/failed/);
    expect((await status(c.alpha)).suspended).toEqual([]);
    expect((await c.hookRuns(c.alpha, 'fence-peer'))[0]!.env).toMatchObject({ MIRRORBD_PEER: 'beta', MIRRORBD_ROLE: 'Primary' });
    await qemuIo(c.alpha, ['read -P 0x71 3M 64k']);
  });

  it('a failing fence-peer (exit 5: unreachable) leaves I/O suspended until resume-io', async () => {
    const { c, ev } = await primaryLosesKilledPeer(5);
    const f = await ev.waitFor((e) => e.type === 'fence-peer', 'fence-peer answered');
    expect(f).toMatchObject({ peer: 'beta', outcome: 'unreachable', fenced: false });
    expect((await status(c.alpha)).suspended).toEqual(['fencing beta']);
    const write = c.qemuIoBackground(c.alpha, ['write -P 0x72 4M 64k']);
    await sleep(1500);
    expect(write.finished(), 'I/O stays suspended after a failed fence-peer').toBe(false);
    expect((await status(c.alpha)).suspended).toEqual(['fencing beta']);
    await mustSucceed(c.alpha.cli('resume-io', 'r0'));
    const done = await write.done;
    expect(done.code, done.stdout + done.stderr).toBe(0);
    expect(done.stdout).not.toMatch(/failed/);
    expect((await status(c.alpha)).suspended).toEqual([]);
    // nothing left to resume
    const again = await c.alpha.cli('resume-io', 'r0');
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/\[ERR_ROLE\]/);
    expect((await c.hookRuns(c.alpha, 'fence-peer')).length).toBe(1);
  });

  it('a Primary whose peer went StandAlone fences it once; I/O resumed with resume-io stays resumed', async () => {
    const c = await cluster('fencing resource-and-stonith;');
    await upSynced(c, c.alpha);
    await c.setHook(c.alpha, 'fence-peer', { kind: 'exit', code: 5 });
    const ev = await c.record(c.alpha);
    await ctl(c.beta, 'disconnect');
    await ev.waitFor((e) => e.type === 'fence-peer', 'fence-peer answered');
    await waitFor(c.alpha, (s) => s.suspended.length > 0);
    await mustSucceed(c.alpha.cli('resume-io', 'r0'));
    // alpha keeps trying to reach beta (connect-int 1 s); beta, StandAlone, turns it away
    await sleep(3500);
    expect((await status(c.alpha)).suspended, 'suspended again without a new loss of the peer').toEqual([]);
    expect(ev.of('fence-peer')).toHaveLength(1);
    expect((await c.hookRuns(c.alpha, 'fence-peer')).length).toBe(1);
    // the peer never counted as connected while it refused every attempt
    expect(ev.of('connection').filter((e) => e.to === 'Connected')).toEqual([]);
  });
});
