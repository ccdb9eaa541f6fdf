/**
 * Running the real clients: every child is bounded in time and killed by its
 * own PID when it overruns, and its output is kept for the failure message.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface RunResult {
  cmd: string;
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface RunOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * Debian's python3 first: nbdsh runs the first python3 on PATH, and only
 * Debian's has the libnbd module.
 */
export const clientEnv: NodeJS.ProcessEnv = {
  ...process.env,
  PATH: `/usr/bin:${process.env.PATH ?? '/bin'}`,
  LC_ALL: 'C',
};

export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: opts.env ?? clientEnv,
      cwd: opts.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ cmd: [cmd, ...args].join(' '), code, signal, stdout, stderr, timedOut });
    });
  });
}

/** Everything needed to understand a failed run, for assertion messages. */
export function explain(r: RunResult): string {
  const tail = (s: string): string => (s.length > 4000 ? `...${s.slice(-4000)}` : s);
  return [
    `command: ${r.cmd}`,
    `exit: ${r.code}${r.signal ? ` signal ${r.signal}` : ''}${r.timedOut ? ' (timed out, killed)' : ''}`,
    `stdout:\n${tail(r.stdout)}`,
    `stderr:\n${tail(r.stderr)}`,
  ].join('\n');
}

/** The directory holding the nbdsh scripts. */
export const nbdshDir = fileURLToPath(new URL('./nbdsh/', import.meta.url));

/**
 * Runs test/interop/nbdsh/SCRIPT.py inside nbdsh (no implicit handle: each
 * script opens its own). `vars` become Python globals. An uncaught exception,
 * including a failed assert, makes nbdsh exit non-zero.
 */
export function nbdsh(script: string, vars: Record<string, string | number>, opts: RunOptions = {}): Promise<RunResult> {
  const file = join(nbdshDir, `${script}.py`);
  const assignments = Object.entries(vars)
    .map(([k, v]) => `${k} = ${typeof v === 'number' ? String(v) : JSON.stringify(v)}`)
    .join('\n');
  return run(
    'nbdsh',
    ['-n', '-c', assignments, '-c', `exec(compile(open(${JSON.stringify(file)}).read(), ${JSON.stringify(file)}, 'exec'))`],
    opts,
  );
}

export async function tempDir(prefix: string): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), `mirrorbd-${prefix}-`));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}
