/**
 * One fault run, start to verdict. A fresh cluster (two data nodes and a
 * witness, each in its own namespace); alpha Primary; `mirrorbd check
 * write` inside alpha's namespace (so that cutting alpha off the network
 * does not cut its client off too) keeps stamped writes in flight and logs
 * every acknowledgement; the plan's fault strikes; the cluster recovers as
 * an administrator would have it (healed links, restarted nodes, and a
 * promotion where the role manager leaves none); the Primary of the end
 * takes more writes; every node catches up. Then the verdict:
 *
 * - `mirrorbd check verify` against the Primary of the end: every write
 *   the server acknowledged is there (or superseded by a later one), no
 *   block is torn or foreign (with every node crashed: every write made
 *   durable by an acknowledged FLUSH);
 * - exactly one Primary (G4);
 * - `mirrorbd check compare --data-area` of the two data disks: identical.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { createNetns, run, type ManagedProcess, type NetnsHarness } from '../helpers/netns.js';
import { cliPath, mustSucceed } from '../helpers/single-node.js';
import { FaultCluster, type FaultNode, type FaultNodeName, type NodeStatus } from './cluster.js';
import type { FaultPlan } from './plan.js';

const MiB = 1024 * 1024;
const DISK_BYTES = 32 * MiB;
/** The checker writes to this many 4 KiB blocks (16 MiB): blocks are rewritten often. */
const CHECK_BLOCKS = 4096;
/** Bounds for a cluster on two shared cores. */
const FAILOVER_BOUND_MS = 30_000;
const SETTLE_BOUND_MS = 90_000;
const WRITER_EXIT_BOUND_MS = 45_000;
const WRITER_START_BOUND_MS = 15_000;

export interface FaultRunReport {
  seed: number;
  kind: string;
  ok: boolean;
  /** Acknowledged (or, after a crash of every node, durable) writes whose survival was checked. */
  checkedWrites: number;
  writesAcked: number;
  lost: number;
  torn: number;
  foreign: number;
  replicasIdentical: boolean;
  primaryAtEnd: string;
  durationMs: number;
  /** Why the run failed (a violation, or the cluster never recovered). */
  problem: string | null;
}

interface VerifyJson {
  ok: boolean;
  checkedWrites: number;
  counts: Record<string, number>;
  violations: Array<{ kind: string; block: number; detail: string }>;
  log: { writesAcked: number };
}

interface CompareJson {
  ok: boolean;
  differingBlocks: number;
  firstDifferences: number[];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The other data node. */
function other(name: FaultNodeName): FaultNodeName {
  return name === 'alpha' ? 'beta' : 'alpha';
}

/**
 * Runs `plan` on a cluster of its own and returns the verdict; throws only
 * when the run could not be carried out at all (the harness failed). The
 * namespaces and daemons are gone when it returns, also on failure; with
 * MIRRORBD_KEEP_TEST_DIRS=1 the disks, logs and ack log stay.
 */
export async function runFault(plan: FaultPlan): Promise<FaultRunReport> {
  const started = Date.now();
  const h = await createNetns({ nodes: 3 });
  let c: FaultCluster | null = null;
  const report: FaultRunReport = {
    seed: plan.seed,
    kind: plan.kind,
    ok: false,
    checkedWrites: 0,
    writesAcked: 0,
    lost: 0,
    torn: 0,
    foreign: 0,
    replicasIdentical: false,
    primaryAtEnd: '',
    durationMs: 0,
    problem: null,
  };
  try {
    c = await FaultCluster.create(h, DISK_BYTES);
    await new FaultRun(h, c, plan, report).carryOut();
  } catch (e) {
    report.problem = `${(e as Error).message}${c ? `\n${await c.logs()}` : ''}`;
  } finally {
    await c?.stop();
    await h.destroy();
    report.durationMs = Date.now() - started;
  }
  report.ok = report.problem === null;
  return report;
}

class FaultRun {
  private readonly logPath: string;
  private writers = 0;

  constructor(
    private readonly h: NetnsHarness,
    private readonly c: FaultCluster,
    private readonly plan: FaultPlan,
    private readonly report: FaultRunReport,
  ) {
    this.logPath = path.join(c.dir, 'check.log');
  }

  async carryOut(): Promise<void> {
    const { c, plan } = this;
    await this.bringUp();
    const writer = this.startWriter(c.alpha, false);
    // The fault strikes a running workload: only once the checker has its
    // first acknowledgement does the plan's time before the fault start.
    await this.firstAck(writer);
    await sleep(plan.beforeMs);
    const crashedAll = await this.strike(writer);
    await this.stopWriter(writer);
    const primary = await this.settle(crashedAll);
    // The Primary of the end takes writes of its own; the other node must get them too.
    const after = this.startWriter(c.node(primary), true, plan.afterMs);
    await this.waitWriter(after);
    const end = await this.settle(false);
    this.report.primaryAtEnd = end;
    await this.verdict(c.node(end), crashedAll);
  }

  /** create-md, every daemon up, a data generation without an initial sync (fresh disks), alpha Primary. */
  private async bringUp(): Promise<void> {
    const { c, plan } = this;
    for (const n of [c.alpha, c.beta]) await mustSucceed(n.cli('create-md', 'r0'));
    const faulty = this.faultyNode();
    for (const n of c.nodes) await c.start(n.name, n.name === faulty ? { op: 'write', afterCalls: plan.diskFaultAfterCalls, errno: plan.kind === 'full-disk' ? 'ENOSPC' : 'EIO' } : undefined);
    for (const n of c.nodes) {
      await c.waitFor(n.name, (s) => s.peers.every((p) => p.connection === 'Connected'), 30_000, 'every peer connected');
    }
    await mustSucceed(c.alpha.cli('new-current-uuid', 'r0', '--clear-bitmap'));
    await c.waitFor('beta', (s) => s.disk === 'UpToDate', 30_000, 'UpToDate after new-current-uuid --clear-bitmap');
    await mustSucceed(c.alpha.cli('primary', 'r0'));
  }

  /** The data node whose disk fails in this plan, if any. */
  private faultyNode(): FaultNodeName | null {
    switch (this.plan.kind) {
      case 'disk-error-primary':
        return 'alpha';
      case 'disk-error-secondary':
        return 'beta';
      case 'full-disk':
        return this.plan.seed % 2 === 0 ? 'alpha' : 'beta';
      default:
        return null;
    }
  }

  /** The fault, and what undoes it. Returns whether every node crashed. */
  private async strike(writer: ManagedProcess): Promise<boolean> {
    const { c, h, plan } = this;
    switch (plan.kind) {
      case 'kill-primary':
        await c.kill('alpha');
        await this.waitPrimary('beta');
        await sleep(plan.holdMs);
        await c.start('alpha');
        return false;
      case 'kill-secondary':
        await c.kill('beta');
        await sleep(plan.holdMs);
        await c.start('beta');
        // resync while the writer goes on
        await sleep(plan.holdMs / 2);
        return false;
      case 'kill-witness':
        await c.kill('witness');
        await sleep(plan.holdMs);
        await c.start('witness');
        await sleep(plan.holdMs / 2);
        return false;
      case 'kill-all':
        await Promise.all([c.kill('alpha'), c.kill('beta'), c.kill('witness')]);
        await writer.exited;
        for (const n of c.nodes) await c.start(n.name);
        return true;
      case 'partition-primary':
        await h.partition(c.alpha.index);
        await this.waitPrimary('beta');
        await sleep(plan.holdMs);
        await h.heal(c.alpha.index);
        return false;
      case 'partition-secondary':
        await h.partition(c.beta.index);
        await sleep(plan.holdMs);
        await h.heal(c.beta.index);
        await sleep(plan.holdMs / 2);
        return false;
      case 'one-way': {
        const [from, to] = plan.oneWay === 'primary-to-secondary' ? [c.alpha, c.beta] : [c.beta, c.alpha];
        await h.dropOneWay(from.index, to.index);
        await sleep(plan.holdMs);
        await h.restoreOneWay(from.index, to.index);
        await sleep(plan.holdMs / 2);
        return false;
      }
      case 'flapping': {
        const target = plan.seed % 2 === 0 ? c.alpha : c.beta;
        for (let i = 0; i < plan.flapCycles; i++) {
          await h.partition(target.index);
          await sleep(plan.flapHalfMs);
          await h.heal(target.index);
          await sleep(plan.flapHalfMs);
        }
        return false;
      }
      case 'slow-link':
        await h.setRate(c.alpha.index, plan.slowRateKbit);
        await sleep(plan.holdMs);
        await h.clearLink(c.alpha.index);
        await sleep(plan.holdMs / 2);
        return false;
      case 'disk-error-primary':
      case 'disk-error-secondary':
      case 'full-disk': {
        // The disk fails on its own after so many calls; then the node
        // runs without it (on-io-error detach). The administrator
        // replaces it: here, the node restarts with a good disk.
        const faulty = this.faultyNode()!;
        await sleep(plan.holdMs);
        await c.kill(faulty);
        if (faulty === 'alpha') await this.waitPrimary('beta');
        await c.start(faulty);
        return false;
      }
      case 'restart-during-resync': {
        // beta misses writes, returns, and dies while it catches up
        await h.partition(c.beta.index);
        await sleep(plan.holdMs);
        await h.heal(c.beta.index);
        await c
          .waitFor('beta', (s) => s.peers.some((p) => p.node === 'alpha' && p.replication.startsWith('Sync')), 20_000, 'SyncTarget of alpha')
          .catch(() => undefined); // a short resync may be over already: the kill then hits a node in sync
        await c.kill('beta');
        await sleep(plan.holdMs / 2);
        await c.start('beta');
        return false;
      }
    }
  }

  /** Until `name` is Primary (the role manager promotes it by itself). */
  private async waitPrimary(name: FaultNodeName): Promise<void> {
    await this.c.waitFor(name, (s) => s.role === 'Primary', FAILOVER_BOUND_MS, 'Primary after the failover');
  }

  /**
   * Until every node runs, is connected, exactly one data node is Primary
   * and the other is UpToDate and in sync with it. Where nobody was
   * promoted (every node crashed), the administrator promotes the node with
   * UpToDate data, alpha first. Returns the Primary.
   */
  private async settle(crashedAll: boolean): Promise<FaultNodeName> {
    const { c } = this;
    const deadline = Date.now() + SETTLE_BOUND_MS;
    for (const n of c.nodes) {
      await c.waitFor(n.name, (s) => s.peers.every((p) => p.connection === 'Connected'), SETTLE_BOUND_MS, 'every peer connected');
    }
    let primaries = await c.primaries();
    if (primaries.length === 0) {
      if (!crashedAll) throw new Error('no Primary after the fault, though a node with quorum and good data was left');
      const choice = (await this.upToDate('alpha')) ? 'alpha' : 'beta';
      await mustSucceed(c.node(choice).cli('primary', 'r0'));
      primaries = await c.primaries();
    }
    if (primaries.length !== 1) throw new Error(`G4: ${primaries.length} Primaries (${primaries.join(', ')})`);
    const p = primaries[0]!;
    const q = other(p);
    await c.waitFor(
      q,
      (s) => s.disk === 'UpToDate' && s.peers.some((x) => x.node === p && x.replication === 'Established' && x.outOfSyncBytes === 0),
      Math.max(1000, deadline - Date.now()),
      `UpToDate and in sync with ${p}`,
    );
    await c.waitFor(
      p,
      (s) => s.role === 'Primary' && s.peers.some((x) => x.node === q && x.peerDisk === 'UpToDate' && x.replication === 'Established' && x.outOfSyncBytes === 0),
      Math.max(1000, deadline - Date.now()),
      `Primary with ${q} in sync`,
    );
    return p;
  }

  private async upToDate(name: FaultNodeName): Promise<boolean> {
    const s: NodeStatus = await this.c.status(name);
    return s.disk === 'UpToDate';
  }

  /** `mirrorbd check write` against `n`, inside n's namespace; runs until stopped or `forMs`. */
  private startWriter(n: FaultNode, append: boolean, forMs?: number): ManagedProcess {
    this.writers++;
    const args = [cliPath, 'check', 'write', n.uri, '--log', this.logPath, '--queue-depth', String(this.plan.queueDepth), '--json'];
    if (append) args.push('--append');
    else args.push('--blocks', String(CHECK_BLOCKS), '--seed', String(this.plan.seed));
    if (forMs !== undefined) args.push('--seconds', String(forMs / 1000));
    return this.h.spawn(n.index, process.execPath, args, { logFile: path.join(this.c.dir, `writer-${this.writers}.out`) });
  }

  /** Until the ack log holds an acknowledgement (the checker connected and wrote). */
  private async firstAck(w: ManagedProcess): Promise<void> {
    const deadline = Date.now() + WRITER_START_BOUND_MS;
    while (Date.now() < deadline) {
      const text = await fsp.readFile(this.logPath, 'utf8').catch(() => '');
      if (text.includes('{"t":"ack"')) return;
      if (!w.alive()) throw new Error(`check write ended before its first acknowledgement: ${await this.writerOutput()}`);
      await sleep(50);
    }
    throw new Error(`check write got no acknowledgement within ${WRITER_START_BOUND_MS} ms: ${await this.writerOutput()}`);
  }

  /** SIGTERM: the checker stops sending, waits a bounded time for what is in flight, and logs how it ended. */
  private async stopWriter(w: ManagedProcess): Promise<void> {
    if (w.alive()) await this.h.stop(w.pid, 'SIGTERM', WRITER_EXIT_BOUND_MS);
  }

  private async waitWriter(w: ManagedProcess): Promise<void> {
    const code = await Promise.race([w.exited, sleep(WRITER_EXIT_BOUND_MS + 30_000).then(() => 'late' as const)]);
    if (code === 'late') throw new Error('the checker did not end on its own');
    if (code !== 0) throw new Error(`check write exited with ${code}: ${await this.writerOutput()}`);
  }

  private async writerOutput(): Promise<string> {
    const out: string[] = [];
    for (let i = 1; i <= this.writers; i++) out.push(await fsp.readFile(path.join(this.c.dir, `writer-${i}.out`), 'utf8').catch(() => ''));
    return out.join('\n');
  }

  private async verdict(primary: FaultNode, crashedAll: boolean): Promise<void> {
    const { c, report } = this;
    const v = await run(process.execPath, [cliPath, 'check', 'verify', primary.uri, '--log', this.logPath, '--json', ...(crashedAll ? ['--crash'] : [])], { timeoutMs: 120_000 });
    if (v.code === 2 || !v.stdout.trim()) throw new Error(`check verify could not run (exit ${v.code}): ${v.stderr.trim()}`);
    const vr = JSON.parse(v.stdout) as VerifyJson;
    report.checkedWrites = vr.checkedWrites;
    report.writesAcked = vr.log.writesAcked;
    report.lost = vr.counts.lost ?? 0;
    report.torn = vr.counts.torn ?? 0;
    report.foreign = vr.counts.foreign ?? 0;
    const cmp = await run(process.execPath, [cliPath, 'check', 'compare', c.alpha.diskPath!, c.beta.diskPath!, '--data-area', '--json'], { timeoutMs: 120_000 });
    if (cmp.code === 2 || !cmp.stdout.trim()) throw new Error(`check compare could not run (exit ${cmp.code}): ${cmp.stderr.trim()}`);
    const cr = JSON.parse(cmp.stdout) as CompareJson;
    report.replicasIdentical = cr.ok;
    const problems: string[] = [];
    if (!vr.ok) problems.push(`check verify on ${primary.name}: ${vr.violations.slice(0, 5).map((x) => `${x.kind} block ${x.block}: ${x.detail}`).join('; ')}`);
    if (!cr.ok) problems.push(`replicas differ in ${cr.differingBlocks} blocks (first at ${cr.firstDifferences.slice(0, 5).join(', ')})`);
    if (problems.length > 0) throw new Error(`${problems.join('\n')}\n--- checker output\n${await this.writerOutput()}`);
  }
}
