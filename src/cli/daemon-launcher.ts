/**
 * `up` starts the node's daemon in the background when none answers, with
 * its output appended to `<run-dir>/<node>.log`, and waits until it answers.
 */
import { spawn } from 'node:child_process';
import { openSync, closeSync, promises as fsp } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { MirrorError } from '../errors.js';
import { daemonPaths } from '../daemon/run-dir.js';
import { daemonAnswers } from './control-client.js';

export const DAEMON_START_TIMEOUT_MS = 15_000;
const POLL_INTERVAL_MS = 50;

export async function ensureDaemon(opts: { configFile: string; node: string; runDir: string }): Promise<string> {
  const paths = daemonPaths(opts.runDir, opts.node);
  if (await daemonAnswers(paths.socket)) return paths.socket;

  await fsp.mkdir(opts.runDir, { recursive: true, mode: 0o755 });
  const logFd = openSync(paths.log, 'a', 0o640);
  const main = fileURLToPath(new URL('./main.js', import.meta.url));
  let exited: number | null = null;
  try {
    const child = spawn(
      process.execPath,
      [main, '-c', opts.configFile, '--node', opts.node, 'daemon', '--exit-when-idle'],
      { detached: true, stdio: ['ignore', logFd, logFd], env: process.env },
    );
    child.on('exit', (code) => {
      exited = code ?? 1;
    });
    child.unref();
  } finally {
    closeSync(logFd);
  }

  const deadline = Date.now() + DAEMON_START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exited !== null) break;
    if (await daemonAnswers(paths.socket, 500)) return paths.socket;
    await new Promise((r) => setTimeout(r, POLL_INTERVAL_MS));
  }
  const tail = await lastLines(paths.log, 5);
  throw new MirrorError(
    'ERR_DAEMON_UNREACHABLE',
    exited !== null
      ? `the daemon exited with status ${exited} while starting; see ${paths.log}:\n${tail}`
      : `the daemon did not answer within ${DAEMON_START_TIMEOUT_MS} ms; see ${paths.log}`,
  );
}

async function lastLines(file: string, n: number): Promise<string> {
  try {
    return (await fsp.readFile(file, 'utf8')).trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '';
  }
}
