/**
 * What every multi-node test harness does with its nodes, whatever their
 * number: the files of a node (disk, run dir, pid file) and its ports, the
 * config of resource r0 that names them all, the CLI bound to a node, its
 * status polled until it matches, a daemon ended by its pid (cleanly, or as
 * a crash would), and the daemon's log for a failed test's report.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { daemonPaths, readPid } from '../../src/daemon/run-dir.js';
import { freePort, mustSucceed, runCli, stopProcess, type CliResult } from './single-node.js';

/** One node of resource r0 on loopback, driven through the CLI. */
export interface ClusterNode<Name extends string = string> {
  name: Name;
  nodeId: number;
  /** Null for a node without a disk (a witness). */
  diskPath: string | null;
  runDir: string;
  /** 0 for a node without a disk (no NBD listener). */
  nbdPort: number;
  peerPort: number;
  /** '' for a node without a disk. */
  uri: string;
  cli(...args: string[]): Promise<CliResult>;
  daemonPid(): Promise<number | null>;
}

/** A fresh temp dir for one harness; `kind` goes into its name. */
export function makeTestDir(kind: string): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), `mirrorbd-${kind}-`));
}

/** Removes a harness's dir, unless MIRRORBD_KEEP_TEST_DIRS=1 keeps disks and daemon logs for a post-mortem. */
export async function removeTestDir(dir: string): Promise<void> {
  if (process.env.MIRRORBD_KEEP_TEST_DIRS === '1') console.error(`kept ${dir}`);
  else await fsp.rm(dir, { recursive: true, force: true });
}

/**
 * A node in `dir` of the config `configFile`: its run dir, free ports and,
 * unless `diskSizeBytes` is null, a sparse disk file of that size.
 */
export async function makeNode<Name extends string>(
  dir: string,
  configFile: string,
  name: Name,
  nodeId: number,
  diskSizeBytes: number,
): Promise<ClusterNode<Name> & { diskPath: string }>;
export async function makeNode<Name extends string>(
  dir: string,
  configFile: string,
  name: Name,
  nodeId: number,
  diskSizeBytes: number | null,
): Promise<ClusterNode<Name>>;
export async function makeNode<Name extends string>(
  dir: string,
  configFile: string,
  name: Name,
  nodeId: number,
  diskSizeBytes: number | null,
): Promise<ClusterNode<Name>> {
  const runDir = path.join(dir, `run-${name}`);
  const diskPath = diskSizeBytes === null ? null : path.join(dir, `${name}.img`);
  if (diskPath !== null) {
    await fsp.writeFile(diskPath, '');
    await fsp.truncate(diskPath, diskSizeBytes!);
  }
  const nbdPort = diskPath === null ? 0 : await freePort();
  const peerPort = await freePort();
  const pidFile = daemonPaths(runDir, name).pid;
  return {
    name,
    nodeId,
    diskPath,
    runDir,
    nbdPort,
    peerPort,
    uri: diskPath === null ? '' : `nbd://127.0.0.1:${nbdPort}/r0`,
    cli: (...args) => runCli(configFile, name, args),
    daemonPid: () => readPid(pidFile),
  };
}

/** The node's `on` section: its disk (or `disk none`), peer address and NBD address. */
function onSection(n: ClusterNode): string {
  return n.diskPath === null
    ? `  on ${n.name} { node-id ${n.nodeId}; disk none; address 127.0.0.1:${n.peerPort}; }`
    : `  on ${n.name} { node-id ${n.nodeId}; disk ${n.diskPath}; address 127.0.0.1:${n.peerPort}; nbd-address 127.0.0.1:${n.nbdPort}; }`;
}

/**
 * The config file text of resource r0 on `nodes`, with internal metadata;
 * `sections` (e.g. `net { ... }`) go before the `on` sections.
 */
export function resourceConfig(dir: string, sections: readonly string[], nodes: readonly ClusterNode[]): string {
  return [
    // Each node needs its own run dir on this one machine: `run-dir` may
    // name the node (see docs/config.md).
    `global { run-dir ${path.join(dir, 'run-%n')}; }`,
    'resource r0 {',
    '  meta-disk internal;',
    ...sections.map((s) => `  ${s}`),
    ...nodes.map(onSection),
    '}',
    '',
  ].join('\n');
}

/** `status r0 --json` of a node through the CLI: the resource's entry. */
export async function cliStatus<S>(n: ClusterNode): Promise<S> {
  const r = await mustSucceed(n.cli('status', 'r0', '--json'));
  return (JSON.parse(r.stdout) as S[])[0]!;
}

/** Poll `read` every `intervalMs` until `check` passes, or fail with the node's last status. */
export async function pollStatus<S>(
  n: ClusterNode,
  read: () => Promise<S>,
  check: (s: S) => boolean,
  timeoutMs: number,
  intervalMs: number,
): Promise<S> {
  const deadline = Date.now() + timeoutMs;
  let last: S | null = null;
  while (Date.now() < deadline) {
    last = await read();
    if (check(last)) return last;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`status of ${n.name} never matched within ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
}

/** Ends the node's daemon by the pid in its pid file (SIGTERM, then SIGKILL); nothing when none runs. */
export async function stopDaemon(n: ClusterNode): Promise<void> {
  const pid = await n.daemonPid();
  if (pid !== null) await stopProcess(pid);
}

/** Whether a process still runs (a zombie waiting for its parent to reap it does not). */
async function running(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
  // the state follows the command name in parentheses: "PID (COMM) S ..."
  return stat === null || stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
}

/** Ends a daemon as a crash would: SIGKILL by the pid in its pid file; waits until it is gone. */
export async function killDaemon(n: ClusterNode): Promise<void> {
  const pid = await n.daemonPid();
  if (pid === null) throw new Error(`${n.name} has no daemon pid`);
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone already
  }
  const deadline = Date.now() + 5000;
  while (await running(pid)) {
    if (Date.now() > deadline) throw new Error(`pid ${pid} of ${n.name} survived SIGKILL`);
    await new Promise((r) => setTimeout(r, 20));
  }
  // Gone: its pid file must not name a pid that may be reused later.
  await fsp.rm(daemonPaths(n.runDir, n.name).pid, { force: true });
}

/** The last lines of the daemon logs in a node's run dir, for a failure message. */
export async function daemonLog(n: ClusterNode, lastLines = 40): Promise<string> {
  const files = await fsp.readdir(n.runDir).catch(() => [] as string[]);
  const out: string[] = [];
  for (const f of files.filter((x) => x.endsWith('.log'))) {
    const text = await fsp.readFile(path.join(n.runDir, f), 'utf8').catch(() => '');
    out.push(`--- ${n.name}/${f}`, ...text.trimEnd().split('\n').slice(-lastLines));
  }
  return out.join('\n');
}
