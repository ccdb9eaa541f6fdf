/**
 * Process plumbing for the benchmarks: run a command with a deadline, wait
 * for a TCP port, stop a process by PID, and a cleanup registry that the
 * signal handlers and the normal exit path both drain, so nothing a benchmark
 * started outlives it.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

// ---------------------------------------------------------------------------
// Cleanup registry

type CleanupFn = () => Promise<void> | void;

const cleanups = new Map<number, { label: string; fn: CleanupFn }>();
let nextCleanupId = 1;

/** Registers work to do on exit or interruption; returns its unregister. */
export function onCleanup(label: string, fn: CleanupFn): () => void {
  const id = nextCleanupId++;
  cleanups.set(id, { label, fn });
  return () => {
    cleanups.delete(id);
  };
}

/** Runs every registered cleanup, newest first; a failing one does not stop the rest. */
export async function runCleanups(): Promise<void> {
  const entries = [...cleanups.entries()].reverse();
  cleanups.clear();
  for (const [, { label, fn }] of entries) {
    try {
      await fn();
    } catch (e) {
      process.stderr.write(`cleanup "${label}" failed: ${errorMessage(e)}\n`);
    }
  }
}

let interrupted = false;

/** True once SIGINT/SIGTERM arrived: loops stop starting new work. */
export function isInterrupted(): boolean {
  return interrupted;
}

/** On SIGINT/SIGTERM: drain the cleanups, then exit with 128+signal. */
export function installSignalHandlers(): void {
  const handler = (signal: NodeJS.Signals, code: number): void => {
    if (interrupted) return; // a second Ctrl-C while cleaning up is ignored
    interrupted = true;
    process.stderr.write(`\n${signal}: stopping everything this benchmark started\n`);
    void runCleanups().finally(() => process.exit(code));
  };
  process.on('SIGINT', () => handler('SIGINT', 130));
  process.on('SIGTERM', () => handler('SIGTERM', 143));
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

// ---------------------------------------------------------------------------
// Running commands

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  timeoutMs: number;
  cwd?: string;
}

/** Grace between SIGTERM and SIGKILL when a deadline passes. */
const KILL_GRACE_MS = 3000;

/**
 * Runs a command to completion with a deadline. The child is killed (by its
 * PID) when the deadline passes or when the benchmark is interrupted.
 */
export function run(cmd: string, args: readonly string[], opts: RunOptions): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(cmd, args, {
        env: opts.env ?? process.env,
        cwd: opts.cwd,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (e) {
      reject(e);
      return;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    let timedOut = false;
    let killTimer: NodeJS.Timeout | undefined;
    const unregister = onCleanup(`${cmd} (pid ${child.pid})`, () => killChild(child));
    const deadline = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS);
    }, opts.timeoutMs);
    child.on('error', (e) => {
      clearTimeout(deadline);
      if (killTimer) clearTimeout(killTimer);
      unregister();
      reject(new Error(`cannot run ${cmd}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(deadline);
      if (killTimer) clearTimeout(killTimer);
      unregister();
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        timedOut,
      });
    });
  });
}

/** Like run(), but a non-zero exit, a signal or a timeout is an error carrying stderr. */
export async function runChecked(cmd: string, args: readonly string[], opts: RunOptions): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.timedOut || r.code !== 0) {
    const why = r.timedOut ? `timed out after ${opts.timeoutMs} ms` : r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
    const tail = lastLines(r.stderr || r.stdout, 5);
    throw new Error(`${cmd} ${args.join(' ')}: ${why}${tail ? `\n${tail}` : ''}`);
  }
  return r;
}

async function killChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  await terminatePid(child.pid, KILL_GRACE_MS);
}

export function lastLines(text: string, n: number): string {
  return text.trimEnd().split('\n').slice(-n).join('\n');
}

// ---------------------------------------------------------------------------
// PIDs

/**
 * Whether a PID names a live process. A zombie counts as gone: a daemon that
 * was reparented to an init that does not reap would otherwise look alive
 * forever.
 */
export async function isAlive(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Field 3 (after the parenthesised command name) is the state letter.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Polls until the process is gone or the timeout passes; true when gone. */
export async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (!(await isAlive(pid))) return true;
    await sleep(50);
  }
  return !(await isAlive(pid));
}

/**
 * Polls until no process has the PID, not even a zombie (waitForExit counts
 * a zombie as gone); true when gone.
 */
export async function waitForReaped(pid: number, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
    if (Date.now() > until) return false;
    await sleep(20);
  }
}

/** SIGTERM, wait, then SIGKILL if it is still there. Returns how it ended. */
export async function terminatePid(pid: number, graceMs: number): Promise<'exited' | 'killed' | 'absent'> {
  if (!(await isAlive(pid))) return 'absent';
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return 'absent';
  }
  if (await waitForExit(pid, graceMs)) return 'exited';
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return 'exited';
  }
  await waitForExit(pid, 5000);
  return 'killed';
}

/** Waits until a PID file holds a number, and returns it. */
export async function readPidFile(path: string, timeoutMs: number): Promise<number> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      const pid = Number.parseInt((await readFile(path, 'utf8')).trim(), 10);
      if (Number.isInteger(pid) && pid > 0) return pid;
    } catch {
      // not written yet
    }
    if (Date.now() > until) throw new Error(`no PID in ${path} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** CPU time (user + system, seconds) a process has used so far, or null if unreadable. */
export async function cpuSeconds(pid: number, clockTicksPerSecond: number): Promise<number | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name: state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[14 - 3]);
    const stime = Number(fields[15 - 3]);
    if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
    return (utime + stime) / clockTicksPerSecond;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------
// Ports

/** A port that was free a moment ago on the host (the kernel picks it). */
export function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('no port assigned'))));
    });
  });
}

/** Polls until host:port accepts a TCP connection. */
export async function waitForPort(host: string, port: number, timeoutMs: number, alive?: () => Promise<boolean>): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await canConnect({ host, port })) return;
    if (alive && !(await alive())) throw new Error(`the server exited before ${host}:${port} accepted`);
    if (Date.now() > until) throw new Error(`${host}:${port} did not accept within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Polls until a unix socket accepts a connection. */
export async function waitForUnixSocket(path: string, timeoutMs: number, alive?: () => Promise<boolean>): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await canConnect({ path })) return;
    if (alive && !(await alive())) throw new Error(`the process exited before ${path} accepted`);
    if (Date.now() > until) throw new Error(`${path} did not accept within ${timeoutMs} ms`);
    await sleep(50);
  }
}

function canConnect(target: { host: string; port: number } | { path: string }): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(target);
    const done = (ok: boolean): void => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}
