/**
 * `npm start`: a working mirrorbd on loopback in a minute. It writes a
 * config and a disk file under ./.demo, runs create-md, up and
 * primary --force through the real CLI, prints the NBD URI and live status
 * until Ctrl-C, then brings everything down.
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatStatus } from './format-status.js';
import type { ResourceStatus } from '../resource/status.js';

const DEMO_DISK_BYTES = 256 * 1024 * 1024;
const PREFERRED_PORT = 10809;
const REFRESH_MS = 1000;
const NODE = 'demo';

const main = fileURLToPath(new URL('./main.js', import.meta.url));

function cli(configFile: string, args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [main, '-c', configFile, '--node', NODE, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => resolve({ code: code ?? 1, out, err }));
  });
}

async function must(configFile: string, args: string[]): Promise<string> {
  const r = await cli(configFile, args);
  if (r.code !== 0) throw new Error(`mirrorbd ${args.join(' ')} failed: ${r.err.trim()}`);
  return r.out;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

async function pickPort(): Promise<number> {
  for (let p = PREFERRED_PORT; p < PREFERRED_PORT + 100; p++) if (await portFree(p)) return p;
  throw new Error('no free port near 10809 on 127.0.0.1');
}

async function run(): Promise<void> {
  const dir = path.resolve('.demo');
  const runDir = path.join(dir, 'run');
  const disk = path.join(dir, 'r0.img');
  const configFile = path.join(dir, 'mirrorbd.conf');
  await fsp.mkdir(runDir, { recursive: true });
  const port = await pickPort();
  await fsp.writeFile(
    configFile,
    `# written by npm start
global { run-dir ${runDir}; log-level info; }
resource r0 {
  meta-disk internal;
  on ${NODE} { node-id 0; disk ${disk}; nbd-address 127.0.0.1:${port}; }
}
`,
  );
  // A leftover daemon from an interrupted demo would hold the disk.
  await cli(configFile, ['down', 'r0']);
  await fsp.rm(disk, { force: true });
  await fsp.writeFile(disk, '');
  await fsp.truncate(disk, DEMO_DISK_BYTES);

  const step = async (args: string[]): Promise<void> => {
    process.stdout.write(`$ mirrorbd -c ${path.relative(process.cwd(), configFile)} --node ${NODE} ${args.join(' ')}\n`);
    const out = await must(configFile, args);
    if (out.trim()) process.stdout.write(out);
  };
  await step(['create-md', 'r0', '--force']);
  await step(['up', 'r0']);
  await step(['primary', 'r0', '--force']);

  const uri = `nbd://127.0.0.1:${port}/r0`;
  process.stdout.write(`\nThe export is up: ${uri}\nTry, in another terminal:\n`);
  process.stdout.write(`  nbdinfo ${uri}\n  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' ${uri}\n`);
  process.stdout.write(`  nbd-client 127.0.0.1 ${port} -N r0 /dev/nbd0   # where the kernel has nbd\n\nCtrl-C stops the demo.\n\n`);

  let stop = false;
  const onSignal = (): void => {
    stop = true;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const tty = process.stdout.isTTY;
  while (!stop) {
    const r = await cli(configFile, ['status', 'r0', '--json']);
    const text = r.code === 0 ? formatStatus(JSON.parse(r.out) as ResourceStatus[]) : r.err;
    if (tty) process.stdout.write('\x1b[2J\x1b[H' + `mirrorbd demo: ${uri}   (Ctrl-C to stop)\n\n`);
    process.stdout.write(`${text}\n`);
    await new Promise((res) => setTimeout(res, REFRESH_MS));
  }
  process.stdout.write('\nstopping: secondary, down\n');
  await cli(configFile, ['secondary', 'r0', '--force']);
  await must(configFile, ['down', 'r0']);
  process.stdout.write('stopped.\n');
}

run().catch((e: unknown) => {
  process.stderr.write(`demo failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
