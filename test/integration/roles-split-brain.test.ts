/**
 * G5 on two real daemons: a split brain made on purpose (a connected,
 * synced pair is disconnected on both sides, the Secondary is promoted,
 * both write different blocks through NBD, then both connect again) is
 * detected at reconnect and resolved only by the configured after-sb
 * policy or by the operator (`connect --discard-my-data`), never silently.
 *
 * Every resolution is checked the same way: the losing node becomes
 * SyncTarget, the resync moves exactly the union of the blocks both sides
 * changed (not the disk), and afterwards both data areas are identical and
 * equal, block by block, to the winner's data as it was before reconnecting.
 *
 * alpha (node-id 0) is Primary before the split; beta (node-id 1) is
 * promoted while apart. beta holds the connection's tie-break bit (the
 * higher node-id yields a tie), so the scenarios make alpha lose wherever
 * the policy allows, and otherwise give the sides change counts that the
 * fall-back rules would decide the other way.
 */
import { describe, expect, it } from 'vitest';
import type { PairNode } from '../helpers/pair.js';
import { mustSucceed } from '../helpers/single-node.js';
import { missingTools } from '../helpers/tools.js';
import {
  clusterPerTest,
  ctl,
  dataArea,
  differingBlocks,
  qemuIo,
  status,
  upSynced,
  waitFor,
  type Cluster,
  type EventRecorder,
} from './roles-sb/cluster.js';

const missing = missingTools('qemu-io');

const BLOCK = 4096;

/** A write of `count` 4 KiB blocks from block `first`, every byte `pattern`. */
interface BlockWrite {
  first: number;
  count: number;
  pattern: number;
}

interface Split {
  /** beta stays Primary at reconnect (after-sb-1pri/2pri); otherwise it demotes. */
  betaPrimary: boolean;
  /** alpha stays Primary at reconnect (after-sb-2pri). */
  alphaPrimary: boolean;
  alphaWrites: BlockWrite[];
  betaWrites: BlockWrite[];
}

interface SplitResult {
  sizeBytes: number;
  /** Data areas right before the reconnect. */
  before: Record<'alpha' | 'beta', Buffer>;
  /** Blocks changed on either side since the split. */
  unionBlocks: number;
  events: Record<'alpha' | 'beta', EventRecorder>;
}

const cluster = clusterPerTest(['split-brain']);

function blocksOf(writes: BlockWrite[]): Set<number> {
  const s = new Set<number>();
  for (const w of writes) for (let b = w.first; b < w.first + w.count; b++) s.add(b);
  return s;
}

async function write(n: PairNode, writes: BlockWrite[]): Promise<void> {
  if (writes.length === 0) return;
  await qemuIo(
    n,
    writes.map((w) => `write -P 0x${w.pattern.toString(16)} ${w.first * BLOCK} ${w.count * BLOCK}`),
  );
}

/**
 * Synced pair, alpha Primary; both disconnect; beta is promoted; both
 * write; whoever should be Secondary at reconnect demotes; then both
 * connect (beta, which accepts, first).
 */
async function splitAndReconnect(c: Cluster, s: Split): Promise<SplitResult> {
  await upSynced(c, c.alpha);
  await ctl(c.alpha, 'disconnect');
  await ctl(c.beta, 'disconnect');
  for (const n of c.nodes) await waitFor(n, (x) => x.peers[0]?.connection === 'StandAlone');
  // beta's data is UpToDate: a plain primary is enough (fencing dont-care).
  await ctl(c.beta, 'primary');
  await write(c.alpha, s.alphaWrites);
  await write(c.beta, s.betaWrites);
  if (!s.alphaPrimary) await ctl(c.alpha, 'secondary');
  if (!s.betaPrimary) await ctl(c.beta, 'secondary');
  const a = await status(c.alpha);
  const b = await status(c.beta);
  // each side counts exactly its own writes as changed since the split
  expect(a.peers[0]!.outOfSyncBytes).toBe(blocksOf(s.alphaWrites).size * BLOCK);
  expect(b.peers[0]!.outOfSyncBytes).toBe(blocksOf(s.betaWrites).size * BLOCK);
  const sizeBytes = a.sizeBytes;
  const before = { alpha: await dataArea(c.alpha.diskPath, sizeBytes), beta: await dataArea(c.beta.diskPath, sizeBytes) };
  const events = { alpha: await c.record(c.alpha), beta: await c.record(c.beta) };
  await mustSucceed(c.beta.cli('connect', 'r0'));
  await mustSucceed(c.alpha.cli('connect', 'r0'));
  const unionBlocks = new Set([...blocksOf(s.alphaWrites), ...blocksOf(s.betaWrites)]).size;
  return { sizeBytes, before, unionBlocks, events };
}

/**
 * The loser became SyncTarget of exactly the union of changed blocks and
 * both disks now hold the winner's data. `rule` is the after-sb rule as the
 * loser names it (`...-self`).
 */
async function expectResolved(c: Cluster, r: SplitResult, loser: PairNode, rule: string): Promise<void> {
  const winner = loser === c.alpha ? c.beta : c.alpha;
  const ev = r.events;
  const loserEv = ev[loser.name];
  const winnerEv = ev[winner.name];
  const sbLoser = await loserEv.waitFor((e) => e.type === 'split-brain', 'split-brain resolution');
  expect(sbLoser).toMatchObject({ outcome: 'discard-local', rule });
  const sbWinner = await winnerEv.waitFor((e) => e.type === 'split-brain', 'split-brain resolution');
  expect(sbWinner).toMatchObject({ outcome: 'discard-remote', rule: rule.replace(/-self$/, '-peer') });
  const doneTarget = await loserEv.waitFor((e) => e.type === 'resync-done', 'resync done on the loser');
  const doneSource = await winnerEv.waitFor((e) => e.type === 'resync-done', 'resync done on the winner');
  expect(doneTarget.role).toBe('target');
  expect(doneSource.role).toBe('source');
  // only the union of what both sides changed moves, not the disk
  expect(doneTarget.bytes).toBe(r.unionBlocks * BLOCK);
  expect(doneSource.bytes).toBe(r.unionBlocks * BLOCK);
  expect(loserEv.of('replication').map((e) => e.to)).toContain('SyncTarget');
  expect(winnerEv.of('replication').map((e) => e.to)).toContain('SyncSource');
  const l = await waitFor(loser, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established');
  const w = await waitFor(winner, (s) => s.peers[0]?.replication === 'Established' && s.peers[0]?.peerDisk === 'UpToDate');
  expect(l.peers[0]!.lastDecision).toMatch(/^target-use-bitmap/);
  expect(w.peers[0]!.lastDecision).toMatch(/^source-use-bitmap/);
  expect(l.peers[0]!.outOfSyncBytes).toBe(0);
  expect(w.peers[0]!.outOfSyncBytes).toBe(0);
  expect(l.peers[0]!.splitBrain).toBe(false);
  expect(w.peers[0]!.splitBrain).toBe(false);
  // split-brain is for a split brain left to the operator, not for one a rule resolved
  for (const e of [loserEv, winnerEv]) expect(e.of('handler').filter((x) => x.handler === 'split-brain')).toEqual([]);
  // never silently: both daemons log the resolution with its rule
  const logs = await c.logTail(400);
  expect(logs).toContain(`split brain resolved: `);
  expect(logs).toContain(`rule=${rule}`);
  const want = r.before[winner.name];
  for (const n of c.nodes) {
    const got = await dataArea(n.diskPath, r.sizeBytes);
    expect(differingBlocks(got, want), `${n.name}'s data area against ${winner.name}'s before the reconnect`).toEqual([]);
  }
}

/** Neither side gave in: both StandAlone, split brain reported, split-brain ran, no data moved. */
async function expectUnresolved(c: Cluster, r: SplitResult, ruleOnAlpha: string): Promise<void> {
  for (const n of c.nodes) {
    const other = n === c.alpha ? c.beta : c.alpha;
    const s = await waitFor(n, (x) => x.peers[0]?.splitBrain === true && x.peers[0]?.connection === 'StandAlone').catch(async (e: Error) => {
      const err = (await status(n)).peers[0]?.lastError ?? '';
      // The other node decided first and closed the session before this one had read its facts.
      if (/handshake: peer said: split brain/.test(err)) throw new Error(`only ${other.name} found the split brain; ${n.name} lost the handshake: ${err}`);
      throw e;
    });
    expect(s.peers[0]!.lastError).toMatch(/split brain/);
    const e = await r.events[n.name].waitFor((x) => x.type === 'split-brain', 'split brain found');
    expect(e.outcome).toBe('disconnect');
    if (n === c.alpha) expect(e.rule).toBe(ruleOnAlpha);
    expect((await r.events[n.name].waitFor((x) => x.type === 'handshake-failed', 'handshake failed')).splitBrain).toBe(true);
    await r.events[n.name].waitFor((x) => x.type === 'handler' && x.handler === 'split-brain', 'split-brain handler ran');
    const runs = await c.hookRuns(n, 'split-brain');
    expect(runs.length).toBeGreaterThanOrEqual(1);
    expect(runs[0]!.env).toMatchObject({ MIRRORBD_RESOURCE: 'r0', MIRRORBD_NODE: n.name, MIRRORBD_PEER: other.name, DRBD_PEER: other.name });
    expect(r.events[n.name].of('resync-done')).toEqual([]);
  }
  // It stays that way: nobody redials a split brain.
  await new Promise((res) => setTimeout(res, 1500));
  for (const n of c.nodes) {
    expect((await status(n)).peers[0]).toMatchObject({ connection: 'StandAlone', splitBrain: true });
    const got = await dataArea(n.diskPath, r.sizeBytes);
    expect(differingBlocks(got, r.before[n.name]), `${n.name} kept its own data`).toEqual([]);
  }
}

/**
 * The operator's way out (DRBD's recovery steps): on the victim
 * `disconnect; secondary; connect --discard-my-data`, on the survivor
 * `connect`.
 */
async function recoverManually(c: Cluster, r: SplitResult, victim: PairNode): Promise<void> {
  const survivor = victim === c.alpha ? c.beta : c.alpha;
  for (const n of c.nodes) r.events[n.name].clear();
  await mustSucceed(victim.cli('disconnect', 'r0'));
  await mustSucceed(victim.cli('secondary', 'r0'));
  await mustSucceed(victim.cli('connect', 'r0', '--discard-my-data'));
  await mustSucceed(survivor.cli('connect', 'r0'));
  await expectResolved(c, r, victim, 'discard-my-data-self');
}

// alpha changes fewer blocks than beta (and they overlap in part)
const ALPHA_FEWER: Pick<Split, 'alphaWrites' | 'betaWrites'> = {
  alphaWrites: [
    { first: 0, count: 2, pattern: 0xa1 },
    { first: 512, count: 1, pattern: 0xa2 },
  ],
  betaWrites: [
    { first: 1, count: 4, pattern: 0xb1 },
    { first: 1024, count: 2, pattern: 0xb2 },
    { first: 3000, count: 1, pattern: 0xb3 },
  ],
};
// alpha changes more blocks than beta
const ALPHA_MORE: Pick<Split, 'alphaWrites' | 'betaWrites'> = {
  alphaWrites: [
    { first: 0, count: 6, pattern: 0xa3 },
    { first: 700, count: 3, pattern: 0xa4 },
  ],
  betaWrites: [
    { first: 4, count: 4, pattern: 0xb4 },
    { first: 2048, count: 1, pattern: 0xb5 },
  ],
};
const BOTH_SECONDARY = { alphaPrimary: false, betaPrimary: false };

describe.skipIf(missing.length > 0)('split brain, neither node Primary at reconnect (after-sb-0pri)', () => {
  it('disconnect: both stay StandAlone with splitBrain set and run split-brain; then the operator discards one side', async () => {
    const c = await cluster('after-sb-0pri disconnect;');
    const r = await splitAndReconnect(c, { ...BOTH_SECONDARY, ...ALPHA_MORE });
    await expectUnresolved(c, r, 'disconnect');
    await recoverManually(c, r, c.alpha);
  });

  it('a plain connect withdraws a --discard-my-data given before on the wrong node', async () => {
    const c = await cluster('after-sb-0pri disconnect;');
    const r = await splitAndReconnect(c, { ...BOTH_SECONDARY, ...ALPHA_MORE });
    await expectUnresolved(c, r, 'disconnect');
    // beta's operator gives the flag, then thinks better of it (alpha is still StandAlone)
    await mustSucceed(c.beta.cli('disconnect', 'r0'));
    await mustSucceed(c.beta.cli('connect', 'r0', '--discard-my-data'));
    await mustSucceed(c.beta.cli('disconnect', 'r0'));
    await mustSucceed(c.beta.cli('connect', 'r0'));
    await recoverManually(c, r, c.alpha);
  });

  it('discard-zero-changes: the side that wrote nothing loses', async () => {
    const c = await cluster('after-sb-0pri discard-zero-changes;');
    // alpha was Primary at the split but wrote nothing; beta was promoted and wrote
    const r = await splitAndReconnect(c, { ...BOTH_SECONDARY, alphaWrites: [], betaWrites: ALPHA_FEWER.betaWrites });
    await expectResolved(c, r, c.alpha, 'zero-changes-self');
  });

  it('discard-zero-changes with changes on both sides: disconnect', async () => {
    const c = await cluster('after-sb-0pri discard-zero-changes;');
    const r = await splitAndReconnect(c, { ...BOTH_SECONDARY, ...ALPHA_FEWER });
    await expectUnresolved(c, r, 'changes-both');
  });

  it('discard-least-changes: the side with fewer changed blocks loses', async () => {
    const c = await cluster('after-sb-0pri discard-least-changes;');
    const r = await splitAndReconnect(c, { ...BOTH_SECONDARY, ...ALPHA_FEWER });
    await expectResolved(c, r, c.alpha, 'least-changes-self');
  });

  it('discard-younger-primary: the node promoted after the split loses, though it changed more', async () => {
    const c = await cluster('after-sb-0pri discard-younger-primary;');
    const r = await splitAndReconnect(c, { ...BOTH_SECONDARY, ...ALPHA_FEWER });
    await expectResolved(c, r, c.beta, 'younger-primary-self');
  });

  it('discard-older-primary: the node that was Primary at the split loses, though it changed more', async () => {
    const c = await cluster('after-sb-0pri discard-older-primary;');
    const r = await splitAndReconnect(c, { ...BOTH_SECONDARY, ...ALPHA_MORE });
    await expectResolved(c, r, c.alpha, 'older-primary-self');
  });

  it('discard-node-alpha: alpha loses, though it changed more and does not hold the tie-break', async () => {
    const c = await cluster('after-sb-0pri discard-node-alpha;');
    const r = await splitAndReconnect(c, { ...BOTH_SECONDARY, ...ALPHA_MORE });
    await expectResolved(c, r, c.alpha, 'discard-node-self');
  });
});

describe.skipIf(missing.length > 0)('split brain, one node Primary at reconnect (after-sb-1pri)', () => {
  it('discard-secondary: the Secondary loses, though it changed more', async () => {
    const c = await cluster('after-sb-1pri discard-secondary;');
    const r = await splitAndReconnect(c, { alphaPrimary: false, betaPrimary: true, ...ALPHA_MORE });
    await expectResolved(c, r, c.alpha, 'discard-secondary-self');
    expect((await status(c.beta)).role).toBe('Primary');
  });

  it('consensus: the 0pri policy picks the Secondary, so the Secondary loses', async () => {
    const c = await cluster('after-sb-0pri discard-least-changes; after-sb-1pri consensus;');
    const r = await splitAndReconnect(c, { alphaPrimary: false, betaPrimary: true, ...ALPHA_FEWER });
    await expectResolved(c, r, c.alpha, 'consensus:least-changes-self');
  });

  it('consensus: the 0pri policy would discard the Primary, so nothing is discarded', async () => {
    const c = await cluster('after-sb-0pri discard-least-changes; after-sb-1pri consensus;');
    const r = await splitAndReconnect(c, { alphaPrimary: false, betaPrimary: true, ...ALPHA_MORE });
    await expectUnresolved(c, r, 'no-consensus:least-changes-peer');
    expect((await status(c.beta)).role).toBe('Primary');
  });
});

describe.skipIf(missing.length > 0)('split brain, both Primary at reconnect (after-sb-2pri)', () => {
  it('disconnect: nothing is discarded; the operator demotes one side and discards its data', async () => {
    const c = await cluster('after-sb-0pri discard-least-changes; after-sb-1pri discard-secondary; after-sb-2pri disconnect;');
    const r = await splitAndReconnect(c, { alphaPrimary: true, betaPrimary: true, ...ALPHA_FEWER });
    await expectUnresolved(c, r, 'disconnect');
    // --discard-my-data on a Primary is refused: demote first
    const refused = await c.alpha.cli('connect', 'r0', '--discard-my-data');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/\[ERR_ROLE\]/);
    await recoverManually(c, r, c.alpha);
    // the survivor served throughout and replicates to the recovered node again
    expect((await status(c.beta)).role).toBe('Primary');
    await qemuIo(c.beta, ['write -P 0x5a 8192 4096']);
    await waitFor(c.beta, (s) => s.peers[0]?.outOfSyncBytes === 0);
    const a = await dataArea(c.alpha.diskPath, r.sizeBytes);
    expect(a.subarray(8192, 8192 + 4096).every((x) => x === 0x5a)).toBe(true);
  });
});
