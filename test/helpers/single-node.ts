/**
 * A real single-node mirrorbd for tests: a temp dir with a disk file, a
 * config and a run dir; the built CLI runs create-md, up and primary --force,
 * exactly as an administrator would. `stop()` brings it down and ends the
 * daemon it started (by the pid in its pid file), also after a failed test.
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { readPid } from '../../src/daemon/run-dir.js';

export const repoRoot = path.resolve(new URL('../..', import.meta.url).pathname);
export const cliPath = path.join(repoRoot, 'dist/src/cli/main.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCli(configFile: string, node: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliPath, '-c', configFile, '--node', node, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

/**
 * A port below the kernel's ephemeral range (32768 and up here): a port the
 * kernel handed out for `listen(0)` is free now, but the next outgoing
 * connection of any test may take it before the daemon listens on it.
 *
 * Each vitest worker slot draws from its own slice of the range: a test that
 * kills a daemon and starts it again on the same port must not find that
 * port taken meanwhile by a test in another worker, which a free-port check
 * alone cannot prevent. Within a slice, ports are picked at random, checked
 * by binding, and never handed out twice by this process.
 */
const TEST_PORT_LOW = 20_000;
const TEST_PORT_HIGH = 32_000;
const PORT_SLICES = 4;
const portSlice = ((): { low: number; high: number } => {
  const poolId = Number(process.env.VITEST_POOL_ID ?? '1');
  const slot = (Number.isInteger(poolId) && poolId > 0 ? poolId - 1 : 0) % PORT_SLICES;
  const width = Math.floor((TEST_PORT_HIGH - TEST_PORT_LOW) / PORT_SLICES);
  return { low: TEST_PORT_LOW + slot * width, high: TEST_PORT_LOW + (slot + 1) * width };
})();
const portsGiven = new Set<number>();

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

export async function freePort(): Promise<number> {
  for (let tries = 0; tries < 200; tries++) {
    const port = portSlice.low + Math.floor(Math.random() * (portSlice.high - portSlice.low));
    if (portsGiven.has(port)) continue;
    portsGiven.add(port);
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port between ${portSlice.low} and ${portSlice.high}`);
}

export interface StartedNode {
  dir: string;
  configFile: string;
  runDir: string;
  diskPath: string;
  resource: string;
  node: string;
  host: string;
  port: number;
  /** nbd://127.0.0.1:PORT/r0 */
  uri: string;
  /** Exported size in bytes. */
  sizeBytes: number;
  cli(...args: string[]): Promise<CliResult>;
  /** The daemon's pid, from its pid file. */
  daemonPid(): Promise<number | null>;
  stop(): Promise<void>;
}

export interface NodeOptions {
  /** Size of the disk file (metadata included when internal). Default 64 MiB. */
  diskSizeBytes?: number;
  /** Extra lines inside the resource's `nbd { }` section. */
  nbdSection?: string;
  /** Extra text inside `resource r0 { }` (other `on` sections, net options...). */
  resourceExtra?: string;
  /** Stop after create-md and up (role stays Secondary). */
  secondary?: boolean;
  /** Skip create-md and up altogether: only write the files. */
  configOnly?: boolean;
}

export async function startNode(opts: NodeOptions = {}): Promise<StartedNode> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-test-'));
  const runDir = path.join(dir, 'run');
  const diskPath = path.join(dir, 'r0.img');
  const configFile = path.join(dir, 'mirrorbd.conf');
  const port = await freePort();
  const host = '127.0.0.1';
  await fsp.writeFile(diskPath, '');
  await fsp.truncate(diskPath, opts.diskSizeBytes ?? 64 * 1024 * 1024);
  await fsp.writeFile(
    configFile,
    [
      `global { run-dir ${runDir}; }`,
      'resource r0 {',
      '  meta-disk internal;',
      `  nbd { ${opts.nbdSection ?? ''} }`,
      `  on alpha { node-id 0; disk ${diskPath}; nbd-address ${host}:${port}; }`,
      opts.resourceExtra ?? '',
      '}',
      '',
    ].join('\n'),
  );
  const cli = (...args: string[]): Promise<CliResult> => runCli(configFile, 'alpha', args);
  const pidFile = path.join(runDir, 'alpha.pid');
  const daemonPid = (): Promise<number | null> => readPid(pidFile);
  const node: StartedNode = {
    dir,
    configFile,
    runDir,
    diskPath,
    resource: 'r0',
    node: 'alpha',
    host,
    port,
    uri: `nbd://${host}:${port}/r0`,
    sizeBytes: 0,
    cli,
    daemonPid,
    stop: async () => {
      const pid = await daemonPid();
      if (pid !== null) {
        await cli('down', 'r0').catch(() => undefined);
        await stopProcess(pid);
      }
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
  if (opts.configOnly) return node;
  try {
    await mustSucceed(cli('create-md', 'r0'));
    await mustSucceed(cli('up', 'r0'));
    if (!opts.secondary) await mustSucceed(cli('primary', 'r0', '--force'));
    const status = JSON.parse((await mustSucceed(cli('status', 'r0', '--json'))).stdout) as Array<{ sizeBytes: number }>;
    node.sizeBytes = status[0].sizeBytes;
  } catch (e) {
    await node.stop();
    throw e;
  }
  return node;
}

/** startNode() as Primary: what the interop tests use. */
export function startPrimary(opts: { sizeBytes?: number; nbdSection?: string } = {}): Promise<StartedNode> {
  // Internal metadata for a 64 MiB disk takes well under 1 MiB; round the
  // request up so at least sizeBytes are exported.
  const diskSizeBytes = opts.sizeBytes !== undefined ? opts.sizeBytes + 4 * 1024 * 1024 : undefined;
  return startNode({ diskSizeBytes, nbdSection: opts.nbdSection });
}

export async function mustSucceed(p: Promise<CliResult>): Promise<CliResult> {
  const r = await p;
  if (r.code !== 0) throw new Error(`mirrorbd exited ${r.code}: ${r.stderr.trim()}`);
  return r;
}

/** SIGTERM a process we started, then SIGKILL if it has not gone within the grace period. */
export async function stopProcess(pid: number, graceMs = 5000): Promise<void> {
  const alive = (): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (!alive()) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (alive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
  if (alive()) process.kill(pid, 'SIGKILL');
}
