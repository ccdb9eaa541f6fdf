/**
 * Two mirrorbd nodes (alpha, node-id 0, and beta, node-id 1) of one
 * resource on this machine, each with its own image, external metadata
 * file, run directory and daemon, replicating over loopback. The benchmark
 * drives them through the CLI, as an operator would, and follows their state
 * through `events --json`, so waiting for a state costs no polling.
 *
 * Every daemon is stopped by `down` and then by SIGTERM to the PID in its
 * run directory; every process started here is registered for cleanup.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, open, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import {
  errorMessage,
  isAlive,
  lastLines,
  onCleanup,
  readPidFile,
  run,
  runChecked,
  terminatePid,
  waitForPort,
  waitForUnixSocket,
} from './proc.js';
import { BENCH_HOST, MIRRORBD_CLI } from './servers.js';

export const RESOURCE = 'r0';
export const NODES = ['alpha', 'beta'] as const;
export type NodeName = (typeof NODES)[number];
export type Protocol = 'A' | 'B' | 'C';

/** External metadata file per node: plenty for a 1 GiB bitmap and the activity log. */
const META_BYTES = 4 * 1024 * 1024;
const CLI_TIMEOUT_MS = 60_000;
const START_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 15_000;
/**
 * The largest resync-rate the config accepts (1..1024G): the rate limit
 * does not cap a resync on loopback.
 */
export const RESYNC_RATE = '1024G';

export interface NodeSpec {
  image: string;
  meta: string;
  replPort: number;
  nbdPort: number;
}

export interface ClusterSpec {
  /** Directory for the config and the run directories. */
  dir: string;
  protocol: Protocol;
  nodes: Record<NodeName, NodeSpec>;
  /** When set, the daemons of `profileNodes` run under `node --cpu-prof` into this directory. */
  profileDir?: string;
  /** Whose daemon is profiled (default: alpha only). */
  profileNodes?: readonly NodeName[];
  /** The mirrorbd CLI to run (default: this checkout's build; another checkout's for an A/B). */
  cli?: string;
}

export function clusterConfig(spec: ClusterSpec): string {
  const on = (name: NodeName, id: number): string => {
    const n = spec.nodes[name];
    return `  on ${name} { node-id ${id}; disk ${n.image}; meta-disk ${n.meta}; address ${BENCH_HOST}:${n.replPort}; nbd-address ${BENCH_HOST}:${n.nbdPort}; }`;
  };
  return [
    `global { run-dir ${join(spec.dir, 'run-%n')}; }`,
    `resource ${RESOURCE} {`,
    // connect-int 1: a node whose first dial found its peer not yet listening retries within a second.
    `  net { protocol ${spec.protocol}; connect-int 1; }`,
    `  disk { resync-rate ${RESYNC_RATE}; }`,
    on('alpha', 0),
    on('beta', 1),
    `}`,
    '',
  ].join('\n');
}

/** One event of `mirrorbd events --json`. */
export interface MirrorEvent {
  type: string;
  seq: number;
  timeMs: number;
  [key: string]: unknown;
}

/** A running `events RES --json` process: collects every event it prints. */
export class EventWatcher {
  readonly events: MirrorEvent[] = [];
  private waiters: Array<() => void> = [];
  private ended = false;

  private constructor(
    private readonly child: ChildProcess,
    private readonly unregister: () => void,
  ) {}

  static async start(conf: string, node: NodeName, cli = MIRRORBD_CLI): Promise<EventWatcher> {
    const child = spawn(process.execPath, [cli, '-c', conf, '--node', node, 'events', RESOURCE, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    const pid = child.pid;
    const unregister = onCleanup(`events ${node}`, async () => {
      if (pid !== undefined && child.exitCode === null && child.signalCode === null) await terminatePid(pid, 3000);
    });
    const w = new EventWatcher(child, unregister);
    child.stderr?.resume();
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      try {
        const ev = JSON.parse(line) as MirrorEvent;
        if (typeof ev === 'object' && ev !== null && typeof ev.type === 'string') w.events.push(ev);
      } catch {
        return;
      }
      w.wake();
    });
    child.once('exit', () => {
      w.ended = true;
      w.wake();
    });
    // The subscription is live once the CLI has connected; give it a moment.
    await new Promise((r) => setTimeout(r, 300));
    return w;
  }

  private wake(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const f of ws) f();
  }

  /** The first event (from index `from` on) that matches, waiting up to timeoutMs. */
  async waitFor(pred: (e: MirrorEvent) => boolean, timeoutMs: number, what: string, from = 0): Promise<MirrorEvent> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.events.slice(from).find(pred);
      if (hit) return hit;
      if (this.ended) throw new Error(`events stream ended before ${what}`);
      const left = until - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 1000));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async stop(): Promise<void> {
    this.unregister();
    const pid = this.child.pid;
    if (pid !== undefined && this.child.exitCode === null && this.child.signalCode === null) await terminatePid(pid, 3000);
  }
}

/** The part of `status --json` this benchmark reads. */
export interface PeerStatusJson {
  node: string;
  connection: string;
  replication: string;
  peerDisk: string;
  outOfSyncBytes: number | null;
  resync: { doneBytes: number; totalBytes: number; bytesPerSec: number; etaSec: number | null } | null;
  bytesSent: number;
  bytesReceived: number;
}

export interface StatusJson {
  role: string;
  disk: string;
  peers: PeerStatusJson[];
}

export class Cluster {
  readonly conf: string;
  /** Daemon PIDs, known once each is up. */
  readonly pids: Partial<Record<NodeName, number>> = {};
  private readonly unregister: () => void;
  private stopped = false;

  private constructor(readonly spec: ClusterSpec) {
    this.conf = join(spec.dir, 'mirrorbd.conf');
    this.unregister = onCleanup(`mirrorbd cluster ${spec.dir}`, () => this.stop());
  }

  /**
   * Writes the config and fresh metadata (`create-md --force`) on both
   * nodes and brings both up; returns once they are Connected. Both disks
   * are then Inconsistent with the "just created" UUIDs.
   */
  static async create(spec: ClusterSpec): Promise<Cluster> {
    const c = new Cluster(spec);
    try {
      await c.setUp();
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  private async setUp(): Promise<void> {
    await mkdir(this.spec.dir, { recursive: true });
    await writeFile(this.conf, clusterConfig(this.spec));
    for (const node of NODES) {
      const n = this.spec.nodes[node];
      await writeFile(n.meta, '', { flag: 'a' });
      await truncate(n.meta, META_BYTES);
      await mkdir(this.runDir(node), { recursive: true });
      await rm(this.pidFile(node), { force: true });
      await this.cli(node, ['create-md', RESOURCE, '--force']);
    }
    if (this.spec.profileDir) {
      for (const node of this.spec.profileNodes ?? ['alpha']) this.pids[node] = await this.startProfiledDaemon(node, this.spec.profileDir);
    }
    for (const node of NODES) {
      await this.cli(node, ['up', RESOURCE]);
      this.pids[node] ??= await readPidFile(this.pidFile(node), START_TIMEOUT_MS);
    }
    await this.waitStatus('alpha', (s) => s.peers[0]?.connection === 'Connected', START_TIMEOUT_MS, 'alpha Connected');
  }

  /** The CLI this pair runs (and its daemons with it). */
  get cliPath(): string {
    return this.spec.cli ?? MIRRORBD_CLI;
  }

  runDir(node: NodeName): string {
    return join(this.spec.dir, `run-${node}`);
  }

  private pidFile(node: NodeName): string {
    return join(this.runDir(node), `${node}.pid`);
  }

  nbdUri(node: NodeName): string {
    return `nbd://${BENCH_HOST}:${this.spec.nodes[node].nbdPort}/${RESOURCE}`;
  }

  cli(node: NodeName, args: string[]): Promise<{ stdout: string }> {
    return runChecked(process.execPath, [this.cliPath, '-c', this.conf, '--node', node, ...args], { timeoutMs: CLI_TIMEOUT_MS });
  }

  async status(node: NodeName): Promise<StatusJson> {
    const r = await this.cli(node, ['status', RESOURCE, '--json']);
    const arr = JSON.parse(r.stdout) as StatusJson[];
    const s = arr[0];
    if (!s) throw new Error(`status ${node}: no resource in the answer`);
    return s;
  }

  /** Polls `status --json` (every 200 ms) until pred holds. */
  async waitStatus(node: NodeName, pred: (s: StatusJson) => boolean, timeoutMs: number, what: string): Promise<StatusJson> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.status(node);
      if (pred(s)) return s;
      if (Date.now() > until) throw new Error(`${what}: not reached within ${timeoutMs} ms (last status: ${JSON.stringify(s)})`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /**
   * Skips the initial sync of two fresh disks (`new-current-uuid
   * --clear-bitmap` on alpha), waits until both see each other UpToDate,
   * promotes alpha and waits for its NBD port.
   */
  async skipSyncAndPromote(): Promise<void> {
    await this.cli('alpha', ['new-current-uuid', RESOURCE, '--clear-bitmap']);
    const upToDate = (s: StatusJson): boolean =>
      s.disk === 'UpToDate' && s.peers[0]?.peerDisk === 'UpToDate' && s.peers[0]?.replication === 'Established';
    await this.waitStatus('alpha', upToDate, START_TIMEOUT_MS, 'alpha and beta UpToDate');
    await this.waitStatus('beta', (s) => s.disk === 'UpToDate', START_TIMEOUT_MS, 'beta UpToDate');
    await this.cli('alpha', ['primary', RESOURCE]);
    await this.waitNbd();
  }

  async waitNbd(): Promise<void> {
    const pid = this.pids.alpha;
    await waitForPort(BENCH_HOST, this.spec.nodes.alpha.nbdPort, START_TIMEOUT_MS, pid === undefined ? undefined : () => isAlive(pid));
  }

  /** `down` on both nodes, then SIGTERM (SIGKILL after a grace) to each daemon's PID. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.unregister();
    for (const node of NODES) {
      const down = await run(process.execPath, [this.cliPath, '-c', this.conf, '--node', node, 'down', RESOURCE], {
        timeoutMs: CLI_TIMEOUT_MS,
      }).catch((e: unknown) => ({ code: -1, stderr: errorMessage(e) }));
      if (down.code !== 0 && this.pids[node] !== undefined) {
        process.stderr.write(`mirrorbd ${node} down failed (exit ${down.code}): ${lastLines(down.stderr, 3)}\n`);
      }
    }
    for (const node of NODES) {
      const pid = this.pids[node] ?? (await readPidFile(this.pidFile(node), 500).catch(() => undefined));
      if (pid === undefined) continue;
      const how = await terminatePid(pid, STOP_GRACE_MS);
      if (how === 'killed') process.stderr.write(`mirrorbd ${node} daemon ${pid} ignored SIGTERM; killed\n`);
    }
  }

  /**
   * `node --cpu-prof ... daemon` in the foreground as our child (Node 20
   * does not take --cpu-prof from NODE_OPTIONS); `up` then finds it running.
   */
  private async startProfiledDaemon(node: NodeName, profileDir: string): Promise<number> {
    const log = await open(join(this.runDir(node), `${node}.log`), 'a');
    let child: ChildProcess;
    try {
      child = spawn(
        process.execPath,
        ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, this.cliPath, '-c', this.conf, '--node', node, 'daemon'],
        { stdio: ['ignore', log.fd, log.fd] },
      );
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
    } finally {
      await log.close();
    }
    const pid = child.pid;
    if (pid === undefined) throw new Error('profiled mirrorbd daemon: no PID');
    this.pids[node] = pid;
    await waitForUnixSocket(join(this.runDir(node), `${node}.sock`), START_TIMEOUT_MS, () => isAlive(pid));
    return pid;
  }
}
