/**
 * `npm start`, as a user runs it: the built demo in an empty directory
 * brings up two nodes, syncs them, prints the Primary's NBD URI (which a
 * real client can open), and on Ctrl-C (SIGINT) stops everything it
 * started and exits 0.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot, stopProcess } from '../helpers/single-node.js';
import { missingTools } from '../helpers/tools.js';
import { processAlive, readPid } from '../../src/daemon/run-dir.js';

const demoJs = path.join(repoRoot, 'dist/src/cli/demo.js');
const missing = missingTools('nbdinfo');

const URI_TIMEOUT_MS = 90_000;
const EXIT_TIMEOUT_MS = 15_000;

/** Running (a daemon that exited but is not reaped yet, a zombie, holds nothing and is not). */
function alive(pid: number): boolean {
  return processAlive(pid);
}


/** Resolves with the first match of `re` in the child's stdout, or rejects with what it printed. */
function waitForOutput(child: ChildProcess, output: () => string, re: RegExp, ms: number): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    const check = (): boolean => {
      const m = output().match(re);
      if (m) {
        cleanup();
        resolve(m);
      }
      return m !== null;
    };
    const onExit = (code: number | null): void => {
      cleanup();
      reject(new Error(`the demo exited (${code}) before printing ${re}:\n${output()}`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no ${re} within ${ms} ms:\n${output()}`));
    }, ms);
    const onData = (): void => void check();
    const cleanup = (): void => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
    };
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
    check();
  });
}

function exited(child: ChildProcess, ms: number): Promise<number | null | 'timeout'> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    const timer = setTimeout(() => resolve('timeout'), ms);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

describe.skipIf(missing.length > 0)('npm start (the two-node demo)', () => {
  let cwd = '';
  let child: ChildProcess | null = null;
  const daemonPids: number[] = [];

  afterAll(async () => {
    // Only what this test started: the demo and the daemons named in its pid files.
    if (child && child.exitCode === null && child.pid !== undefined) await stopProcess(child.pid);
    for (const pid of daemonPids) if (alive(pid)) await stopProcess(pid);
    if (cwd) await fsp.rm(cwd, { recursive: true, force: true });
  });

  it('prints a URI that nbdinfo opens, and on SIGINT stops both daemons and exits 0', async () => {
    cwd = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-demo-'));
    let out = '';
    let err = '';
    child = spawn(process.execPath, [demoJs], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));

    const m = await waitForOutput(child, () => out + err, /The export is up on alpha \(Primary\): (nbd:\/\/127\.0\.0\.1:\d+\/r0)/, URI_TIMEOUT_MS);
    const uri = m[1]!;
    expect(out).toMatch(/initial sync: .*100\.0% beta is UpToDate/);
    expect(out).toContain('--node beta primary r0');

    for (const node of ['alpha', 'beta']) {
      const pid = await readPid(path.join(cwd, '.demo', `run-${node}`, `${node}.pid`));
      expect(pid, `${node}'s pid file`).not.toBeNull();
      daemonPids.push(pid!);
    }

    const info = spawnSync('nbdinfo', ['--json', uri], { encoding: 'utf8', timeout: 20_000 });
    expect(info.status, info.stderr).toBe(0);
    const exports = (JSON.parse(info.stdout) as { exports: Array<{ 'export-name': string; 'export-size': number }> }).exports;
    expect(exports[0]!['export-name']).toBe('r0');
    expect(exports[0]!['export-size']).toBeGreaterThan(255 * 1024 * 1024);

    // The live status lists both nodes once the URI is out.
    await waitForOutput(child, () => out, /r0 node:beta role:Secondary[\s\S]*alpha role:Primary connection:Connected/, 10_000);

    child.kill('SIGINT');
    const code = await exited(child, EXIT_TIMEOUT_MS);
    expect(code, `stdout:\n${out}\nstderr:\n${err}`).toBe(0);
    expect(out).toMatch(/stopped\.\n$/);
    for (const pid of daemonPids) expect(alive(pid), `daemon ${pid} still alive`).toBe(false);
    for (const node of ['alpha', 'beta']) {
      expect(await readPid(path.join(cwd, '.demo', `run-${node}`, `${node}.pid`))).toBeNull();
    }
  }, URI_TIMEOUT_MS + 30_000);
});
