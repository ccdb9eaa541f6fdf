/**
 * A pair of real daemons (test/helpers/pair.ts) with the parts of the
 * config the role tests need: `net` policies, `options` and `handlers`.
 * Every handler runs one script, hook.sh, which appends its environment to
 * a log per node and then does what the test asked for through a mode file
 * (exit with a status, sleep, or outdate the peer through the CLI, as a
 * fence-peer script on a real cluster would do over ssh).
 *
 * Also here: status and an event recorder read from the daemon's control
 * socket (or `mirrorbd events --json` as a child process), the setup steps
 * of a scenario sent the same way (the operator's steps under test go
 * through the CLI), qemu-io in the foreground and the background, and a
 * reader for the data area of a disk. Everything started here is ended by
 * `stop()`, by pid, also after a failed test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach } from 'vitest';
import { callDaemon, type ControlCall } from '../../../src/cli/control-client.js';
import { daemonPaths } from '../../../src/daemon/run-dir.js';
import { daemonLog, pollStatus, resourceConfig, stopDaemon } from '../../helpers/cluster-node.js';
import { FAST_NET, makePair, type Pair, type PairNode, type StatusJson } from '../../helpers/pair.js';
import { cliPath, mustSucceed, type CliResult } from '../../helpers/single-node.js';

export { killDaemon } from '../../helpers/cluster-node.js';

export const HANDLER_NAMES = [
  'fence-peer',
  'split-brain',
  'before-promote',
  'after-promote',
  'after-demote',
  'before-resync-target',
  'after-resync-target',
] as const;
export type HookName = (typeof HANDLER_NAMES)[number];

export interface ClusterOptions {
  /** Lines inside `net { }` after the fast timers (fencing, after-sb-*...). */
  net?: string;
  /** Lines inside `options { }`. */
  options?: string;
  /** Handlers to configure; each runs hook.sh with its name. */
  handlers?: readonly HookName[];
  diskSizeBytes?: number;
}

/** What a handler does, per node and handler (see hook.sh). */
export type HookMode =
  | { kind: 'exit'; code: number; sleepSec?: number }
  /** `mirrorbd outdate` on the peer named by MIRRORBD_PEER: exit 4 when it worked, 5 when not. */
  | { kind: 'outdate-peer'; sleepSec?: number };

/** One run of a handler, as hook.sh logged it. */
export interface HookRun {
  handler: string;
  env: Record<string, string>;
}

export interface ResourceStatusJson extends StatusJson {
  roleReason: string;
  suspended: string[];
  flags: string[];
  nbd: { address: string | null; clients: Array<{ id: number }> };
  peers: Array<
    StatusJson['peers'][number] & {
      splitBrain: boolean;
      lastDecision: string | null;
      lastError: string | null;
      bytesSent: number;
      bytesReceived: number;
      resync: { doneBytes: number; totalBytes: number } | null;
    }
  >;
}

export interface MirrorEventJson {
  type: string;
  seq: number;
  resource: string;
  [field: string]: unknown;
}

export class EventRecorder {
  readonly events: MirrorEventJson[] = [];
  private buffered = '';
  private errors = '';

  constructor(
    readonly node: PairNode,
    private readonly end: () => void,
  ) {}

  /** Text from the stream: lines of JSON (`events --json`, or the control socket's {"event": ...}). */
  feed(text: string): void {
    this.buffered += text;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl);
      this.buffered = this.buffered.slice(nl + 1);
      if (line.trim() === '') continue;
      const msg = JSON.parse(line) as Record<string, unknown>;
      // the socket wraps each event and answers the subscription first; the CLI prints events bare
      if (msg.event !== undefined) this.events.push(msg.event as MirrorEventJson);
      else if (msg.ok === undefined) this.events.push(msg as MirrorEventJson);
    }
  }

  error(text: string): void {
    this.errors += text;
  }

  of(type: string): MirrorEventJson[] {
    return this.events.filter((e) => e.type === type);
  }

  /** Wait for an event that matches; fails with what was recorded. */
  async waitFor(check: (e: MirrorEventJson) => boolean, what: string, timeoutMs = 20_000): Promise<MirrorEventJson> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.find(check);
      if (found) return found;
      if (Date.now() > deadline) {
        throw new Error(`no event on ${this.node.name}: ${what}; ${this.errors.trim()} got ${JSON.stringify(this.events)}`);
      }
      await sleep(50);
    }
  }

  /** Forget what was recorded so far (the next waits see only what follows). */
  clear(): void {
    this.events.length = 0;
  }

  stop(): void {
    this.end();
  }
}

export interface Cluster extends Pair {
  /** Rewrite the config (takes effect at the next `up`). */
  configure(opts: ClusterOptions): Promise<void>;
  setHook(node: PairNode, handler: HookName, mode: HookMode): Promise<void>;
  /** The handler runs hook.sh logged on this node, oldest first. */
  hookRuns(node: PairNode, handler?: HookName): Promise<HookRun[]>;
  /**
   * Follow the node's events from now on: through `mirrorbd events r0
   * --json` with `viaCli`, else straight from the control socket (the same
   * stream, without a process to start).
   */
  record(node: PairNode, opts?: { viaCli?: boolean }): Promise<EventRecorder>;
  /** The last lines of both daemons' logs (for a failed test's report). */
  logTail(lines?: number): Promise<string>;
  /** Start qemu-io in the background; `stop()` ends it if it still runs. */
  qemuIoBackground(node: PairNode, cmds: string[]): Background;
}

export interface Background {
  done: Promise<{ code: number; stdout: string; stderr: string }>;
  finished(): boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * What `status r0 --json` prints, asked of the control socket directly:
 * polling through a new CLI process each time costs most of a second on a
 * busy machine. The commands under test go through the CLI.
 */
export async function status(n: PairNode): Promise<ResourceStatusJson> {
  const list = (await callDaemon(daemonPaths(n.runDir, n.name).socket, { cmd: 'status', resource: 'r0' }, 10_000)) as ResourceStatusJson[];
  return list[0]!;
}

/**
 * A command straight to a node's daemon, for the steps that set a scenario
 * up (the operator's steps under test go through the CLI). Rejects with the
 * daemon's error.
 */
export async function ctl(n: PairNode, cmd: 'primary' | 'secondary', opts?: { force?: boolean }): Promise<void>;
export async function ctl(n: PairNode, cmd: 'connect', opts?: { discardMyData?: boolean }): Promise<void>;
export async function ctl(n: PairNode, cmd: 'disconnect' | 'outdate' | 'resume-io'): Promise<void>;
export async function ctl(n: PairNode, cmd: 'new-current-uuid', opts: { clearBitmap: boolean }): Promise<void>;
export async function ctl(n: PairNode, cmd: string, opts: Record<string, unknown> = {}): Promise<void> {
  const defaults: Record<string, Record<string, unknown>> = {
    primary: { force: false },
    secondary: { force: false },
    connect: { discardMyData: false },
  };
  const call = { cmd, resource: 'r0', ...(defaults[cmd] ?? {}), ...opts } as unknown as ControlCall;
  await callDaemon(daemonPaths(n.runDir, n.name).socket, call, 30_000);
}

/** Poll until `check` passes on the node's status, or fail with the last status. */
export function waitFor(n: PairNode, check: (s: ResourceStatusJson) => boolean, timeoutMs = 20_000): Promise<ResourceStatusJson> {
  return pollStatus(n, () => status(n), check, timeoutMs, 50);
}

function quote(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/**
 * The handler script. $1 is the handler name. The mode file holds
 * `[sleep SECONDS] exit CODE` or `[sleep SECONDS] outdate-peer`.
 */
function hookScript(dir: string, configFile: string): string {
  return [
    '#!/bin/sh',
    `dir=${dir}`,
    `{ echo "--- $1"; env | grep -E '^(MIRRORBD|DRBD)_' | sort; echo "..."; } >> "$dir/hook-$MIRRORBD_NODE.log"`,
    'mode=$(cat "$dir/mode-$MIRRORBD_NODE-$1" 2>/dev/null || echo "exit 0")',
    'set -- $mode',
    'if [ "$1" = sleep ]; then sleep "$2"; shift 2; fi',
    'case "$1" in',
    '  exit) exit "$2" ;;',
    '  outdate-peer)',
    `    if ${quote(process.execPath)} ${quote(cliPath)} -c ${quote(configFile)} --node "$MIRRORBD_PEER" outdate "$MIRRORBD_RESOURCE"; then exit 4; fi`,
    '    exit 5 ;;',
    'esac',
    'exit 1',
    '',
  ].join('\n');
}

export async function makeCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const pair = await makePair({ diskSizeBytes: opts.diskSizeBytes ?? 16 * 1024 * 1024 });
  const children: ChildProcess[] = [];
  const recorders: EventRecorder[] = [];
  const hook = path.join(pair.dir, 'hook.sh');
  await fsp.writeFile(hook, hookScript(pair.dir, pair.configFile), { mode: 0o755 });

  const configure = async (o: ClusterOptions): Promise<void> => {
    const handlers = (o.handlers ?? []).map((h) => `${h} ${quote(`/bin/sh ${hook} ${h}`)};`);
    const sections = [
      `net { ${FAST_NET} ${o.net ?? ''} }`,
      `options { handler-timeout 20; ${o.options ?? ''} }`,
      `handlers { ${handlers.join(' ')} }`,
    ];
    await fsp.writeFile(pair.configFile, resourceConfig(pair.dir, sections, pair.nodes));
  };
  await configure(opts);

  const cluster: Cluster = {
    ...pair,
    configure,
    setHook: async (node, handler, mode) => {
      const sleepPart = mode.sleepSec ? `sleep ${mode.sleepSec} ` : '';
      const action = mode.kind === 'exit' ? `exit ${mode.code}` : 'outdate-peer';
      await fsp.writeFile(path.join(pair.dir, `mode-${node.name}-${handler}`), `${sleepPart}${action}\n`);
    },
    hookRuns: async (node, handler) => {
      let text = '';
      try {
        text = await fsp.readFile(path.join(pair.dir, `hook-${node.name}.log`), 'utf8');
      } catch {
        return [];
      }
      const runs: HookRun[] = [];
      for (const block of text.split('--- ').slice(1)) {
        const [head, ...rest] = block.split('\n');
        const env: Record<string, string> = {};
        for (const line of rest) {
          if (line === '...') break;
          const eq = line.indexOf('=');
          if (eq > 0) env[line.slice(0, eq)] = line.slice(eq + 1);
        }
        runs.push({ handler: head!.trim(), env });
      }
      return handler === undefined ? runs : runs.filter((r) => r.handler === handler);
    },
    record: async (node, o = {}) => {
      if (o.viaCli) {
        const child = spawn(process.execPath, [cliPath, '-c', pair.configFile, '--node', node.name, 'events', 'r0', '--json'], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        children.push(child);
        const rec = new EventRecorder(node, () => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
        });
        child.stdout.setEncoding('utf8').on('data', (d: string) => rec.feed(d));
        child.stderr.setEncoding('utf8').on('data', (d: string) => rec.error(d));
        recorders.push(rec);
        // The CLI subscribes once it has started and connected; give it that moment.
        await sleep(700);
        return rec;
      }
      const socket = net.createConnection(daemonPaths(node.runDir, node.name).socket);
      const rec = new EventRecorder(node, () => socket.destroy());
      recorders.push(rec);
      socket.setEncoding('utf8');
      socket.on('error', (e) => rec.error(e.message));
      const subscribed = new Promise<void>((resolve) => {
        socket.on('data', (d: string) => {
          rec.feed(d);
          // the first line answers the subscription
          resolve();
        });
      });
      socket.on('connect', () => socket.write(`${JSON.stringify({ id: 1, cmd: 'events', resource: 'r0' })}\n`));
      await subscribed;
      return rec;
    },
    qemuIoBackground: (node, cmds) => {
      const child = spawn('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), node.uri], { stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      let stdout = '';
      let stderr = '';
      let finished = false;
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const done = new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
        child.on('close', (code) => {
          finished = true;
          resolve({ code: code ?? -1, stdout, stderr });
        }),
      );
      return { done, finished: () => finished };
    },
    logTail: async (lines = 60) => (await Promise.all(pair.nodes.map((n) => daemonLog(n, lines)))).join('\n'),
    stop: async () => {
      for (const r of recorders) r.stop();
      for (const c of children) if (c.exitCode === null && c.signalCode === null && c.pid !== undefined) c.kill('SIGKILL');
      // Both daemons at once (each takes a moment to shut down cleanly); then
      // the pair's own stop finds them gone and removes the files.
      await Promise.all(pair.nodes.map(stopDaemon));
      await pair.stop();
    },
  };
  return cluster;
}

/**
 * For a test file whose tests each make their own cluster, with these
 * handlers: the maker, given the `net` lines. After each test the clusters
 * it made are stopped, and their daemon logs printed when it failed.
 */
export function clusterPerTest(handlers: readonly HookName[]): (net: string) => Promise<Cluster> {
  const clusters: Cluster[] = [];
  afterEach(async (ctx) => {
    while (clusters.length > 0) {
      const c = clusters.pop()!;
      if (ctx.task.result?.state === 'fail') console.log(await c.logTail());
      await c.stop();
    }
  });
  return async (net) => {
    const c = await makeCluster({ net, handlers });
    clusters.push(c);
    return c;
  };
}

/**
 * create-md and up on both; the fresh (all-zero) disks are declared equal
 * with new-current-uuid --clear-bitmap, so both are UpToDate and connected
 * without a full sync. With `primary`, that node is promoted.
 */
export async function upSynced(c: Cluster, primary?: PairNode): Promise<void> {
  // The two nodes are independent until they connect: set both up at once.
  await Promise.all(c.nodes.map((n) => mustSucceed(n.cli('create-md', 'r0'))));
  await Promise.all(c.nodes.map((n) => mustSucceed(n.cli('up', 'r0'))));
  await waitFor(c.alpha, (s) => s.peers[0]?.replication === 'Established');
  await waitFor(c.beta, (s) => s.peers[0]?.replication === 'Established');
  await ctl(c.alpha, 'new-current-uuid', { clearBitmap: true });
  for (const n of c.nodes) await waitFor(n, (s) => s.disk === 'UpToDate' && s.peers[0]?.peerDisk === 'UpToDate');
  if (primary) {
    await ctl(primary, 'primary');
    const other = primary === c.alpha ? c.beta : c.alpha;
    await waitFor(other, (s) => s.peers[0]?.role === 'Primary');
  }
}

export function run(cmd: string, args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code: code ?? -1, stderr, stdout }));
  });
}

/** qemu-io commands against a node's export; fails with qemu-io's output. */
export async function qemuIo(node: PairNode, cmds: string[]): Promise<string> {
  const r = await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), node.uri]);
  // qemu-io reports a failed command on stdout and may still exit 0.
  if (r.code !== 0 || /failed|error/i.test(r.stdout)) throw new Error(`qemu-io on ${node.name} failed (${r.code}): ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** The first `bytes` of a disk file: its data area with internal metadata (docs/metadata.md). */
export async function dataArea(file: string, bytes: number): Promise<Buffer> {
  const fh = await fsp.open(file, 'r');
  try {
    const buf = Buffer.alloc(bytes);
    const { bytesRead } = await fh.read(buf, 0, bytes, 0);
    if (bytesRead !== bytes) throw new Error(`${file}: read ${bytesRead} of ${bytes} bytes`);
    return buf;
  } finally {
    await fh.close();
  }
}

/** The 4 KiB blocks where two equally long buffers differ (for a readable failure). */
export function differingBlocks(a: Buffer, b: Buffer, max = 8): number[] {
  const out: number[] = [];
  for (let at = 0; at < a.length && out.length < max; at += 4096) {
    if (!a.subarray(at, at + 4096).equals(b.subarray(at, at + 4096))) out.push(at / 4096);
  }
  return out;
}

export { sleep };
