/**
 * Two real nodes of one resource on loopback, as two daemons: one config
 * file with `on alpha` and `on beta`, a disk file and a run dir each. The
 * CLI drives them exactly as an administrator would. `stop()` ends both
 * daemons by the pids in their pid files, also after a failed test.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import {
  cliStatus,
  makeNode,
  makeTestDir,
  pollStatus,
  removeTestDir,
  resourceConfig,
  stopDaemon,
  type ClusterNode,
} from './cluster-node.js';
import { mustSucceed } from './single-node.js';

export const NODE_NAMES = ['alpha', 'beta'] as const;
export type NodeName = (typeof NODE_NAMES)[number];

export interface PairNode extends ClusterNode<NodeName> {
  diskPath: string;
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
  const dir = await makeTestDir('pair');
  const configFile = path.join(dir, 'mirrorbd.conf');
  const nodes: PairNode[] = [];
  for (const [i, name] of NODE_NAMES.entries()) nodes.push(await makeNode(dir, configFile, name, i, opts.diskSizeBytes ?? 64 * 1024 * 1024));
  const writeConfig = (net: string): Promise<void> =>
    fsp.writeFile(configFile, resourceConfig(dir, [`net { ${FAST_NET} ${net} }`, `disk { ${opts.disk ?? ''} }`], nodes));
  await writeConfig(opts.net ?? '');
  return {
    dir,
    configFile,
    alpha: nodes[0]!,
    beta: nodes[1]!,
    nodes,
    writeConfig,
    stop: async () => {
      for (const n of nodes) await stopDaemon(n);
      await removeTestDir(dir);
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

export function statusOf(n: PairNode): Promise<StatusJson> {
  return cliStatus<StatusJson>(n);
}

/** Poll until `check` passes on the node's status, or fail with the last status. */
export function waitForStatus(n: PairNode, check: (s: StatusJson) => boolean, timeoutMs = 30_000): Promise<StatusJson> {
  return pollStatus(n, () => statusOf(n), check, timeoutMs, 100);
}
