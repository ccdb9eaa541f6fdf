/**
 * `npm start`: two replicating mirrorbd nodes, alpha and beta, on loopback.
 * Everything lives in ./.demo: one config (with `run-dir .../run-%n`, so
 * each node has its own run dir), a 256 MiB disk file per node, the run
 * dirs and the daemons' logs. The demo drives the real CLI as an
 * administrator would (create-md, up, primary --force), shows the initial
 * sync as a progress bar, prints the NBD URI and what to try, then shows
 * the status of both nodes every second until Ctrl-C (SIGINT or SIGTERM),
 * and brings everything down: secondary --force, down on both, and a check
 * that both daemons are gone.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { daemonPaths, processAlive, readPid } from '../daemon/run-dir.js';
import type { ResourceStatus } from '../resource/status.js';
import { callDaemon } from './control-client.js';
import { formatBytes, formatProgress, formatStatus } from './format-status.js';

const DEMO_DISK_BYTES = 256 * 1024 * 1024;
const RESOURCE = 'r0';
const NODES = [
  { name: 'alpha', nbdPort: 10809, peerPort: 7789 },
  { name: 'beta', nbdPort: 10810, peerPort: 7790 },
] as const;
type NodeName = (typeof NODES)[number]['name'];
const REFRESH_MS = 1000;
const SYNC_POLL_MS = 250;
const CONNECT_TIMEOUT_MS = 20_000;
/** A sync slower than this on loopback means something is wrong; say so rather than wait forever. */
const SYNC_TIMEOUT_MS = 10 * 60_000;
/** `down` makes a daemon started by `up` exit; give it this long before ending it by its pid. */
const DAEMON_EXIT_GRACE_MS = 5000;
const STATUS_CALL_TIMEOUT_MS = 5000;

const mainJs = fileURLToPath(new URL('./main.js', import.meta.url));

interface Demo {
  dir: string;
  configFile: string;
  /** The config path as the user should type it. */
  shownConfig: string;
  nbdPorts: Record<NodeName, number>;
  stop: AbortSignal;
}

// --- small helpers ---------------------------------------------------------------

function runDirOf(dir: string, node: string): string {
  return path.join(dir, `run-${node}`);
}

function uriOf(port: number): string {
  return `nbd://127.0.0.1:${port}/${RESOURCE}`;
}

/** Sleep that ends early when the demo is asked to stop. */
function pause(ms: number, stop: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (stop.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      stop.removeEventListener('abort', done);
      resolve();
    }
    stop.addEventListener('abort', done, { once: true });
  });
}

/**
 * Run the mirrorbd CLI for one node. The child gets its own process group,
 * so a Ctrl-C in the terminal reaches the demo only and never cuts a
 * create-md or a down in half; the demo decides what to stop and when.
 */
function cli(configFile: string, node: string, args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [mainJs, '-c', configFile, '--node', node, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', (e) => resolve({ code: 1, out, err: e.message }));
    child.on('close', (code) => resolve({ code: code ?? 1, out, err }));
  });
}

/** Print the command as the user would type it, run it, fail on a non-zero exit. */
async function step(d: Demo, node: string, args: string[]): Promise<void> {
  process.stdout.write(`$ mirrorbd -c ${d.shownConfig} --node ${node} ${args.join(' ')}\n`);
  const r = await cli(d.configFile, node, args);
  if (r.out.trim()) process.stdout.write(r.out);
  if (r.code !== 0) throw new Error(`mirrorbd --node ${node} ${args.join(' ')} failed: ${r.err.trim()}`);
}

/** The node's status of r0 straight from its control socket; null when its daemon does not answer. */
async function statusOf(dir: string, node: string): Promise<ResourceStatus | null> {
  try {
    const list = (await callDaemon(daemonPaths(runDirOf(dir, node), node).socket, { cmd: 'status', resource: RESOURCE }, STATUS_CALL_TIMEOUT_MS)) as ResourceStatus[];
    return list[0] ?? null;
  } catch {
    return null;
  }
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

function anyFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** The preferred port when it is free, else any free one; never one already `taken`. */
async function pickPort(preferred: number, taken: Set<number>): Promise<number> {
  let port = preferred;
  while (taken.has(port) || !(await portFree(port))) port = await anyFreePort();
  taken.add(port);
  return port;
}

/** How to call the CLI from here: the shortest path to main.js. */
function mirrorbdCommand(): string {
  const rel = path.relative(process.cwd(), mainJs);
  return `node ${rel.startsWith('..') ? mainJs : rel}`;
}

// --- setting up ---------------------------------------------------------------------

async function writeConfig(d: Demo, peerPorts: Record<NodeName, number>): Promise<void> {
  const secret = randomBytes(12).toString('hex');
  const on = NODES.map(
    (n, i) =>
      `  on ${n.name} { node-id ${i}; disk ${path.join(d.dir, `${n.name}.img`)}; address 127.0.0.1:${peerPorts[n.name]}; nbd-address 127.0.0.1:${d.nbdPorts[n.name]}; }`,
  );
  const text = [
    '# written by npm start: two nodes of one resource on this machine',
    `global { run-dir ${path.join(d.dir, 'run-%n')}; log-level info; }`,
    `resource ${RESOURCE} {`,
    '  meta-disk internal;',
    `  net { protocol C; ping-int 1; ping-timeout 0.5; connect-int 1; timeout 2; shared-secret "${secret}"; }`,
    ...on,
    '}',
    '',
  ];
  await fsp.writeFile(d.configFile, text.join('\n'), { mode: 0o600 });
}

async function freshDisks(dir: string): Promise<void> {
  for (const n of NODES) {
    const disk = path.join(dir, `${n.name}.img`);
    await fsp.rm(disk, { force: true });
    await fsp.writeFile(disk, '');
    await fsp.truncate(disk, DEMO_DISK_BYTES);
  }
}

async function prepare(stop: AbortSignal): Promise<Demo> {
  const dir = path.resolve('.demo');
  const configFile = path.join(dir, 'mirrorbd.conf');
  await fsp.mkdir(dir, { recursive: true });
  // Daemons of an earlier demo that was killed would hold the disks and ports.
  if (await exists(configFile)) await teardown(dir, configFile, { quiet: true });
  const taken = new Set<number>();
  const nbdPorts = { alpha: 0, beta: 0 };
  const peerPorts = { alpha: 0, beta: 0 };
  for (const n of NODES) nbdPorts[n.name] = await pickPort(n.nbdPort, taken);
  for (const n of NODES) peerPorts[n.name] = await pickPort(n.peerPort, taken);
  const d: Demo = { dir, configFile, shownConfig: path.relative(process.cwd(), configFile), nbdPorts, stop };
  await writeConfig(d, peerPorts);
  await freshDisks(dir);
  return d;
}

async function exists(file: string): Promise<boolean> {
  return fsp.access(file).then(
    () => true,
    () => false,
  );
}

// --- the initial sync ---------------------------------------------------------------

async function waitConnected(d: Demo): Promise<void> {
  process.stdout.write('waiting for alpha and beta to connect...\n');
  const deadline = Date.now() + CONNECT_TIMEOUT_MS;
  let last: ResourceStatus | null = null;
  while (!d.stop.aborted && Date.now() < deadline) {
    last = await statusOf(d.dir, 'alpha');
    if (last?.peers[0]?.connection === 'Connected') return;
    await pause(SYNC_POLL_MS, d.stop);
  }
  if (d.stop.aborted) return;
  throw new Error(`alpha and beta did not connect within ${CONNECT_TIMEOUT_MS / 1000} s: ${last?.peers[0]?.lastError ?? 'no status from alpha'}`);
}

/** One line about the sync, from beta's side (the SyncTarget counts what it wrote). */
function syncLine(beta: ResourceStatus | null): string {
  const p = beta?.peers[0];
  if (!beta || !p) return 'initial sync: waiting for beta';
  if (beta.disk === 'UpToDate') return `initial sync: ${formatProgress(100, null)} beta is UpToDate`;
  if (p.syncDonePercent === null) return `initial sync: waiting (beta ${beta.disk}, ${p.connection}, ${p.replication})`;
  return `initial sync: ${formatProgress(p.syncDonePercent, p.resync)}`;
}

/** Until beta is UpToDate: a bar redrawn in place on a terminal, a line a second otherwise. */
async function showInitialSync(d: Demo): Promise<void> {
  const tty = process.stdout.isTTY === true;
  const started = Date.now();
  let lastPrinted = 0;
  let beta: ResourceStatus | null = null;
  while (!d.stop.aborted) {
    beta = await statusOf(d.dir, 'beta');
    const done = beta?.disk === 'UpToDate';
    if (tty) process.stdout.write(`\r\x1b[K${syncLine(beta)}`);
    else if (done || Date.now() - lastPrinted >= REFRESH_MS) {
      process.stdout.write(`${syncLine(beta)}\n`);
      lastPrinted = Date.now();
    }
    if (done) break;
    if (Date.now() - started > SYNC_TIMEOUT_MS) throw new Error(`the initial sync did not finish within ${SYNC_TIMEOUT_MS / 60_000} minutes`);
    await pause(SYNC_POLL_MS, d.stop);
  }
  if (tty) process.stdout.write('\n');
  if (beta?.disk === 'UpToDate') {
    const sec = (Date.now() - started) / 1000;
    process.stdout.write(`${formatBytes(beta.sizeBytes)} copied from alpha to beta in about ${sec.toFixed(1)} s\n`);
  }
}

// --- while it runs --------------------------------------------------------------------

/** What to try, for the node that is Primary now (it changes after a failover). */
function instructions(d: Demo, primary: NodeName | null): string {
  const serving = primary ?? 'alpha';
  const other: NodeName = serving === 'alpha' ? 'beta' : 'alpha';
  const uri = uriOf(d.nbdPorts[serving]);
  const mb = `mirrorbd -c ${d.shownConfig}`;
  return [
    primary ? `The export is up on ${primary} (Primary): ${uri}` : `No node is Primary now; ${serving}'s export would be ${uri}`,
    '',
    'Try, in another terminal (Debian: libnbd-bin, qemu-utils, nbd-client):',
    `  nbdinfo ${uri}`,
    `  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' ${uri}`,
    `  nbdcopy ${uri} backup.raw`,
    `  nbd-client 127.0.0.1 ${d.nbdPorts[serving]} -N ${RESOURCE} /dev/nbd0      # where the kernel has the nbd module`,
    '',
    `A failover (here mirrorbd is: ${mirrorbdCommand()}):`,
    `  ${mb} --node ${serving} secondary ${RESOURCE}`,
    `  ${mb} --node ${other} primary ${RESOURCE}        # then use ${uriOf(d.nbdPorts[other])}`,
    '',
    'Ctrl-C stops the demo.',
    '',
  ].join('\n');
}

async function bothStatus(d: Demo): Promise<{ text: string; primary: NodeName | null }> {
  const parts: string[] = [];
  let primary: NodeName | null = null;
  for (const n of NODES) {
    const s = await statusOf(d.dir, n.name);
    if (s?.role === 'Primary') primary = n.name;
    parts.push(s ? formatStatus([s]) : `${RESOURCE} node:${n.name}: its daemon does not answer\n`);
  }
  return { text: parts.join('\n'), primary };
}

/**
 * Every second until stopped. A terminal gets the screen redrawn (with the
 * instructions on top, for the Primary of the moment); a pipe gets the
 * status again only when it changed, so a log of the demo stays readable.
 */
async function showLiveStatus(d: Demo): Promise<void> {
  const tty = process.stdout.isTTY === true;
  let shown = '';
  while (!d.stop.aborted) {
    const { text, primary } = await bothStatus(d);
    if (d.stop.aborted) break;
    if (tty) {
      process.stdout.write(`\x1b[2J\x1b[Hmirrorbd demo   ${new Date().toLocaleTimeString()}\n\n${instructions(d, primary)}\n${text}`);
    } else if (text !== shown) {
      process.stdout.write(`--- status at ${new Date().toLocaleTimeString()}\n${text}`);
    }
    shown = text;
    await pause(REFRESH_MS, d.stop);
  }
}

// --- stopping -------------------------------------------------------------------------

/** The pid of the node's daemon, if it is alive and really one of this demo's (same config file). */
async function demoDaemonPid(dir: string, configFile: string, node: string): Promise<number | null> {
  const pid = await readPid(daemonPaths(runDirOf(dir, node), node).pid);
  if (pid === null || !processAlive(pid)) return null;
  try {
    const argv = (await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    return argv.includes(configFile) && argv.includes('daemon') ? pid : null;
  } catch {
    // Without /proc, trust the pid file: it is in the demo's own run dir.
    return pid;
  }
}

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (processAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  return !processAlive(pid);
}

/**
 * Demote and take down one node; its daemon (started by `up`) exits with
 * its last resource. One that has not exited after a grace period is ended
 * by the pid in its pid file. True when it ended on its own (or none ran).
 */
async function stopNode(dir: string, configFile: string, node: string, say: (s: string) => void): Promise<boolean> {
  const pid = await demoDaemonPid(dir, configFile, node);
  if (pid === null) return true;
  say(`${node}: secondary --force, down\n`);
  await cli(configFile, node, ['secondary', RESOURCE, '--force']);
  const down = await cli(configFile, node, ['down', RESOURCE]);
  if (down.code !== 0 && !down.err.includes('ERR_NOT_UP')) say(`  ${node}: down failed: ${down.err.trim()}\n`);
  if (await waitGone(pid, DAEMON_EXIT_GRACE_MS)) return true;
  say(`  ${node}: its daemon (pid ${pid}) did not exit; ending it\n`);
  process.kill(pid, 'SIGTERM');
  if (!(await waitGone(pid, DAEMON_EXIT_GRACE_MS))) process.kill(pid, 'SIGKILL');
  return false;
}

/** Both nodes at once: neither waits for the other, so Ctrl-C is answered quickly. */
async function teardown(dir: string, configFile: string, opts: { quiet: boolean }): Promise<boolean> {
  const say = (s: string): void => {
    if (!opts.quiet) process.stdout.write(s);
  };
  const results = await Promise.all(NODES.map((n) => stopNode(dir, configFile, n.name, say)));
  return results.every(Boolean);
}

// --- main -----------------------------------------------------------------------------------

async function run(stop: AbortSignal): Promise<void> {
  process.stdout.write('mirrorbd demo: two nodes, alpha and beta, replicating one resource on 127.0.0.1\n\n');
  const d = await prepare(stop);
  try {
    for (const n of NODES) if (!stop.aborted) await step(d, n.name, ['create-md', RESOURCE, '--force']);
    for (const n of NODES) if (!stop.aborted) await step(d, n.name, ['up', RESOURCE]);
    if (!stop.aborted) await waitConnected(d);
    if (!stop.aborted) await step(d, 'alpha', ['primary', RESOURCE, '--force']);
    if (!stop.aborted) await showInitialSync(d);
    if (!stop.aborted) process.stdout.write(`\n${instructions(d, 'alpha')}\n`);
    await showLiveStatus(d);
  } finally {
    process.stdout.write('\nstopping the demo\n');
    const clean = await teardown(d.dir, d.configFile, { quiet: false });
    process.stdout.write(clean ? 'stopped.\n' : 'stopped (a daemon had to be ended by its pid).\n');
  }
}

const controller = new AbortController();
const onSignal = (): void => {
  if (controller.signal.aborted) process.stdout.write('\n(still stopping)\n');
  controller.abort();
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

run(controller.signal).then(
  () => {
    process.exitCode = 0;
  },
  (e: unknown) => {
    process.stderr.write(`demo failed: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
