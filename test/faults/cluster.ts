/**
 * The cluster every fault run uses: two data nodes and a witness of one
 * resource, each in its own network namespace of a harness the run creates
 * and removes: alpha (node-id 0) and beta (node-id 1) with a disk and an NBD
 * listener, witness (node-id 2) with `disk none;`. Quorum is a majority of
 * the three and a lost Primary is replaced by the survivor on its own
 * (`auto-promote yes`), as an administrator following docs/ha.md would run
 * it.
 *
 * Daemons run in the foreground inside their namespaces (the harness owns
 * their pids), so a fault can cut a node off or kill it as a power cut
 * would. A daemon can be started with `MIRRORBD_TEST_FAULTS` for its disk:
 * it then fails I/O like a dying disk (docs/storage.md). The CLI runs from
 * the host and reaches the daemons through their control sockets.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { daemonPaths } from '../../src/daemon/run-dir.js';
import type { FaultRule } from '../../native-free-io/faulty-io.js';
import type { ManagedProcess, NetnsHarness } from '../helpers/netns.js';
import { cliPath, mustSucceed, runCli, type CliResult } from '../helpers/single-node.js';

export const FAULT_NODE_NAMES = ['alpha', 'beta', 'witness'] as const;
export type FaultNodeName = (typeof FAULT_NODE_NAMES)[number];

/** Failure detection within about two seconds, as docs/ha.md recommends for fast failover. */
export const FAULT_NET = 'ping-int 1; ping-timeout 0.5; connect-int 1; timeout 1;';
export const FAULT_OPTIONS = 'quorum majority; on-no-quorum suspend-io; auto-promote yes;';
export const NBD_PORT = 10809;
export const PEER_PORT = 7789;

export interface FaultNode {
  name: FaultNodeName;
  nodeId: number;
  /** The harness index of its namespace (= node-id). */
  index: number;
  /** Null for the witness. */
  diskPath: string | null;
  runDir: string;
  address: string;
  /** nbd://ADDRESS:10809/r0; '' for the witness. */
  uri: string;
  cli(...args: string[]): Promise<CliResult>;
}

export interface NodeStatus {
  role: string;
  disk: string;
  quorum: { have: boolean };
  suspended: string[];
  peers: Array<{ node: string; connection: string; replication: string; peerDisk: string; outOfSyncBytes: number | null; role: string }>;
}

export class FaultCluster {
  readonly nodes: FaultNode[];
  private readonly daemons = new Map<FaultNodeName, ManagedProcess>();

  private constructor(
    readonly h: NetnsHarness,
    readonly dir: string,
    readonly configFile: string,
    nodes: FaultNode[],
  ) {
    this.nodes = nodes;
  }

  static async create(h: NetnsHarness, diskSizeBytes: number): Promise<FaultCluster> {
    if (h.nodes.length !== FAULT_NODE_NAMES.length) throw new Error(`the fault cluster needs a harness of ${FAULT_NODE_NAMES.length} nodes`);
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-fault-'));
    const configFile = path.join(dir, 'mirrorbd.conf');
    const nodes: FaultNode[] = [];
    for (const [i, name] of FAULT_NODE_NAMES.entries()) {
      const address = h.nodes[i]!.address;
      const diskPath = name === 'witness' ? null : path.join(dir, `${name}.img`);
      if (diskPath !== null) {
        await fsp.writeFile(diskPath, '');
        await fsp.truncate(diskPath, diskSizeBytes);
      }
      nodes.push({
        name,
        nodeId: i,
        index: i,
        diskPath,
        runDir: path.join(dir, `run-${name}`),
        address,
        uri: diskPath === null ? '' : `nbd://${address}:${NBD_PORT}/r0`,
        cli: (...args) => runCli(configFile, name, args),
      });
    }
    const on = (n: FaultNode): string =>
      n.diskPath === null
        ? `  on ${n.name} { node-id ${n.nodeId}; disk none; address ${n.address}:${PEER_PORT}; }`
        : `  on ${n.name} { node-id ${n.nodeId}; disk ${n.diskPath}; address ${n.address}:${PEER_PORT}; nbd-address ${n.address}:${NBD_PORT}; }`;
    await fsp.writeFile(
      configFile,
      [
        `global { run-dir ${path.join(dir, 'run-%n')}; }`,
        'resource r0 {',
        '  meta-disk internal;',
        `  net { ${FAULT_NET} }`,
        `  options { ${FAULT_OPTIONS} }`,
        ...nodes.map(on),
        '}',
        '',
      ].join('\n'),
    );
    return new FaultCluster(h, dir, configFile, nodes);
  }

  node(name: FaultNodeName): FaultNode {
    return this.nodes.find((n) => n.name === name)!;
  }

  get alpha(): FaultNode {
    return this.node('alpha');
  }

  get beta(): FaultNode {
    return this.node('beta');
  }

  get witness(): FaultNode {
    return this.node('witness');
  }

  /** Whether the node's daemon runs. */
  running(name: FaultNodeName): boolean {
    return this.daemons.get(name)?.alive() ?? false;
  }

  /** Start the node's daemon (with its disk failing per `fault`, if given) and `up r0`. */
  async start(name: FaultNodeName, fault?: FaultRule): Promise<void> {
    const n = this.node(name);
    if (!this.running(name)) {
      // A daemon killed with -9 leaves its pid file; the next start must not take it for a live one.
      await fsp.rm(daemonPaths(n.runDir, n.name).pid, { force: true });
      const env = fault && n.diskPath !== null ? { MIRRORBD_TEST_FAULTS: JSON.stringify({ [n.diskPath]: fault }) } : undefined;
      this.daemons.set(name, await this.h.startMirrorbd(n.index, { cliPath, configFile: this.configFile, nodeName: name, runDir: n.runDir, env }));
    }
    await mustSucceed(n.cli('up', 'r0'));
  }

  /** kill -9 of the node's daemon, as a power cut would; waits until it is gone. */
  async kill(name: FaultNodeName): Promise<void> {
    const p = this.daemons.get(name);
    if (!p) throw new Error(`${name} has no daemon of ours`);
    await this.h.stop(p.pid, 'SIGKILL');
    this.daemons.delete(name);
  }

  async status(name: FaultNodeName): Promise<NodeStatus> {
    const r = await mustSucceed(this.node(name).cli('status', 'r0', '--json'));
    return (JSON.parse(r.stdout) as NodeStatus[])[0]!;
  }

  /** Poll the node's status until `check` passes; fails with the last status. */
  async waitFor(name: FaultNodeName, check: (s: NodeStatus) => boolean, timeoutMs: number, what: string): Promise<NodeStatus> {
    const deadline = Date.now() + timeoutMs;
    let last: NodeStatus | string | null = null;
    while (Date.now() < deadline) {
      if (this.running(name)) {
        const r = await this.node(name).cli('status', 'r0', '--json');
        if (r.code === 0) {
          const s = (JSON.parse(r.stdout) as NodeStatus[])[0]!;
          if (check(s)) return s;
          last = s;
        } else last = r.stderr.trim();
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`${name}: ${what} not reached within ${timeoutMs} ms; last status: ${JSON.stringify(last)}`);
  }

  /** The data nodes that run and say they are Primary. */
  async primaries(): Promise<FaultNodeName[]> {
    const out: FaultNodeName[] = [];
    for (const n of [this.alpha, this.beta]) {
      if (!this.running(n.name)) continue;
      const r = await n.cli('status', 'r0', '--json');
      if (r.code === 0 && (JSON.parse(r.stdout) as NodeStatus[])[0]!.role === 'Primary') out.push(n.name);
    }
    return out;
  }

  /** End every daemon (the harness ends anything left) and remove the files unless kept. */
  async stop(): Promise<void> {
    for (const [name, p] of [...this.daemons]) {
      await this.h.stop(p.pid).catch(() => undefined);
      this.daemons.delete(name);
    }
    if (process.env.MIRRORBD_KEEP_TEST_DIRS === '1') console.error(`kept ${this.dir}`);
    else await fsp.rm(this.dir, { recursive: true, force: true });
  }

  /** The last lines of every node's daemon log, for a failed run's report. */
  async logs(lastLines = 30): Promise<string> {
    const out: string[] = [];
    for (const n of this.nodes) {
      const text = await fsp.readFile(path.join(n.runDir, `${n.name}.log`), 'utf8').catch(() => '');
      out.push(`--- ${n.name}`, ...text.trimEnd().split('\n').slice(-lastLines));
    }
    return out.join('\n');
  }
}
