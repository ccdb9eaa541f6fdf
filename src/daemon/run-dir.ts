/**
 * Files of a node's daemon in the run dir: `<node>.pid`, `<node>.sock` and
 * `<node>.log` (the log of a daemon started in the background by `up`).
 */
import { promises as fsp, readFileSync } from 'node:fs';
import path from 'node:path';
import { MirrorError } from '../errors.js';

export interface DaemonPaths {
  pid: string;
  socket: string;
  log: string;
}

/**
 * The run dir of `node`: `run-dir` with every `%n` replaced by the node
 * name, so several nodes can share one config on one machine (tests, demos).
 */
export function resolveRunDir(template: string, node: string): string {
  return template.replaceAll('%n', node);
}

export function daemonPaths(runDir: string, node: string): DaemonPaths {
  return {
    pid: path.join(runDir, `${node}.pid`),
    socket: path.join(runDir, `${node}.sock`),
    log: path.join(runDir, `${node}.log`),
  };
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    // EPERM: it exists but belongs to someone else.
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A daemon killed with -9 stays a zombie until whoever adopted it reaps
  // it (in a container that may be never): it still answers kill(0), but it
  // holds nothing. On Linux its state in /proc says so.
  return !isZombie(pid);
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) S ...": the state follows the last ')' (comm may hold one).
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
  } catch {
    return false;
  }
}

export async function readPid(file: string): Promise<number | null> {
  try {
    const pid = Number((await fsp.readFile(file, 'utf8')).trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/**
 * Take the pid file, refusing when a live daemon holds it. A pid file left by
 * a daemon that died (kill -9) is stale and replaced, and so is its socket.
 */
export async function claimPidFile(paths: DaemonPaths): Promise<void> {
  const holder = await readPid(paths.pid);
  if (holder !== null && holder !== process.pid && processAlive(holder)) {
    throw new MirrorError('ERR_DAEMON_RUNNING', `a daemon is already running for this node (pid ${holder}, ${paths.pid})`, {
      pid: holder,
    });
  }
  await fsp.rm(paths.socket, { force: true });
  await fsp.writeFile(paths.pid, `${process.pid}\n`, { mode: 0o644 });
}
