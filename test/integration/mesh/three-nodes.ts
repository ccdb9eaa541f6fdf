/**
 * Three data nodes of one resource in a full mesh: alpha, beta and gamma
 * (node-id 0, 1, 2), every node in one config file with every other, so
 * each pair of nodes has its own connection (the lower node-id dials) and
 * each node a bitmap slot per peer.
 *
 * On loopback (the default) every node has its own ports on 127.0.0.1 and
 * `up` starts its daemon; with a network harness every node runs in its own
 * namespace at its own address (the same ports everywhere) and its daemon is
 * started in the foreground there, so the harness can cut it off. The CLI
 * always runs from the host: it talks to the daemons over the control
 * sockets in their run dirs.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readPid } from '../../../src/daemon/run-dir.js';
import type { NetnsHarness } from '../../helpers/netns.js';
import { cliPath, freePort, mustSucceed, runCli, stopProcess, type CliResult } from '../../helpers/single-node.js';

export const MESH_NAMES = ['alpha', 'beta', 'gamma'] as const;
export type MeshName = (typeof MESH_NAMES)[number];

/** Fast failure detection, as in the two-node tests. */
export const MESH_NET = 'ping-int 1; ping-timeout 0.5; connect-int 1; timeout 2;';

export interface MeshNode {
  name: MeshName;
  nodeId: number;
  diskPath: string;
  runDir: string;
  /** Where the host reaches the node's NBD listener. */
  host: string;
  nbdPort: number;
  peerPort: number;
  uri: string;
  cli(...args: string[]): Promise<CliResult>;
  daemonPid(): Promise<number | null>;
  /** Start the daemon if needed and `up r0`. */
  up(): Promise<void>;
  /** kill -9 of the daemon, by its pid; waits until it is gone. */
  killHard(): Promise<void>;
}

export interface Mesh {
  dir: string;
  configFile: string;
  alpha: MeshNode;
  beta: MeshNode;
  gamma: MeshNode;
  nodes: MeshNode[];
  netns: NetnsHarness | null;
  stop(): Promise<void>;
}

export interface MeshOptions {
  diskSizeBytes?: number;
  /** The failure-detection timers at the start of `net { }`, instead of MESH_NET. */
  timers?: string;
  /** Lines inside `net { }`, after the timers. */
  net?: string;
  /** Lines inside `options { }` (quorum, on-no-quorum, auto-promote...); no `options` section without it. */
  options?: string;
  /** Lines inside `disk { }`. */
  disk?: string;
  /** Run every node in its own namespace of this harness (which must have 3 nodes). */
  netns?: NetnsHarness;
}

export async function makeMesh(opts: MeshOptions = {}): Promise<Mesh> {
  const h = opts.netns ?? null;
  if (h && h.nodes.length !== MESH_NAMES.length) throw new Error(`the network harness must have ${MESH_NAMES.length} nodes`);
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-mesh-'));
  const configFile = path.join(dir, 'mirrorbd.conf');
  const harnessPids = new Map<MeshName, number>();
  const nodes: MeshNode[] = [];
  for (const [i, name] of MESH_NAMES.entries()) {
    const runDir = path.join(dir, `run-${name}`);
    const diskPath = path.join(dir, `${name}.img`);
    await fsp.writeFile(diskPath, '');
    await fsp.truncate(diskPath, opts.diskSizeBytes ?? 64 * 1024 * 1024);
    const host = h ? h.nodes[i]!.address : '127.0.0.1';
    const nbdPort = h ? 10809 : await freePort();
    const peerPort = h ? 7789 : await freePort();
    const pidFile = path.join(runDir, `${name}.pid`);
    const cli = (...args: string[]): Promise<CliResult> => runCli(configFile, name, args);
    const daemonPid = (): Promise<number | null> => readPid(pidFile);
    nodes.push({
      name,
      nodeId: i,
      diskPath,
      runDir,
      host,
      nbdPort,
      peerPort,
      uri: `nbd://${host}:${nbdPort}/r0`,
      cli,
      daemonPid,
      up: async () => {
        if (h && !(harnessPids.has(name) && h.pids().includes(harnessPids.get(name)!))) {
          const p = await h.startMirrorbd(i, { cliPath, configFile, nodeName: name, runDir });
          harnessPids.set(name, p.pid);
        }
        await mustSucceed(cli('up', 'r0'));
      },
      killHard: async () => {
        const pid = await daemonPid();
        if (pid === null) throw new Error(`${name} has no daemon pid`);
        if (h && harnessPids.get(name) === pid) {
          await h.stop(pid, 'SIGKILL');
          harnessPids.delete(name);
          return;
        }
        process.kill(pid, 'SIGKILL');
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
      },
    });
  }
  const lines = [
    `global { run-dir ${path.join(dir, 'run-%n')}; }`,
    'resource r0 {',
    '  meta-disk internal;',
    `  net { ${opts.timers ?? MESH_NET} ${opts.net ?? ''} }`,
    `  disk { ${opts.disk ?? ''} }`,
    ...(opts.options === undefined ? [] : [`  options { ${opts.options} }`]),
    ...nodes.map((n) => `  on ${n.name} { node-id ${n.nodeId}; disk ${n.diskPath}; address ${n.host}:${n.peerPort}; nbd-address ${n.host}:${n.nbdPort}; }`),
    '}',
    '',
  ];
  await fsp.writeFile(configFile, lines.join('\n'));
  return {
    dir,
    configFile,
    alpha: nodes[0]!,
    beta: nodes[1]!,
    gamma: nodes[2]!,
    nodes,
    netns: h,
    stop: async () => {
      for (const n of nodes) {
        const pid = await n.daemonPid();
        if (pid === null) continue;
        if (h && harnessPids.get(n.name) === pid) await h.stop(pid);
        else await stopProcess(pid);
      }
      if (process.env.MIRRORBD_KEEP_TEST_DIRS === "1") console.error(`kept ${dir}`);
      else await fsp.rm(dir, { recursive: true, force: true });
    },
  };
}

export interface MeshPeerStatus {
  node: string;
  nodeId: number;
  connection: string;
  replication: string;
  role: string;
  peerDisk: string;
  outOfSyncBytes: number | null;
  syncDonePercent: number | null;
  lastDecision: string | null;
  lastError: string | null;
  splitBrain: boolean;
  bytesSent: number;
  bytesReceived: number;
}

export interface MeshStatus {
  name: string;
  node: string;
  role: string;
  /** Why the role last changed (docs/status.md). */
  roleReason: string;
  disk: string;
  quorum: { have: boolean; votes: number; needed: number; voters: number; reason: string; setting: string; onNoQuorum: string };
  /** Why I/O is held now, e.g. "no quorum". */
  suspended: string[];
  promotion: { autoPromote: boolean; candidates: string[]; reason: string; failoverPending: boolean; lastFailoverChoice: string | null };
  sizeBytes: number;
  peers: MeshPeerStatus[];
  generation: { current: string; history: string[] };
  flags: string[];
}

export async function statusOf(n: MeshNode): Promise<MeshStatus> {
  const r = await mustSucceed(n.cli('status', 'r0', '--json'));
  return (JSON.parse(r.stdout) as MeshStatus[])[0]!;
}

/** The status of `n`'s connection to the node named `peer`. */
export function peerOf(s: MeshStatus, peer: MeshName): MeshPeerStatus {
  const p = s.peers.find((x) => x.node === peer);
  if (!p) throw new Error(`${s.node} has no peer ${peer}: ${JSON.stringify(s.peers.map((x) => x.node))}`);
  return p;
}

/** Poll until `check` passes on the node's status, or fail with the last status. */
export async function waitForStatus(n: MeshNode, check: (s: MeshStatus) => boolean, timeoutMs = 30_000): Promise<MeshStatus> {
  const deadline = Date.now() + timeoutMs;
  let last: MeshStatus | null = null;
  while (Date.now() < deadline) {
    last = await statusOf(n);
    if (check(last)) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`status of ${n.name} never matched within ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
}

/** Every connection among `nodes` is Connected and Established. */
export async function waitForMeshConnected(nodes: MeshNode[], timeoutMs = 30_000): Promise<void> {
  const names = nodes.map((n) => n.name);
  for (const n of nodes) {
    await waitForStatus(
      n,
      (s) => names.filter((x) => x !== n.name).every((p) => peerOf(s, p).connection === 'Connected' && peerOf(s, p).replication === 'Established'),
      timeoutMs,
    );
  }
}

// Comparing data areas lives in test/helpers/disk-data.ts (re-exported for the mesh tests).
export { differingBlocks, hashPrefix } from '../../helpers/disk-data.js';
