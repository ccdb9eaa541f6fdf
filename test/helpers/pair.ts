/**
 * Two real nodes of one resource on loopback, as two daemons: one config
 * file with `on alpha` and `on beta`, a disk file and a run dir each. The
 * CLI drives them exactly as an administrator would. `stop()` ends both
 * daemons by the pids in their pid files, also after a failed test.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, mustSucceed, runCli, stopProcess, type CliResult } from './single-node.js';
import { readPid } from '../../src/daemon/run-dir.js';

export const NODE_NAMES = ['alpha', 'beta'] as const;
export type NodeName = (typeof NODE_NAMES)[number];

export interface PairNode {
  name: NodeName;
  nodeId: number;
  diskPath: string;
  runDir: string;
  nbdPort: number;
  peerPort: number;
  uri: string;
  cli(...args: string[]): Promise<CliResult>;
  daemonPid(): Promise<number | null>;
}

export interface Pair {
  dir: string;
  configFile: string;
  alpha: PairNode;
  beta: PairNode;
  nodes: PairNode[];
  /** Rewrite the config with other `net { }` contents (takes effect at the next up). */
  writeConfig(netSection: string): Promise<void>;
  stop(): Promise<void>;
}

export interface PairOptions {
  diskSizeBytes?: number;
  /** Lines inside `net { }` (protocol, shared-secret, ...). */
  net?: string;
  /** Lines inside `disk { }`. */
  disk?: string;
}

export const FAST_NET = 'ping-int 1; ping-timeout 0.5; connect-int 1; timeout 2;';

export async function makePair(opts: PairOptions = {}): Promise<Pair> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-pair-'));
  const configFile = path.join(dir, 'mirrorbd.conf');
  const nodes: PairNode[] = [];
  for (const [i, name] of NODE_NAMES.entries()) {
    const runDir = path.join(dir, `run-${name}`);
    const diskPath = path.join(dir, `${name}.img`);
    await fsp.writeFile(diskPath, '');
    await fsp.truncate(diskPath, opts.diskSizeBytes ?? 64 * 1024 * 1024);
    const nbdPort = await freePort();
    const peerPort = await freePort();
    const pidFile = path.join(runDir, `${name}.pid`);
    nodes.push({
      name,
      nodeId: i,
      diskPath,
      runDir,
      nbdPort,
      peerPort,
      uri: `nbd://127.0.0.1:${nbdPort}/r0`,
      cli: (...args) => runCli(configFile, name, args),
      daemonPid: () => readPid(pidFile),
    });
  }
  const writeConfig = async (net: string): Promise<void> => {
    const lines = [
      // Each node needs its own run dir on this one machine: `run-dir` may
      // name the node (see docs/config.md).
      `global { run-dir ${path.join(dir, 'run-%n')}; }`,
      'resource r0 {',
      '  meta-disk internal;',
      `  net { ${FAST_NET} ${net} }`,
      `  disk { ${opts.disk ?? ''} }`,
      ...nodes.map(
        (n) => `  on ${n.name} { node-id ${n.nodeId}; disk ${n.diskPath}; address 127.0.0.1:${n.peerPort}; nbd-address 127.0.0.1:${n.nbdPort}; }`,
      ),
      '}',
      '',
    ];
    await fsp.writeFile(configFile, lines.join('\n'));
  };
  await writeConfig(opts.net ?? '');
  return {
    dir,
    configFile,
    alpha: nodes[0]!,
    beta: nodes[1]!,
    nodes,
    writeConfig,
    stop: async () => {
      for (const n of nodes) {
        const pid = await n.daemonPid();
        if (pid !== null) await stopProcess(pid);
      }
      // MIRRORBD_KEEP_TEST_DIRS=1 keeps disks and daemon logs for a post-mortem.
      if (process.env.MIRRORBD_KEEP_TEST_DIRS === '1') console.error(`kept ${dir}`);
      else await fsp.rm(dir, { recursive: true, force: true });
    },
  };
}

/** create-md and up on both nodes. */
export async function upPair(pair: Pair): Promise<void> {
  for (const n of pair.nodes) await mustSucceed(n.cli('create-md', 'r0'));
  for (const n of pair.nodes) await mustSucceed(n.cli('up', 'r0'));
}

export interface PeerStatusJson {
  node: string;
  connection: string;
  replication: string;
  role: string;
  peerDisk: string;
  outOfSyncBytes: number | null;
  syncDonePercent: number | null;
}

export interface StatusJson {
  name: string;
  role: string;
  disk: string;
  sizeBytes: number;
  peers: PeerStatusJson[];
  replication?: { bytesSent: number; bytesReceived: number };
}

export async function statusOf(n: PairNode): Promise<StatusJson> {
  const r = await mustSucceed(n.cli('status', 'r0', '--json'));
  return (JSON.parse(r.stdout) as StatusJson[])[0]!;
}

/** Poll until `check` passes on the node's status, or fail with the last status. */
export async function waitForStatus(n: PairNode, check: (s: StatusJson) => boolean, timeoutMs = 30_000): Promise<StatusJson> {
  const deadline = Date.now() + timeoutMs;
  let last: StatusJson | null = null;
  while (Date.now() < deadline) {
    last = await statusOf(n);
    if (check(last)) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`status of ${n.name} never matched; last: ${JSON.stringify(last)}`);
}
