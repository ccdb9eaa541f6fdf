/**
 * G4 on two real daemons: while connected, at most one node is Primary.
 * A second `primary` is refused naming the Primary; demotion is refused
 * while NBD clients are connected and `--force` cuts them off with
 * ESHUTDOWN; role changes go through Promoting/Demoting in the event
 * stream; the promotion handlers run around it with their environment.
 *
 * One pair serves the whole file: every test starts from both nodes
 * Secondary, connected and UpToDate.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { mustSucceed } from '../helpers/single-node.js';
import { nbdGo } from '../helpers/nbd-go.js';
import { missingTools } from '../helpers/tools.js';
import type { PairNode } from '../helpers/pair.js';
import { ctl, makeCluster, qemuIo, status, upSynced, waitFor, type Cluster } from './roles-sb/cluster.js';
import { NBD_ESHUTDOWN, streamWrites } from './roles-sb/nbd-writer.js';

const missing = missingTools('qemu-io');

describe.skipIf(missing.length > 0)('single Primary (G4) on a connected pair', () => {
  let c: Cluster;

  beforeAll(async () => {
    c = await makeCluster({ handlers: ['before-promote', 'after-promote', 'after-demote'] });
    try {
      await upSynced(c);
    } catch (e) {
      await c.stop();
      throw e;
    }
  });

  afterAll(async () => {
    await c?.stop();
  });

  afterEach(async (ctx) => {
    if (ctx.task.result?.state === 'fail') console.log(await c.logTail());
  });

  beforeEach(async () => {
    for (const n of c.nodes) {
      await c.setHook(n, 'before-promote', { kind: 'exit', code: 0 });
      if ((await status(n)).role !== 'Secondary') await ctl(n, 'secondary', { force: true });
    }
    for (const n of c.nodes) await waitFor(n, (s) => s.role === 'Secondary' && s.peers[0]?.connection === 'Connected' && s.peers[0]?.role === 'Secondary');
  });

  const other = (n: PairNode): PairNode => (n === c.alpha ? c.beta : c.alpha);

  it('a second primary is refused naming the Primary, with or without --force, and nothing changes', async () => {
    await mustSucceed(c.alpha.cli('primary', 'r0'));
    await waitFor(c.beta, (s) => s.peers[0]?.role === 'Primary');
    for (const args of [['primary', 'r0'], ['primary', 'r0', '--force']]) {
      const r = await c.beta.cli(...args);
      expect(r.code, `${args.join(' ')} on beta`).not.toBe(0);
      expect(r.stderr).toMatch(/alpha is Primary/);
      expect(r.stderr).toMatch(/\[ERR_TWO_PRIMARIES\]/);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect(await status(c.beta)).toMatchObject({ role: 'Secondary', disk: 'UpToDate' });
    const a = await status(c.alpha);
    expect(a.role).toBe('Primary');
    expect(a.peers[0]).toMatchObject({ connection: 'Connected', role: 'Secondary' });
    // the Primary still serves
    await qemuIo(c.alpha, ['write -P 0x21 0 64k', 'read -P 0x21 0 64k']);
  });

  it('two nodes told to promote at the same moment: exactly one becomes Primary', async () => {
    for (let round = 0; round < 3; round++) {
      const [ra, rb] = await Promise.all([c.alpha.cli('primary', 'r0'), c.beta.cli('primary', 'r0')]);
      const winners = [ra, rb].filter((r) => r.code === 0).length;
      expect(winners, `round ${round}: alpha ${ra.code} ${ra.stderr} / beta ${rb.code} ${rb.stderr}`).toBeLessThanOrEqual(1);
      for (const r of [ra, rb]) if (r.code !== 0) expect(r.stderr).toMatch(/\[(ERR_TWO_PRIMARIES|ERR_BUSY)\]/);
      const roles = [(await status(c.alpha)).role, (await status(c.beta)).role];
      expect(roles.filter((x) => x === 'Primary').length, `round ${round}: ${roles.join(',')}`).toBe(winners);
      for (const n of c.nodes) if ((await status(n)).role === 'Primary') await ctl(n, 'secondary');
      for (const n of c.nodes) await waitFor(n, (s) => s.peers[0]?.role === 'Secondary' && s.role === 'Secondary');
    }
  });

  it('secondary is refused while an NBD client is connected; secondary --force answers its requests with ESHUTDOWN and disconnects it', async () => {
    await mustSucceed(c.alpha.cli('primary', 'r0'));
    const go = await nbdGo('127.0.0.1', c.alpha.nbdPort, 'r0');
    if (!go.ok) throw new Error(`NBD client could not connect: ${go.error}`);
    try {
      await waitFor(c.alpha, (s) => s.nbd.clients.length === 1);
      const refused = await c.alpha.cli('secondary', 'r0');
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(/\[ERR_CLIENTS_CONNECTED\]/);
      expect(refused.stderr).toMatch(/1 NBD client/);
      expect((await status(c.alpha)).role).toBe('Primary');

      // Keep four times more writes outstanding than the server takes in
      // flight (64 requests), small enough that many of them are received
      // and waiting behind its window (the server answers those with
      // ESHUTDOWN; test/integration/nbd-server.test.ts proves that exactly);
      // then force the demotion.
      const stream = streamWrites(go.socket, { depth: 256, lengthBytes: 4096, spanBytes: 12 * 1024 * 1024, timeoutMs: 30_000 });
      await new Promise((r) => setTimeout(r, 300));
      expect(stream.replies.get(0) ?? 0, 'writes went through before the demotion').toBeGreaterThan(0);
      await mustSucceed(c.alpha.cli('secondary', 'r0', '--force'));
      const end = await stream.ended;
      expect(end.closed, 'the server closed the connection').toBe(true);
      const errors = [...stream.replies.keys()].filter((e) => e !== 0);
      // Nothing but success before and ESHUTDOWN after (what the server
      // never read before it closed may stay unanswered).
      expect(errors).toEqual([NBD_ESHUTDOWN]);
    } finally {
      go.socket.destroy();
    }
    const a = await waitFor(c.alpha, (s) => s.role === 'Secondary');
    expect(a.nbd.clients).toEqual([]);
    expect(a.roleReason).toBe('secondary --force');
    // The listener now refuses naming the role.
    const again = await nbdGo('127.0.0.1', c.alpha.nbdPort, 'r0');
    expect(again.ok).toBe(false);
    if (!again.ok) expect(again.error).toMatch(/Secondary on alpha/);
  });

  it('role events go Secondary -> Promoting -> Primary and Primary -> Demoting -> Secondary, with reasons, in order', async () => {
    const ev = await c.record(c.beta, { viaCli: true });
    await mustSucceed(c.beta.cli('primary', 'r0'));
    await mustSucceed(c.beta.cli('secondary', 'r0'));
    await ev.waitFor((e) => e.type === 'role' && e.to === 'Secondary', 'demoted');
    const roles = ev.of('role').map((e) => ({ from: e.from, to: e.to, reason: e.reason }));
    expect(roles).toEqual([
      { from: 'Secondary', to: 'Promoting', reason: 'primary' },
      { from: 'Promoting', to: 'Primary', reason: 'primary' },
      { from: 'Primary', to: 'Demoting', reason: 'secondary' },
      { from: 'Demoting', to: 'Secondary', reason: 'secondary' },
    ]);
    // The promotion was agreed with the connected peer between Promoting and Primary.
    const seqOf = (pred: (e: (typeof ev.events)[number]) => boolean): number => ev.events.find(pred)?.seq ?? -1;
    const twopc = seqOf((e) => e.type === 'twopc' && e.committed === true);
    expect(twopc).toBeGreaterThan(seqOf((e) => e.type === 'role' && e.to === 'Promoting'));
    expect(twopc).toBeLessThan(seqOf((e) => e.type === 'role' && e.to === 'Primary'));
    expect(ev.of('twopc')[0]).toMatchObject({ change: 'promote', peers: ['alpha'] });
    const seqs = ev.events.map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
  });

  it('a before-promote handler that exits 1 refuses the promotion; the peer is left free to promote', async () => {
    await c.setHook(c.alpha, 'before-promote', { kind: 'exit', code: 1 });
    const ev = await c.record(c.alpha);
    const r = await c.alpha.cli('primary', 'r0');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/before-promote/);
    expect(r.stderr).toMatch(/exit 1/);
    expect(r.stderr).toMatch(/\[ERR_ROLE\]/);
    const a = await status(c.alpha);
    expect(a.role).toBe('Secondary');
    expect(a.roleReason).toMatch(/^promotion failed: .*before-promote/);
    await ev.waitFor((e) => e.type === 'role' && e.from === 'Promoting' && e.to === 'Secondary', 'promotion rolled back');
    expect(ev.of('role').map((e) => `${String(e.from)}->${String(e.to)}`)).toEqual(['Secondary->Promoting', 'Promoting->Secondary']);
    expect(ev.of('handler').find((e) => e.handler === 'before-promote')).toMatchObject({ exitCode: 1, timedOut: false });
    // A refused promotion leaves no half-agreed change behind on the peer.
    expect(ev.of('twopc')).toEqual([]);
    await mustSucceed(c.beta.cli('primary', 'r0'));
    await waitFor(c.alpha, (s) => s.peers[0]?.role === 'Primary');
    // and once it exits 0 again, alpha is refused only for the right reason
    await c.setHook(c.alpha, 'before-promote', { kind: 'exit', code: 0 });
    const two = await c.alpha.cli('primary', 'r0');
    expect(two.stderr).toMatch(/\[ERR_TWO_PRIMARIES\]/);
  });

  it('after-promote and after-demote run with the resource, node and role in their environment (DRBD names too)', async () => {
    for (const n of c.nodes) {
      const before = (await c.hookRuns(n)).length;
      const ev = await c.record(n);
      await mustSucceed(n.cli('primary', 'r0'));
      await ev.waitFor((e) => e.type === 'handler' && e.handler === 'after-promote', 'after-promote ran');
      await mustSucceed(n.cli('secondary', 'r0'));
      await ev.waitFor((e) => e.type === 'handler' && e.handler === 'after-demote', 'after-demote ran');
      const runs = (await c.hookRuns(n)).slice(before);
      expect(runs.map((r) => r.handler)).toEqual(['before-promote', 'after-promote', 'after-demote']);
      const [, promote, demote] = runs;
      const common = {
        MIRRORBD_RESOURCE: 'r0',
        DRBD_RESOURCE: 'r0',
        MIRRORBD_NODE: n.name,
        MIRRORBD_NODE_ID: String(n.nodeId),
      };
      expect(promote!.env).toMatchObject({ ...common, MIRRORBD_HANDLER: 'after-promote', MIRRORBD_ROLE: 'Primary', MIRRORBD_DISK: 'UpToDate' });
      expect(demote!.env).toMatchObject({ ...common, MIRRORBD_HANDLER: 'after-demote', MIRRORBD_ROLE: 'Secondary' });
      // these handlers are about this node, not a peer
      expect(promote!.env.MIRRORBD_PEER).toBeUndefined();
      expect(runs[0]!.env.MIRRORBD_ROLE).not.toBe('Primary');
      ev.stop();
      await waitFor(other(n), (s) => s.peers[0]?.role === 'Secondary');
    }
  });
});
