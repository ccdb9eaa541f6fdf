/**
 * A reference server with the same shape as a started mirrorbd node: nbdkit
 * serving a temp file as export r0, shaped to mirrorbd's advertisement
 * (block sizes 1/4096/32 MiB, export list, default export). Running the interop
 * suite against it (MIRRORBD_INTEROP_SERVER=nbdkit) shows that the checks
 * pass against a known-good server, so a failure against mirrorbd points at
 * mirrorbd. Unlike mirrorbd, nbdkit's file plugin advertises trim and fast zero.
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect } from 'node:net';
import { freePort } from '../helpers/single-node.js';
import { tempDir } from './proc.js';
import type { StartedNode, StartOptions } from './node.js';

const RESOURCE = 'r0';

export async function startNbdkitNode(opts: StartOptions = {}): Promise<StartedNode> {
  const sizeBytes = opts.sizeBytes ?? 64 * 1024 * 1024;
  const dir = await tempDir('nbdkit');
  const exports = join(dir.path, 'exports');
  await mkdir(exports);
  const diskPath = join(exports, RESOURCE);
  await writeFile(diskPath, '');
  await truncate(diskPath, sizeBytes);
  const pidFile = join(dir.path, 'nbdkit.pid');
  const host = '127.0.0.1';
  const port = await freePort();
  const args = [
    '-i', host, '-p', String(port), '-P', pidFile,
    '--filter=exportname', '--filter=blocksize-policy', '--filter=nozero',
    'file', `dir=${exports}`,
    `default-export=${RESOURCE}`,
    'blocksize-minimum=1', 'blocksize-preferred=4096', 'blocksize-maximum=33554432',
    // nbdkit 1.32 aborts (backend.c assertion) on a FAST_ZERO request it did
    // not advertise, so the reference advertises it and always refuses it.
    'zeromode=plugin', 'fastzeromode=slow',
  ];
  // nbdkit daemonizes: the parent exits once it listens.
  const code = await new Promise<number | null>((resolve, reject) => {
    const child = spawn('nbdkit', args, { stdio: 'ignore' });
    child.on('error', reject);
    child.on('exit', (c) => resolve(c));
  });
  if (code !== 0) {
    await dir.remove();
    throw new Error(`nbdkit exited ${code}`);
  }
  // The daemon writes its PID file just after the parent exits.
  let pid = 0;
  for (let i = 0; i < 100 && !(pid > 0); i++) {
    pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
    if (!(pid > 0)) await new Promise((r) => setTimeout(r, 50));
  }
  if (!(pid > 0)) {
    await dir.remove();
    throw new Error('nbdkit wrote no PID file');
  }
  try {
    await waitForPort(host, port, 10_000);
  } catch (err) {
    process.kill(pid, 'SIGKILL');
    await dir.remove();
    throw err;
  }
  return {
    dir: dir.path,
    configFile: '',
    diskPath,
    resource: RESOURCE,
    node: 'nbdkit',
    host,
    port,
    uri: `nbd://${host}:${port}/${RESOURCE}`,
    sizeBytes,
    async cli() {
      return { code: 127, stdout: '', stderr: 'nbdkit scaffold has no mirrorbd CLI' };
    },
    async stop() {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // already gone
      }
      for (let i = 0; i < 50; i++) {
        try {
          process.kill(pid, 0);
        } catch {
          break;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
      await dir.remove();
    },
  };
}

/** Resolves once something accepts TCP connections on host:port. */
async function waitForPort(host: string, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listening on ${host}:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
