/**
 * The NBD servers a benchmark compares, each serving the same image file on
 * loopback with its own default durability (FLUSH honoured by all three).
 * Every launcher returns a handle that knows the server's PID, so it can be
 * stopped by that PID and only that PID.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, open, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

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

export const SERVER_NAMES = ['mirrorbd', 'nbdkit', 'qemu-nbd'] as const;
/**
 * A second mirrorbd build (another checkout, given with --baseline) run as
 * one more server, so two versions alternate within one run (A/B).
 */
export const BASELINE_SERVER = 'mirrorbd-base' as const;
export type ServerName = (typeof SERVER_NAMES)[number] | typeof BASELINE_SERVER;

export const BENCH_HOST = '127.0.0.1';

/** How long a server may take to start accepting, and to stop. */
const START_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 15_000;
/** Deadline for one mirrorbd CLI command (create-md, up, primary, down). */
const CLI_TIMEOUT_MS = 60_000;

export interface ServerContext {
  /** Work directory owned by this benchmark run. */
  dir: string;
  /** The image every server serves. */
  image: string;
  /** When set, the mirrorbd daemon runs with --cpu-prof into this directory. */
  profileDir?: string;
}

export interface RunningServer {
  readonly name: ServerName;
  /** The NBD URI fio connects to. */
  readonly uri: string;
  /** PID of the process that serves I/O (for CPU accounting and stopping). */
  readonly pid: number;
  stop(): Promise<void>;
}

export interface ServerLauncher {
  readonly name: ServerName;
  /** null when it can run here, otherwise why it cannot. */
  unavailable(): Promise<string | null>;
  start(ctx: ServerContext, port: number): Promise<RunningServer>;
}

// ---------------------------------------------------------------------------
// mirrorbd, single node, external metadata so the whole image is exported

/** dist/bench/servers.js -> dist/src/cli/main.js */
export const MIRRORBD_CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const MIRRORBD_RESOURCE = 'bench';
const MIRRORBD_NODE = 'benchnode';
/** External metadata file size: plenty for the bitmap (32 KiB per GiB) and activity log. */
const META_BYTES = 4 * 1024 * 1024;

function mirrorbdConfig(dir: string, image: string, meta: string, port: number): string {
  return [
    `global { run-dir ${join(dir, 'run')}; }`,
    `resource ${MIRRORBD_RESOURCE} {`,
    `  meta-disk ${meta};`,
    `  on ${MIRRORBD_NODE} { node-id 0; disk ${image}; nbd-address ${BENCH_HOST}:${port}; }`,
    `}`,
    '',
  ].join('\n');
}

class MirrorbdLauncher implements ServerLauncher {
  constructor(
    readonly name: 'mirrorbd' | typeof BASELINE_SERVER,
    /** The CLI entry point of the build to run. */
    private readonly cliPath: string,
  ) {}

  async unavailable(): Promise<string | null> {
    try {
      await stat(this.cliPath);
      return null;
    } catch {
      return `mirrorbd CLI not built (${this.cliPath} missing)`;
    }
  }

  async start(ctx: ServerContext, port: number): Promise<RunningServer> {
    const conf = join(ctx.dir, 'mirrorbd.conf');
    const meta = join(ctx.dir, `${MIRRORBD_RESOURCE}.md`);
    const runDir = join(ctx.dir, 'run');
    const pidFile = join(runDir, `${MIRRORBD_NODE}.pid`);
    await mkdir(runDir, { recursive: true });
    await rm(pidFile, { force: true });
    await writeFile(conf, mirrorbdConfig(ctx.dir, ctx.image, meta, port));
    await writeFile(meta, '', { flag: 'a' });
    await truncate(meta, META_BYTES);

    const cliPath = this.cliPath;
    const cli = (args: string[], env?: NodeJS.ProcessEnv) =>
      runChecked(process.execPath, [cliPath, '-c', conf, '--node', MIRRORBD_NODE, ...args], {
        timeoutMs: CLI_TIMEOUT_MS,
        env,
      });

    // Whatever happens from here on, the daemon must not outlive us.
    let pid: number | undefined;
    const stop = async (): Promise<void> => {
      unregister();
      const down = await run(process.execPath, [cliPath, '-c', conf, '--node', MIRRORBD_NODE, 'down', MIRRORBD_RESOURCE], {
        timeoutMs: CLI_TIMEOUT_MS,
      }).catch((e: unknown) => ({ code: -1, stderr: errorMessage(e), timedOut: false }));
      if (down.code !== 0) {
        process.stderr.write(`mirrorbd down failed (exit ${down.code}): ${lastLines(down.stderr, 3)}\n`);
      }
      const daemonPid = pid ?? (await readPidFile(pidFile, 1000).catch(() => undefined));
      if (daemonPid !== undefined) {
        const how = await terminatePid(daemonPid, STOP_GRACE_MS);
        if (how === 'killed') process.stderr.write(`mirrorbd daemon ${daemonPid} ignored SIGTERM; killed\n`);
      }
    };
    const unregister = onCleanup('mirrorbd daemon', stop);

    try {
      await cli(['create-md', MIRRORBD_RESOURCE, '--force']);
      const upEnv: NodeJS.ProcessEnv = { ...process.env };
      if (ctx.profileDir && process.allowedNodeEnvironmentFlags.has('--cpu-prof')) {
        // The daemon that `up` spawns inherits this; it writes its profile when it exits.
        upEnv.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --cpu-prof --cpu-prof-dir=${ctx.profileDir}`.trim();
      } else if (ctx.profileDir) {
        // Node 20 refuses --cpu-prof in NODE_OPTIONS ("not allowed in
        // NODE_OPTIONS", exit 9), so the profiled daemon is started here, in
        // the foreground as `mirrorbd daemon` does for systemd, and `up`
        // finds it running.
        pid = await startProfiledDaemon(cliPath, conf, runDir, ctx.profileDir);
      }
      await cli(['up', MIRRORBD_RESOURCE], upEnv);
      pid ??= await readPidFile(pidFile, START_TIMEOUT_MS);
      await cli(['primary', MIRRORBD_RESOURCE, '--force']);
      const daemonPid = pid;
      await waitForPort(BENCH_HOST, port, START_TIMEOUT_MS, () => isAlive(daemonPid));
    } catch (e) {
      await stop();
      throw e;
    }
    return { name: this.name, uri: `nbd://${BENCH_HOST}:${port}/${MIRRORBD_RESOURCE}`, pid, stop };
  }
}

/**
 * Starts `node --cpu-prof main.js daemon` as our child, its output appended
 * to the run dir's log as `up` does, and waits until its control socket
 * accepts (so that `up` uses it rather than starting another).
 */
async function startProfiledDaemon(cliPath: string, conf: string, runDir: string, profileDir: string): Promise<number> {
  const log = await open(join(runDir, `${MIRRORBD_NODE}.log`), 'a');
  let child: ChildProcess;
  try {
    child = spawn(
      process.execPath,
      ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, cliPath, '-c', conf, '--node', MIRRORBD_NODE, 'daemon'],
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
  try {
    await waitForUnixSocket(join(runDir, `${MIRRORBD_NODE}.sock`), START_TIMEOUT_MS, () => isAlive(pid));
  } catch (e) {
    await terminatePid(pid, STOP_GRACE_MS);
    throw e;
  }
  return pid;
}

// ---------------------------------------------------------------------------
// nbdkit file plugin, daemonized (in the foreground it ends with its parent)

class NbdkitLauncher implements ServerLauncher {
  readonly name = 'nbdkit' as const;

  async unavailable(): Promise<string | null> {
    return (await commandWorks('nbdkit', ['--version'])) ? null : 'nbdkit not installed';
  }

  async start(ctx: ServerContext, port: number): Promise<RunningServer> {
    const pidFile = join(ctx.dir, 'nbdkit.pid');
    await rm(pidFile, { force: true });
    let pid: number | undefined;
    const stop = async (): Promise<void> => {
      unregister();
      const p = pid ?? (await readPidFile(pidFile, 1000).catch(() => undefined));
      if (p !== undefined) await terminatePid(p, STOP_GRACE_MS);
    };
    const unregister = onCleanup('nbdkit', stop);
    try {
      // The parent returns once the daemon is forked; the daemon writes the PID file.
      await runChecked('nbdkit', ['-i', BENCH_HOST, '-p', String(port), '-P', pidFile, 'file', ctx.image], {
        timeoutMs: START_TIMEOUT_MS,
      });
      pid = await readPidFile(pidFile, START_TIMEOUT_MS);
      const p = pid;
      await waitForPort(BENCH_HOST, port, START_TIMEOUT_MS, () => isAlive(p));
    } catch (e) {
      await stop();
      throw e;
    }
    // nbdkit accepts any export name for the file plugin.
    return { name: this.name, uri: `nbd://${BENCH_HOST}:${port}/`, pid, stop };
  }
}

// ---------------------------------------------------------------------------
// qemu-nbd as our child process, default cache mode (writeback, FLUSH honoured)

class QemuNbdLauncher implements ServerLauncher {
  readonly name = 'qemu-nbd' as const;

  async unavailable(): Promise<string | null> {
    return (await commandWorks('qemu-nbd', ['--version'])) ? null : 'qemu-nbd not installed';
  }

  async start(ctx: ServerContext, port: number): Promise<RunningServer> {
    const child = spawn('qemu-nbd', ['-f', 'raw', '-t', '-e', '0', '-b', BENCH_HOST, '-p', String(port), ctx.image], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => {
      stderr = (stderr + b.toString('utf8')).slice(-4096);
    });
    const spawned = new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    await spawned;
    const pid = child.pid;
    if (pid === undefined) throw new Error('qemu-nbd: no PID');
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const stop = async (): Promise<void> => {
      unregister();
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const gone = await Promise.race([exited.then(() => true), sleepMs(STOP_GRACE_MS).then(() => false)]);
      if (!gone) {
        child.kill('SIGKILL');
        await exited;
      }
    };
    const unregister = onCleanup('qemu-nbd', stop);
    try {
      await waitForPort(BENCH_HOST, port, START_TIMEOUT_MS, async () => child.exitCode === null && child.signalCode === null);
    } catch (e) {
      await stop();
      throw new Error(`${errorMessage(e)}${stderr ? `\nqemu-nbd: ${lastLines(stderr, 3)}` : ''}`);
    }
    // Without -x, qemu-nbd's export is named "" (the URI's empty path).
    return { name: this.name, uri: `nbd://${BENCH_HOST}:${port}/`, pid, stop };
  }
}

function sleepMs(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

async function commandWorks(cmd: string, args: string[]): Promise<boolean> {
  try {
    const r = await run(cmd, args, { timeoutMs: 10_000 });
    return r.code === 0;
  } catch {
    return false;
  }
}

/** `baseline`: the root of another built checkout, for BASELINE_SERVER. */
export function launcher(name: ServerName, baseline?: string): ServerLauncher {
  switch (name) {
    case 'mirrorbd':
      return new MirrorbdLauncher(name, MIRRORBD_CLI);
    case BASELINE_SERVER:
      if (baseline === undefined) throw new Error(`${BASELINE_SERVER} needs --baseline DIR`);
      return new MirrorbdLauncher(name, join(baseline, 'dist', 'src', 'cli', 'main.js'));
    case 'nbdkit':
      return new NbdkitLauncher();
    case 'qemu-nbd':
      return new QemuNbdLauncher();
  }
}
