/**
 * Failover time: two data nodes (alpha, beta) and a witness on loopback,
 * `quorum majority; auto-promote yes;` and the ping settings docs/ha.md
 * recommends. In every repetition alpha is Primary with an NBD client
 * writing; alpha's daemon is killed (SIGKILL by its PID, or SIGSTOP to
 * model a node that hangs without closing its sockets), and a client that
 * retries connecting to beta every few milliseconds issues one write as soon
 * as the export opens. The time measured is from the signal to that write's
 * successful reply; beta's `role` event gives the moment it became Primary.
 * Then alpha comes back, resyncs, and is made Primary again for the next
 * repetition.
 *
 * Every process started here is ended by its PID on exit or Ctrl-C.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import { freePort, isInterrupted, onCleanup, readPidFile, runChecked, terminatePid, waitForExit, waitForReaped } from './proc.js';
import { BENCH_HOST, MIRRORBD_CLI } from './servers.js';
import { parseCommandLine, positiveInt } from './options.js';
import { median } from './stats.js';
import { markdownTable } from './table.js';

const RESOURCE = 'r0';
const DATA_NODES = ['alpha', 'beta'] as const;
const NODES = ['alpha', 'beta', 'witness'] as const;
type Node = (typeof NODES)[number];

/** The settings under test (docs/ha.md explains each). */
export const FAILOVER_NET = 'protocol C; ping-int 1; ping-timeout 0.5; connect-int 1; timeout 1;';
export const FAILOVER_OPTIONS = 'quorum majority; on-no-quorum suspend-io; auto-promote yes;';

const DISK_BYTES = 64 * 1024 * 1024;
const BLOCK = 4096;
const CLI_TIMEOUT_MS = 60_000;
const STEADY_TIMEOUT_MS = 60_000;
/** A failover that has not served a write by then counts as failed. */
const FAILOVER_LIMIT_MS = 30_000;
/** Acknowledged writes on alpha before the signal: the load is really running. */
const WRITES_BEFORE_KILL = 50;

const USAGE = `usage: bench failover [options]

  --reps N             repetitions (default 20)
  --signal KILL|STOP   how alpha's daemon dies: KILL (kill -9: the kernel
                       closes its sockets) or STOP (it hangs with its sockets
                       open, as a frozen or cut-off node: found by ping-timeout)
                       (default KILL)
  --probe-ms N         the probing client retries beta every N ms (default 5)
  --dir DIR            where the work directory goes (default the system temp dir)
  --keep               keep the work directory (daemon logs in its run-* dirs)
  -h, --help           this text
`;

interface Options {
  reps: number;
  signal: 'SIGKILL' | 'SIGSTOP';
  probeMs: number;
  dir: string;
  keep: boolean;
}

function parseOptions(argv: string[]): Options | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      reps: { type: 'string' },
      signal: { type: 'string' },
      'probe-ms': { type: 'string' },
      dir: { type: 'string' },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  const signal = (values.signal ?? 'KILL').toUpperCase().replace(/^SIG/, '');
  if (signal !== 'KILL' && signal !== 'STOP') throw new Error(`--signal is KILL or STOP, not "${values.signal}"`);
  return {
    reps: positiveInt('reps', values.reps, 20),
    signal: signal === 'KILL' ? 'SIGKILL' : 'SIGSTOP',
    probeMs: positiveInt('probe-ms', values['probe-ms'], 5),
    dir: values.dir ?? tmpdir(),
    keep: values.keep,
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// A minimal NBD client: fixed newstyle, NBD_OPT_GO, simple replies, WRITE.

const NBD_OPT_GO = 7;
const NBD_REP_ACK = 1;
const NBD_REP_ERR_BIT = 0x80000000;
const NBD_REQUEST_MAGIC = 0x25609513;
const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
const NBD_CMD_WRITE = 1;

class NbdWriter {
  private buf = Buffer.alloc(0);
  private waiter: ((reply: { cookie: bigint; error: number } | Error) => void) | null = null;
  private cookie = 1n;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      this.deliver();
    });
    socket.on('error', () => this.fail(new Error('connection error')));
    socket.on('close', () => this.fail(new Error('connection closed')));
  }

  /** Connects and negotiates; rejects with the server's reason when the export is refused. */
  static open(port: number, timeoutMs: number): Promise<NbdWriter> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ host: BENCH_HOST, port });
      socket.setNoDelay(true);
      let buf = Buffer.alloc(0);
      let greeted = false;
      const timer = setTimeout(() => finish(new Error('handshake timed out')), timeoutMs);
      const finish = (r: Error | null): void => {
        clearTimeout(timer);
        socket.removeAllListeners('data');
        socket.removeAllListeners('error');
        socket.removeAllListeners('close');
        if (r !== null) {
          socket.destroy();
          reject(r);
        } else {
          // the handshake's listeners are gone: the session's take over
          const w = new NbdWriter(socket);
          if (buf.length > 0) w.buf = buf;
          resolve(w);
        }
      };
      socket.on('error', (e) => finish(e));
      socket.on('close', () => finish(new Error('closed during the handshake')));
      socket.on('data', (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
        if (!greeted) {
          // NBDMAGIC, IHAVEOPT, 16-bit handshake flags
          if (buf.length < 18) return;
          buf = buf.subarray(18);
          greeted = true;
          const name = Buffer.from(RESOURCE);
          const opt = Buffer.alloc(4 + 16 + 4 + name.length + 2);
          opt.writeUInt32BE(3, 0); // client flags: FIXED_NEWSTYLE | NO_ZEROES
          opt.write('IHAVEOPT', 4, 'latin1');
          opt.writeUInt32BE(NBD_OPT_GO, 12);
          opt.writeUInt32BE(4 + name.length + 2, 16);
          opt.writeUInt32BE(name.length, 20);
          name.copy(opt, 24);
          opt.writeUInt16BE(0, 24 + name.length); // no information requests
          socket.write(opt);
        }
        while (buf.length >= 20) {
          const type = buf.readUInt32BE(12);
          const len = buf.readUInt32BE(16);
          if (buf.length < 20 + len) return;
          const data = buf.subarray(20, 20 + len);
          buf = buf.subarray(20 + len);
          if (type >= NBD_REP_ERR_BIT) return finish(new Error(data.toString('utf8') || `option error 0x${type.toString(16)}`));
          if (type === NBD_REP_ACK) return finish(null);
        }
      });
    });
  }

  private deliver(): void {
    if (this.buf.length < 16 || !this.waiter) return;
    const magic = this.buf.readUInt32BE(0);
    const w = this.waiter;
    this.waiter = null;
    if (magic !== NBD_SIMPLE_REPLY_MAGIC) {
      w(new Error(`unexpected reply magic 0x${magic.toString(16)}`));
      return;
    }
    const error = this.buf.readUInt32BE(4);
    const cookie = this.buf.readBigUInt64BE(8);
    this.buf = this.buf.subarray(16);
    w({ cookie, error });
  }

  private fail(e: Error): void {
    const w = this.waiter;
    this.waiter = null;
    w?.(e);
  }

  /** One write, waited for; resolves with the NBD error (0: success). */
  write(offset: number, data: Buffer, timeoutMs: number): Promise<number> {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    header.writeUInt16BE(0, 4);
    header.writeUInt16BE(NBD_CMD_WRITE, 6);
    header.writeBigUInt64BE(this.cookie++, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(data.length, 24);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`write not answered within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = (r) => {
        clearTimeout(timer);
        if (r instanceof Error) reject(r);
        else resolve(r.error);
      };
      this.socket.cork();
      this.socket.write(header);
      this.socket.write(data);
      this.socket.uncork();
      this.deliver();
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

// ---------------------------------------------------------------------------
// The three nodes

interface Trio {
  dir: string;
  conf: string;
  nbdPorts: Record<'alpha' | 'beta', number>;
  cli(node: Node, ...args: string[]): Promise<string>;
  pid(node: Node): Promise<number>;
  status(node: Node): Promise<NodeStatus>;
}

interface NodeStatus {
  role: string;
  disk: string;
  quorum: { have: boolean };
  nbd: { clients: unknown[] };
  peers: Array<{ node: string; connection: string; replication: string; peerDisk: string; outOfSyncBytes: number | null }>;
}

async function makeTrio(work: string): Promise<Trio> {
  const ports = new Map<Node, { repl: number; nbd: number }>();
  for (const n of NODES) ports.set(n, { repl: await freePort(BENCH_HOST), nbd: n === 'witness' ? 0 : await freePort(BENCH_HOST) });
  const on = (n: Node, id: number): string => {
    const p = ports.get(n)!;
    if (n === 'witness') return `  on ${n} { node-id ${id}; disk none; address ${BENCH_HOST}:${p.repl}; }`;
    return `  on ${n} { node-id ${id}; disk ${join(work, `${n}.img`)}; address ${BENCH_HOST}:${p.repl}; nbd-address ${BENCH_HOST}:${p.nbd}; }`;
  };
  for (const n of DATA_NODES) {
    const img = join(work, `${n}.img`);
    await writeFile(img, '');
    await truncate(img, DISK_BYTES);
  }
  const conf = join(work, 'mirrorbd.conf');
  await writeFile(
    conf,
    [
      `global { run-dir ${join(work, 'run-%n')}; }`,
      `resource ${RESOURCE} {`,
      '  meta-disk internal;',
      `  net { ${FAILOVER_NET} }`,
      `  options { ${FAILOVER_OPTIONS} }`,
      '  disk { resync-rate 1024G; }',
      ...NODES.map((n, i) => on(n, i)),
      '}',
      '',
    ].join('\n'),
  );
  const pidFile = (n: Node): string => join(work, `run-${n}`, `${n}.pid`);
  const trio: Trio = {
    dir: work,
    conf,
    nbdPorts: { alpha: ports.get('alpha')!.nbd, beta: ports.get('beta')!.nbd },
    cli: async (node, ...args) => (await runChecked(process.execPath, [MIRRORBD_CLI, '-c', conf, '--node', node, ...args], { timeoutMs: CLI_TIMEOUT_MS })).stdout,
    pid: (node) => readPidFile(pidFile(node), 5000),
    status: async (node) => (JSON.parse(await trio.cli(node, 'status', RESOURCE, '--json')) as NodeStatus[])[0]!,
  };
  onCleanup('mirrorbd daemons', async () => {
    for (const n of NODES) {
      const pid = await readPidFile(pidFile(n), 0).catch(() => null);
      if (pid === null) continue;
      // a stopped daemon cannot handle SIGTERM: let it go on first
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        continue;
      }
      await terminatePid(pid, 5000);
    }
  });
  return trio;
}

async function waitForStatus(trio: Trio, node: Node, check: (s: NodeStatus) => boolean, what: string): Promise<void> {
  const until = Date.now() + STEADY_TIMEOUT_MS;
  let last: NodeStatus | null = null;
  while (Date.now() < until) {
    last = await trio.status(node);
    if (check(last)) return;
    await sleep(100);
  }
  throw new Error(`${node}: no ${what} within ${STEADY_TIMEOUT_MS} ms; last status ${JSON.stringify(last)}`);
}

const peer = (s: NodeStatus, name: Node) => s.peers.find((p) => p.node === name);

/** alpha Primary, beta UpToDate and in sync with it, the witness connected to both. */
async function waitSteady(trio: Trio): Promise<void> {
  await waitForStatus(trio, 'beta', (s) => s.disk === 'UpToDate' && peer(s, 'alpha')?.replication === 'Established' && peer(s, 'witness')?.connection === 'Connected', 'sync with alpha');
  await waitForStatus(
    trio,
    'alpha',
    (s) => s.role === 'Primary' && s.quorum.have && peer(s, 'beta')?.peerDisk === 'UpToDate' && peer(s, 'beta')?.outOfSyncBytes === 0 && peer(s, 'witness')?.connection === 'Connected',
    'steady Primary',
  );
}

/** beta's `role` events, from one `events --json` follower for the whole run. */
class RoleEvents {
  readonly promotions: number[] = [];
  private constructor(private readonly child: ChildProcess) {}

  static async start(trio: Trio, node: Node): Promise<RoleEvents> {
    const child = spawn(process.execPath, [MIRRORBD_CLI, '-c', trio.conf, '--node', node, 'events', RESOURCE, '--json'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const pid = child.pid;
    onCleanup(`events ${node}`, async () => {
      if (pid !== undefined && child.exitCode === null && child.signalCode === null) await terminatePid(pid, 3000);
    });
    const r = new RoleEvents(child);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const e = JSON.parse(line) as { type?: string; to?: string; timeMs?: number };
        if (e.type === 'role' && e.to === 'Primary' && typeof e.timeMs === 'number') r.promotions.push(e.timeMs);
      } catch {
        // not an event line
      }
    });
    // it subscribes once connected; the setup that follows takes far longer
    await sleep(500);
    return r;
  }

  /** The first promotion at or after wall-clock time `sinceMs`, waited for a moment. */
  async promotedAfter(sinceMs: number): Promise<number | null> {
    for (let i = 0; i < 20; i++) {
      const t = this.promotions.find((x) => x >= sinceMs);
      if (t !== undefined) return t;
      await sleep(50);
    }
    return null;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }
}

// ---------------------------------------------------------------------------
// One repetition

interface RepResult {
  /** Signal to beta's role event (ms), from the daemons' wall clock. */
  promotedMs: number | null;
  /** Signal to the first successful write on beta (ms). */
  firstWriteMs: number;
  /** Connection attempts the probing client made. */
  attempts: number;
  /** Writes alpha acknowledged before it died. */
  acked: number;
}

/** Writes 4 KiB blocks at random places until the server goes away. */
function writeLoad(port: number): { acked: () => number; started: Promise<void>; stop: () => void } {
  let acked = 0;
  let stopped = false;
  let client: NbdWriter | null = null;
  let signalStart: () => void = () => undefined;
  const started = new Promise<void>((r) => (signalStart = r));
  const blocks = (DISK_BYTES - 4 * 1024 * 1024) / BLOCK; // stay clear of the internal metadata at the end
  void (async () => {
    try {
      client = await NbdWriter.open(port, 5000);
      const data = randomBytes(BLOCK);
      while (!stopped) {
        const err = await client.write(Math.floor(Math.random() * blocks) * BLOCK, data, 10_000);
        if (err !== 0) break;
        acked++;
        if (acked === WRITES_BEFORE_KILL) signalStart();
      }
    } catch {
      // the Primary died under the client
    } finally {
      signalStart();
      client?.close();
    }
  })();
  return {
    acked: () => acked,
    started,
    stop: () => {
      stopped = true;
      client?.close();
    },
  };
}

/** Retries beta every probeMs until its export opens and a write succeeds; the time of that reply. */
async function probeFirstWrite(port: number, probeMs: number, deadline: number): Promise<{ at: number; attempts: number }> {
  const data = Buffer.alloc(BLOCK, 0x5a);
  let attempts = 0;
  while (performance.now() < deadline) {
    attempts++;
    let c: NbdWriter | null = null;
    try {
      c = await NbdWriter.open(port, 2000);
      const err = await c.write(0, data, Math.max(1, deadline - performance.now()));
      if (err === 0) {
        const at = performance.now();
        c.close();
        return { at, attempts };
      }
    } catch {
      // refused (beta is still Secondary) or cut off: try again
    }
    c?.close();
    await sleep(probeMs);
  }
  throw new Error(`beta served no write within ${FAILOVER_LIMIT_MS} ms`);
}

async function repetition(trio: Trio, events: RoleEvents, opts: Options): Promise<RepResult> {
  await waitSteady(trio);
  const load = writeLoad(trio.nbdPorts.alpha);
  await load.started;
  const pid = await trio.pid('alpha');
  const wallAtSignal = Date.now();
  const t0 = performance.now();
  process.kill(pid, opts.signal);
  let probe: { at: number; attempts: number };
  try {
    probe = await probeFirstWrite(trio.nbdPorts.beta, opts.probeMs, t0 + FAILOVER_LIMIT_MS);
  } finally {
    load.stop();
    // a stopped alpha goes for good now; a killed one is gone already
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
    await waitForExit(pid, 5000);
    // `up` takes the PID of a zombie for a running daemon: wait until whoever adopted it has reaped it
    if (!(await waitForReaped(pid, 10_000))) throw new Error(`pid ${pid} was not reaped within 10 s`);
  }
  const promotedAt = await events.promotedAfter(wallAtSignal);
  const result: RepResult = {
    promotedMs: promotedAt === null ? null : promotedAt - wallAtSignal,
    firstWriteMs: probe.at - t0,
    attempts: probe.attempts,
    acked: load.acked(),
  };

  // alpha comes back as Secondary, resyncs, and becomes Primary again
  await trio.cli('alpha', 'up', RESOURCE);
  await waitForStatus(trio, 'alpha', (s) => s.disk === 'UpToDate' && peer(s, 'beta')?.replication === 'Established' && peer(s, 'beta')?.outOfSyncBytes === 0, 'resync from beta');
  await waitForStatus(trio, 'beta', (s) => s.role === 'Primary' && s.nbd.clients.length === 0, 'beta without clients');
  await trio.cli('beta', 'secondary', RESOURCE);
  await waitForStatus(trio, 'alpha', (s) => peer(s, 'beta')?.replication === 'Established' && s.quorum.have, 'alpha ready to be promoted');
  await trio.cli('alpha', 'primary', RESOURCE);
  return result;
}

/** Nearest-rank percentile. */
function percentile(values: readonly number[], p: number): number {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  return v[Math.min(v.length - 1, Math.max(0, Math.ceil((p / 100) * v.length) - 1))]!;
}

const ms = (v: number | null): string => (v === null || !Number.isFinite(v) ? '—' : `${Math.round(v)}`);

export async function failoverMain(argv: string[]): Promise<number> {
  const opts = parseCommandLine('failover', USAGE, argv, parseOptions);
  if (typeof opts === 'number') return opts;
  const work = await mkdtemp(join(opts.dir, 'mirrorbd-bench-failover-'));
  const keep = opts.keep;
  onCleanup('work directory', async () => {
    if (keep) process.stdout.write(`work directory kept: ${work}\n`);
    else await rm(work, { recursive: true, force: true });
  });

  process.stdout.write(`failover: alpha Primary under a write load, ${opts.signal} of its daemon, first write served by beta\n`);
  process.stdout.write(`  net { ${FAILOVER_NET} }\n  options { ${FAILOVER_OPTIONS} }\n\n`);
  const trio = await makeTrio(work);
  for (const n of DATA_NODES) await trio.cli(n, 'create-md', RESOURCE);
  for (const n of NODES) await trio.cli(n, 'up', RESOURCE);
  await waitForStatus(trio, 'alpha', (s) => s.peers.every((p) => p.connection === 'Connected'), 'connection to every peer');
  await waitForStatus(trio, 'beta', (s) => s.peers.every((p) => p.connection === 'Connected'), 'connection to every peer');
  await trio.cli('alpha', 'primary', RESOURCE, '--force');
  const events = await RoleEvents.start(trio, 'beta');

  const results: RepResult[] = [];
  for (let i = 1; i <= opts.reps && !isInterrupted(); i++) {
    const r = await repetition(trio, events, opts);
    results.push(r);
    process.stdout.write(
      `rep ${String(i).padStart(2)}: first write on beta ${ms(r.firstWriteMs).padStart(5)} ms, beta Primary after ${ms(r.promotedMs).padStart(5)} ms` +
        ` (${r.attempts} connection attempts; alpha had acknowledged ${r.acked} writes)\n`,
    );
  }
  if (results.length === 0) return 1;

  const first = results.map((r) => r.firstWriteMs);
  const promoted = results.map((r) => r.promotedMs ?? Number.NaN);
  process.stdout.write(`\n${results.length} repetitions, ${opts.signal}, milliseconds from the signal:\n\n`);
  process.stdout.write(
    `${markdownTable(
      ['', 'median', 'p90', 'max'],
      [
        ['beta Primary (role event)', ms(median(promoted)), ms(percentile(promoted, 90)), ms(Math.max(...promoted.filter(Number.isFinite)))],
        ['first write served by beta', ms(median(first)), ms(percentile(first, 90)), ms(Math.max(...first))],
      ],
    )}\n`,
  );
  const target = 1000;
  const ok = median(first) <= target;
  process.stdout.write(`\nmedian first write ${ms(median(first))} ms: ${ok ? 'within' : 'ABOVE'} the ${target} ms target\n`);
  return 0;
}
