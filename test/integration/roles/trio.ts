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
import os from 'node:os';
import path from 'node:path';
import { readPid } from '../../../src/daemon/run-dir.js';
import { cliPath, freePort, mustSucceed, runCli, stopProcess, type CliResult } from '../../helpers/single-node.js';

export const TRIO_NAMES = ['alpha', 'beta', 'witness'] as const;
export type TrioName = (typeof TRIO_NAMES)[number];

/**
 * Failure detection for failover within about a second: a silent peer is
 * pinged after 1 s idle and dropped 0.5 s later; a late reply or a dial
 * that hangs gives up after 1 s; a lost peer is redialed every second.
 * (ping-int and connect-int take whole seconds, 1 at least.)
 */
export const FAILOVER_NET = 'ping-int 1; ping-timeout 0.5; connect-int 1; timeout 1;';

export interface TrioNode {
  name: TrioName;
  nodeId: number;
  /** Null for the witness. */
  diskPath: string | null;
  runDir: string;
  /** 0 for the witness (no NBD listener). */
  nbdPort: number;
  peerPort: number;
  uri: string;
  cli(...args: string[]): Promise<CliResult>;
  daemonPid(): Promise<number | null>;
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
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-trio-'));
  const configFile = path.join(dir, 'mirrorbd.conf');
  const followers = new Set<EventLog>();
  const nodes: TrioNode[] = [];
  for (const [i, name] of TRIO_NAMES.entries()) {
    const runDir = path.join(dir, `run-${name}`);
    const witness = name === 'witness';
    const diskPath = witness ? null : path.join(dir, `${name}.img`);
    if (diskPath) {
      await fsp.writeFile(diskPath, '');
      await fsp.truncate(diskPath, opts.diskSizeBytes ?? 16 * 1024 * 1024);
    }
    const nbdPort = witness ? 0 : await freePort();
    const peerPort = await freePort();
    const pidFile = path.join(runDir, `${name}.pid`);
    const cli = (...args: string[]): Promise<CliResult> => runCli(configFile, name, args);
    const daemonPid = (): Promise<number | null> => readPid(pidFile);
    nodes.push({
      name,
      nodeId: i,
      diskPath,
      runDir,
      nbdPort,
      peerPort,
      uri: witness ? '' : `nbd://127.0.0.1:${nbdPort}/r0`,
      cli,
      daemonPid,
      up: async () => {
        await mustSucceed(cli('up', 'r0'));
      },
      killHard: async () => {
        const pid = await daemonPid();
        if (pid === null) throw new Error(`${name} has no daemon pid`);
        await killAndWait(pid);
      },
    });
  }
  const on = (n: TrioNode): string =>
    n.diskPath === null
      ? `  on ${n.name} { node-id ${n.nodeId}; disk none; address 127.0.0.1:${n.peerPort}; }`
      : `  on ${n.name} { node-id ${n.nodeId}; disk ${n.diskPath}; address 127.0.0.1:${n.peerPort}; nbd-address 127.0.0.1:${n.nbdPort}; }`;
  const lines = [
    // `%n`: each node its own run dir on this one machine.
    `global { run-dir ${path.join(dir, 'run-%n')}; }`,
    'resource r0 {',
    '  meta-disk internal;',
    `  net { ${FAILOVER_NET} ${opts.net ?? ''} }`,
    `  options { ${opts.options ?? ''} }`,
    ...nodes.map(on),
    '}',
    '',
  ];
  await fsp.writeFile(configFile, lines.join('\n'));
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
      for (const n of nodes) {
        const pid = await n.daemonPid();
        if (pid !== null) await stopProcess(pid);
      }
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
}

async function killAndWait(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`pid ${pid} survived SIGKILL`);
}

function followEvents(configFile: string, node: string): EventLog {
  const child: ChildProcess = spawn(process.execPath, [cliPath, '-c', configFile, '--node', node, 'events', 'r0', '--json'], {
    stdio: ['ignore', 'pipe', 'ignore'],
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
    ready: () => subscribed(child.pid),
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

/** The CLI holds a socket (Linux: /proc/PID/fd): it has connected to the control socket. */
async function subscribed(pid: number | undefined): Promise<void> {
  if (pid === undefined) throw new Error('the events follower did not start');
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const fds = await fsp.readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const target = await fsp.readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      if (target.startsWith('socket:')) {
        // it writes its subscription on connect; let the daemon read it
        await new Promise((r) => setTimeout(r, 500));
        return;
      }
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the events follower (pid ${pid}) never connected to the daemon`);
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

export async function statusOf(n: TrioNode): Promise<TrioStatus> {
  const r = await mustSucceed(n.cli('status', 'r0', '--json'));
  return (JSON.parse(r.stdout) as TrioStatus[])[0]!;
}

/** The status of `s`'s connection to the node named `peer`. */
export function peerOf(s: TrioStatus, peer: TrioName): TrioPeerStatus {
  const p = s.peers.find((x) => x.node === peer);
  if (!p) throw new Error(`${s.node} has no peer ${peer}: ${JSON.stringify(s.peers.map((x) => x.node))}`);
  return p;
}

/** Poll until `check` passes on the node's status, or fail with the last status. */
export async function waitForStatus(n: TrioNode, check: (s: TrioStatus) => boolean, timeoutMs = 30_000): Promise<TrioStatus> {
  const deadline = Date.now() + timeoutMs;
  let last: TrioStatus | null = null;
  while (Date.now() < deadline) {
    last = await statusOf(n);
    if (check(last)) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`status of ${n.name} never matched within ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
}

/** Every node sees every other node it should as Connected. */
export async function waitForAllConnected(nodes: readonly TrioNode[], timeoutMs = 30_000): Promise<void> {
  const names = nodes.map((n) => n.name);
  for (const n of nodes) {
    await waitForStatus(n, (s) => names.filter((x) => x !== n.name).every((p) => peerOf(s, p).connection === 'Connected'), timeoutMs);
  }
}

/** The daemon log of a node (its run dir), for a failure message. */
export async function daemonLog(n: TrioNode, lastLines = 40): Promise<string> {
  const files = await fsp.readdir(n.runDir).catch(() => [] as string[]);
  const out: string[] = [];
  for (const f of files.filter((x) => x.endsWith('.log'))) {
    const text = await fsp.readFile(path.join(n.runDir, f), 'utf8').catch(() => '');
    out.push(`--- ${n.name}/${f}`, ...text.trimEnd().split('\n').slice(-lastLines));
  }
  return out.join('\n');
}
