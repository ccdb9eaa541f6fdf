/**
 * Two data nodes and a witness of one resource on loopback: alpha (node-id
 * 0) and beta (node-id 1) with a disk and an NBD listener each, and witness
 * (node-id 2) with `disk none;`, which stores nothing, serves nothing and
 * breaks quorum ties. One config file, a run dir per node, one daemon per
 * node started by `up`. The CLI drives them as an administrator would;
 * `stop()` ends every daemon by the pid in its pid file (also after a
 * failed test) and removes the files.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import {
  cliStatus,
  killDaemon,
  makeNode,
  makeTestDir,
  pollStatus,
  removeTestDir,
  resourceConfig,
  stopDaemon,
  type ClusterNode,
} from '../../helpers/cluster-node.js';
import { cliPath, mustSucceed } from '../../helpers/single-node.js';

export { daemonLog } from '../../helpers/cluster-node.js';

export const TRIO_NAMES = ['alpha', 'beta', 'witness'] as const;
export type TrioName = (typeof TRIO_NAMES)[number];

/**
 * Failure detection for failover within about a second: a silent peer is
 * pinged after 1 s idle and dropped 0.5 s later; a late reply or a dial
 * that hangs gives up after 1 s; a lost peer is redialed every second.
 * (ping-int and connect-int take whole seconds, 1 at least.)
 */
export const FAILOVER_NET = 'ping-int 1; ping-timeout 0.5; connect-int 1; timeout 1;';

export interface TrioNode extends ClusterNode<TrioName> {
  /** `up r0` (starts the daemon when it is not running). */
  up(): Promise<void>;
  /** kill -9 of the daemon by its pid; waits until it is gone. */
  killHard(): Promise<void>;
}

export interface Trio {
  dir: string;
  configFile: string;
  alpha: TrioNode;
  beta: TrioNode;
  witness: TrioNode;
  nodes: TrioNode[];
  /** `mirrorbd events --json` of a node, collected until stop (or `trio.stop()`); resolves once it is subscribed. */
  followEvents(n: TrioNode): Promise<EventLog>;
  stop(): Promise<void>;
}

export interface TrioOptions {
  diskSizeBytes?: number;
  /** Lines inside `net { }`, after FAILOVER_NET. */
  net?: string;
  /** Lines inside `options { }`. */
  options?: string;
}

export interface TrioEvent {
  type: string;
  seq: number;
  [field: string]: unknown;
}

export interface EventLog {
  readonly events: TrioEvent[];
  /**
   * Resolves once the follower has connected to the daemon's control
   * socket (and a moment more for its subscription to be read): events
   * from then on are seen.
   */
  ready(): Promise<void>;
  /** Resolves with the first event (seen or to come) that matches, or rejects after timeoutMs. */
  waitFor(match: (e: TrioEvent) => boolean, timeoutMs?: number): Promise<TrioEvent>;
  stop(): Promise<void>;
}

export async function makeTrio(opts: TrioOptions = {}): Promise<Trio> {
  const dir = await makeTestDir('trio');
  const configFile = path.join(dir, 'mirrorbd.conf');
  const followers = new Set<EventLog>();
  const nodes: TrioNode[] = [];
  for (const [i, name] of TRIO_NAMES.entries()) {
    const node = await makeNode(dir, configFile, name, i, name === 'witness' ? null : (opts.diskSizeBytes ?? 16 * 1024 * 1024));
    nodes.push({
      ...node,
      up: async () => {
        await mustSucceed(node.cli('up', 'r0'));
      },
      killHard: () => killDaemon(node),
    });
  }
  const sections = [`net { ${FAILOVER_NET} ${opts.net ?? ''} }`, `options { ${opts.options ?? ''} }`];
  await fsp.writeFile(configFile, resourceConfig(dir, sections, nodes));
  return {
    dir,
    configFile,
    alpha: nodes[0]!,
    beta: nodes[1]!,
    witness: nodes[2]!,
    nodes,
    followEvents: async (n) => {
      const log = followEvents(configFile, n.name);
      followers.add(log);
      await log.ready();
      return log;
    },
    stop: async () => {
      for (const f of followers) await f.stop();
      for (const n of nodes) await stopDaemon(n);
      await removeTestDir(dir);
    },
  };
}

function followEvents(configFile: string, node: string): EventLog {
  const child: ChildProcess = spawn(process.execPath, [cliPath, '-c', configFile, '--node', node, 'events', 'r0', '--json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // The CLI says on stderr once the daemon has taken the subscription.
  let errText = '';
  const following = new Promise<void>((resolve) => {
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      errText += chunk;
      if (errText.includes('following events')) resolve();
    });
  });
  const events: TrioEvent[] = [];
  const waiters = new Set<{ match: (e: TrioEvent) => boolean; resolve: (e: TrioEvent) => void }>();
  let buffered = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk;
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line.trim() === '') continue;
      const e = JSON.parse(line) as TrioEvent;
      events.push(e);
      for (const w of waiters) {
        if (w.match(e)) {
          waiters.delete(w);
          w.resolve(e);
        }
      }
    }
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    events,
    ready: () => subscribed(child.pid, following),
    waitFor: (match, timeoutMs = 15_000) => {
      const seen = events.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = { match, resolve: (e: TrioEvent) => (clearTimeout(timer), resolve(e)) };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`no matching event from ${node} within ${timeoutMs} ms; saw ${JSON.stringify(events.map((e) => e.type))}`));
        }, timeoutMs);
        waiters.add(w);
      });
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
      }
    },
  };
}

/** The follower announced that the daemon took its subscription. */
async function subscribed(pid: number | undefined, following: Promise<void>): Promise<void> {
  if (pid === undefined) throw new Error('the events follower did not start');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the events follower (pid ${pid}) never subscribed`)), 15_000);
  });
  try {
    await Promise.race([following, late]);
  } finally {
    clearTimeout(timer);
  }
}

export interface TrioPeerStatus {
  node: string;
  nodeId: number;
  connection: string;
  replication: string;
  role: string;
  peerDisk: string;
  outOfSyncBytes: number | null;
  leftGracefully: boolean;
  diskless: boolean;
  lastError: string | null;
}

export interface TrioStatus {
  name: string;
  node: string;
  role: string;
  roleReason: string;
  disk: string;
  diskless: boolean;
  quorum: { have: boolean; votes: number; needed: number; voters: number; reason: string; setting: string; onNoQuorum: string };
  suspended: string[];
  promotion: { autoPromote: boolean; candidates: string[]; reason: string; failoverPending: boolean; lastFailoverChoice: string | null };
  sizeBytes: number;
  peers: TrioPeerStatus[];
  flags: string[];
}

export function statusOf(n: TrioNode): Promise<TrioStatus> {
  return cliStatus<TrioStatus>(n);
}

/** The status of `s`'s connection to the node named `peer`. */
export function peerOf(s: TrioStatus, peer: TrioName): TrioPeerStatus {
  const p = s.peers.find((x) => x.node === peer);
  if (!p) throw new Error(`${s.node} has no peer ${peer}: ${JSON.stringify(s.peers.map((x) => x.node))}`);
  return p;
}

/** Poll until `check` passes on the node's status, or fail with the last status. */
export function waitForStatus(n: TrioNode, check: (s: TrioStatus) => boolean, timeoutMs = 30_000): Promise<TrioStatus> {
  return pollStatus(n, () => statusOf(n), check, timeoutMs, 100);
}

/** Every node sees every other node it should as Connected. */
export async function waitForAllConnected(nodes: readonly TrioNode[], timeoutMs = 30_000): Promise<void> {
  const names = nodes.map((n) => n.name);
  for (const n of nodes) {
    await waitForStatus(n, (s) => names.filter((x) => x !== n.name).every((p) => peerOf(s, p).connection === 'Connected'), timeoutMs);
  }
}
