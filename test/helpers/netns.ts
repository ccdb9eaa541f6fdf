/**
 * Network namespaces for multi-node tests: one namespace per node, each with
 * loopback up and an `eth0` that is one end of a veth pair; the other ends
 * hang on a bridge in the root namespace, which holds the first address of a
 * private /24 (so the host reaches every node, e.g. an NBD client against
 * the Primary). Processes run inside a namespace with `ip netns exec`.
 *
 * Faults: `partition(i)` takes node i's link down (it reaches nobody and
 * nobody reaches it), `heal(i)` brings it back; `dropOneWay(from, to)` drops
 * what `from` sends to `to` (nft, else iptables, in `from`'s namespace);
 * `setLink(i, ...)` delays or loses packets on node i's link with tc netem,
 * where the kernel has it (`netemAvailable()`).
 *
 * Names carry the test process's pid in base 36 (`mbdt-<pid>-<k>-<i>` for
 * namespaces, `mbdb-<pid>-<k>` for the bridge, `mbdv-<pid>-<k>-<i>` for the
 * host ends of the veths; interface names stay within 15 characters), so
 * test files running side by side never collide, and what a crashed earlier
 * run left (its pid is gone) is recognised and removed by the next
 * `createNetns`. `destroy()` ends every process the harness started, by its
 * pid, and removes the namespaces and links; the same happens synchronously
 * when the test process exits or is interrupted. Every command is bounded
 * in time.
 *
 * Needs root and iproute2 (`ip`); `dropOneWay` needs nftables or iptables;
 * `setLink` needs the sch_netem kernel module.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { hasTool, requireTools } from './tools.js';

/** Every `ip`, `nft`, `tc` call must answer within this. */
export const COMMAND_TIMEOUT_MS = 10_000;
/** SIGTERM first; SIGKILL after this. */
export const STOP_GRACE_MS = 5_000;

const NS_PREFIX = 'mbdt';
const BRIDGE_PREFIX = 'mbdb';
const VETH_PREFIX = 'mbdv';
/** Node interface names are one base-36 digit: at most this many nodes (and harnesses per process). */
const MAX_INDEX = 36;
/** Second octet of the test subnets: 10.213.X.0/24, X picked free at creation. */
const SUBNET_OCTET2 = 213;

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface NetnsNode {
  /** 0-based position in the harness. */
  index: number;
  /** The namespace's name (for `ip netns exec`). */
  ns: string;
  /** The node's IPv4 address on the test subnet. */
  address: string;
  /** The interface inside the namespace. */
  device: 'eth0';
  /** The host end of the node's veth pair (on the bridge). */
  hostVeth: string;
}

export interface ManagedProcess {
  pid: number;
  /** The node it runs in. */
  node: number;
  /** Resolves with the exit code (null when ended by a signal) once it has exited. */
  exited: Promise<number | null>;
  alive(): boolean;
}

export interface LinkShape {
  /** Added delay in each direction, in milliseconds. */
  delayMs?: number;
  /** Random variation of the delay, in milliseconds. */
  jitterMs?: number;
  /** Packets lost in each direction, in percent (0..100). */
  lossPercent?: number;
}

export interface CreateNetnsOptions {
  /** Number of namespaces (nodes), 1..36. */
  nodes: number;
}

/** Why network namespaces cannot be used here, or null when they can. */
export function netnsUnavailableReason(): string | null {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'network namespaces need root';
  if (!hasTool('ip')) return 'missing tool: ip (iproute2)';
  const r = spawnSync('ip', ['netns', 'list'], { timeout: COMMAND_TIMEOUT_MS, stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) return `ip netns does not work: ${r.stderr?.toString().trim() || 'unknown error'}`;
  return null;
}

/**
 * The tools.ts convention for namespaces: true (and one line printed) when
 * they cannot be used, so the caller skips; throws when MIRRORBD_REQUIRE_TOOLS=1.
 */
export function skipWithoutNetns(): boolean {
  const reason = netnsUnavailableReason();
  if (reason === null) return false;
  const line = `${reason} (the network namespace tests need root and iproute2)`;
  if (requireTools) throw new Error(`${line}; MIRRORBD_REQUIRE_TOOLS=1`);
  console.warn(`skipping: ${line}`);
  return true;
}

/** The tool `dropOneWay` uses, or null when neither is installed. */
export function firewallTool(): 'nft' | 'iptables' | null {
  if (hasTool('nft')) return 'nft';
  if (hasTool('iptables')) return 'iptables';
  return null;
}

function pidTag(pid: number): string {
  return pid.toString(36);
}

function alivePid(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Run a command (no shell), bounded in time; never throws. */
export function run(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<ExecResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    }, opts.timeoutMs ?? COMMAND_TIMEOUT_MS);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: -1, stdout, stderr: e.message });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr: timedOut ? `${stderr}\ntimed out after ${opts.timeoutMs ?? COMMAND_TIMEOUT_MS} ms` : stderr });
    });
  });
}

async function must(cmd: string, args: string[], input?: string): Promise<string> {
  const r = await run(cmd, args, { input });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

// --- subnets ---------------------------------------------------------------

function ipToInt(ip: string): number {
  return ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
}

/** [first, last] addresses of a prefix like 10.0.0.0/8 (a bare address is a /32). */
function prefixRange(prefix: string): [number, number] | null {
  const m = /^(\d+\.\d+\.\d+\.\d+)(?:\/(\d+))?$/.exec(prefix);
  if (!m) return null;
  const bits = m[2] === undefined ? 32 : Number(m[2]);
  const size = 2 ** (32 - bits);
  const first = Math.floor(ipToInt(m[1]!) / size) * size;
  return [first, first + size - 1];
}

/** IPv4 prefixes in use in the root namespace (routes and addresses), other than the default route. */
async function prefixesInUse(): Promise<string[]> {
  const out: string[] = [];
  const routes = await run('ip', ['-4', 'route', 'show', 'table', 'all']);
  for (const line of routes.stdout.split('\n')) {
    const words = line.trim().split(/\s+/);
    // "local 10.1.2.3 dev ..." / "broadcast ..." / "10.1.2.0/24 dev ..."
    const dst = ['local', 'broadcast', 'unicast', 'blackhole', 'unreachable', 'prohibit', 'throw', 'anycast', 'multicast'].includes(words[0] ?? '')
      ? words[1]
      : words[0];
    if (dst && dst !== 'default' && prefixRange(dst)) out.push(dst);
  }
  const addrs = await run('ip', ['-4', '-o', 'addr', 'show']);
  for (const m of addrs.stdout.matchAll(/inet (\d+\.\d+\.\d+\.\d+\/\d+)/g)) out.push(m[1]!);
  return out;
}

async function pickSubnet(seed: number): Promise<number> {
  const used = (await prefixesInUse()).map(prefixRange).filter((r): r is [number, number] => r !== null);
  for (let step = 0; step < 254; step++) {
    const x = ((seed + step) % 254) + 1;
    const [first, last] = prefixRange(`10.${SUBNET_OCTET2}.${x}.0/24`)!;
    if (!used.some(([a, b]) => a <= last && first <= b)) return x;
  }
  throw new Error(`no free /24 in 10.${SUBNET_OCTET2}.0.0/16 for a test network`);
}

// --- cleanup of this process and of crashed earlier runs ---------------------

const live = new Set<NetnsHarness>();
let exitHooked = false;

function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.once('exit', () => {
    for (const h of live) h.destroySync();
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = (): void => {
      for (const h of live) h.destroySync();
      process.removeListener(signal, handler);
      process.kill(process.pid, signal);
    };
    process.on(signal, handler);
  }
}

/** The pid encoded in one of our names, or null when the name is not ours. */
function ownerPid(name: string): number | null {
  const m = new RegExp(`^(?:${NS_PREFIX}|${BRIDGE_PREFIX}|${VETH_PREFIX})-([0-9a-z]+)-[0-9a-z](?:-[0-9a-z])?$`).exec(name);
  if (!m) return null;
  const pid = parseInt(m[1]!, 36);
  return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
}

/**
 * Remove namespaces and links that follow our naming scheme but belong to a
 * test process that no longer runs (a crashed earlier run), after ending the
 * processes still inside those namespaces. Returns what was removed.
 */
export async function removeStaleNetns(): Promise<string[]> {
  const removed: string[] = [];
  const list = await run('ip', ['netns', 'list']);
  for (const line of list.stdout.split('\n')) {
    const ns = line.trim().split(/\s+/)[0];
    if (!ns) continue;
    const owner = ownerPid(ns);
    if (owner === null || alivePid(owner)) continue;
    const pids = await run('ip', ['netns', 'pids', ns]);
    for (const p of pids.stdout.split('\n').map((s) => Number(s.trim())).filter((n) => n > 0)) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if ((await run('ip', ['netns', 'del', ns])).code === 0) removed.push(ns);
  }
  const links = await run('ip', ['-o', 'link', 'show']);
  for (const m of links.stdout.matchAll(/^\d+:\s+([^:@\s]+)/gm)) {
    const name = m[1]!;
    const owner = ownerPid(name);
    if (owner === null || alivePid(owner)) continue;
    if ((await run('ip', ['link', 'del', name])).code === 0) removed.push(name);
  }
  return removed;
}

// --- the harness -------------------------------------------------------------

/**
 * Harness slots in use by this process: a slot names the harness's links in
 * one base-36 character (interface names are at most 15 bytes), so at most
 * MAX_INDEX harnesses live at once; a destroyed one frees its slot.
 */
const slotsInUse = new Set<number>();

export async function createNetns(opts: CreateNetnsOptions): Promise<NetnsHarness> {
  if (!Number.isInteger(opts.nodes) || opts.nodes < 1 || opts.nodes > MAX_INDEX) {
    throw new Error(`nodes must be 1..${MAX_INDEX}, not ${opts.nodes}`);
  }
  const slot = Array.from({ length: MAX_INDEX }, (_, i) => i).find((i) => !slotsInUse.has(i));
  if (slot === undefined) throw new Error(`at most ${MAX_INDEX} network harnesses at once per test process`);
  const reason = netnsUnavailableReason();
  if (reason !== null) throw new Error(reason);
  slotsInUse.add(slot);
  const k = slot.toString(36);
  await removeStaleNetns();
  const tag = pidTag(process.pid);
  const octet3 = await pickSubnet(process.pid * 7 + parseInt(k, 36));
  const net24 = `10.${SUBNET_OCTET2}.${octet3}`;
  const h = new NetnsHarness(
    `${NS_PREFIX}-${tag}-${k}`,
    `${BRIDGE_PREFIX}-${tag}-${k}`,
    `${net24}.0/24`,
    `${net24}.1`,
    Array.from({ length: opts.nodes }, (_, i) => ({
      index: i,
      ns: `${NS_PREFIX}-${tag}-${k}-${i.toString(36)}`,
      address: `${net24}.${i + 2}`,
      device: 'eth0' as const,
      hostVeth: `${VETH_PREFIX}-${tag}-${k}-${i.toString(36)}`,
    })),
    slot,
  );
  live.add(h);
  hookExit();
  try {
    await h.build();
  } catch (e) {
    await h.destroy();
    throw e;
  }
  return h;
}

export class NetnsHarness {
  private readonly procs = new Map<number, { child: ChildProcess; exited: Promise<number | null>; done: boolean }>();
  /** Per node: the destinations whose packets it drops. */
  private readonly drops = new Map<number, Set<string>>();
  private netem: boolean | null = null;
  private destroyed = false;

  /** @internal use createNetns() */
  constructor(
    /** Common prefix of this harness's namespace names. */
    readonly id: string,
    readonly bridge: string,
    /** The test subnet, e.g. 10.213.7.0/24. */
    readonly subnet: string,
    /** The bridge's address in the root namespace: the host side of every node. */
    readonly hostAddress: string,
    readonly nodes: readonly NetnsNode[],
    /** Its slot among this process's harnesses (freed by destroy). */
    readonly slot: number,
  ) {}

  /** @internal */
  async build(): Promise<void> {
    await must('ip', ['link', 'add', this.bridge, 'type', 'bridge']);
    await must('ip', ['addr', 'add', `${this.hostAddress}/24`, 'dev', this.bridge]);
    await must('ip', ['link', 'set', this.bridge, 'up']);
    for (const n of this.nodes) {
      await must('ip', ['netns', 'add', n.ns]);
      await must('ip', ['link', 'add', n.hostVeth, 'type', 'veth', 'peer', 'name', n.device, 'netns', n.ns]);
      await must('ip', ['link', 'set', n.hostVeth, 'master', this.bridge]);
      await must('ip', ['link', 'set', n.hostVeth, 'up']);
      await must('ip', ['-n', n.ns, 'link', 'set', 'lo', 'up']);
      await must('ip', ['-n', n.ns, 'addr', 'add', `${n.address}/24`, 'dev', n.device]);
      await must('ip', ['-n', n.ns, 'link', 'set', n.device, 'up']);
    }
    // Links come up asynchronously: wait until every node answers on its address.
    for (const n of this.nodes) await this.waitReachable(n.index);
  }

  private node(i: number): NetnsNode {
    const n = this.nodes[i];
    if (!n) throw new Error(`no node ${i} (the harness has ${this.nodes.length})`);
    return n;
  }

  /** Run a command inside node i's namespace, bounded in time. */
  exec(i: number, cmd: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<ExecResult> {
    return run('ip', ['netns', 'exec', this.node(i).ns, cmd, ...args], opts);
  }

  /**
   * Start a long-running process inside node i's namespace. Its output goes
   * to `logFile` (appended) or is discarded. It is ended by `stop()`, by
   * `destroy()`, or when the test process exits.
   */
  spawn(i: number, cmd: string, args: string[], opts: { logFile?: string; env?: NodeJS.ProcessEnv } = {}): ManagedProcess {
    if (this.destroyed) throw new Error('the network harness is destroyed');
    let fd: number | null = null;
    if (opts.logFile) {
      mkdirSync(path.dirname(opts.logFile), { recursive: true });
      fd = openSync(opts.logFile, 'a', 0o640);
    }
    let child: ChildProcess;
    try {
      // `ip netns exec` execs the command: the pid is the command's own.
      child = spawn('ip', ['netns', 'exec', this.node(i).ns, cmd, ...args], {
        stdio: ['ignore', fd ?? 'ignore', fd ?? 'ignore'],
        env: { ...process.env, ...opts.env },
      });
    } finally {
      if (fd !== null) closeSync(fd);
    }
    const pid = child.pid;
    if (pid === undefined) throw new Error(`could not start ${cmd} in ${this.node(i).ns}`);
    const entry = {
      child,
      done: false,
      exited: new Promise<number | null>((resolve) => {
        child.on('exit', (code) => {
          entry.done = true;
          resolve(code);
        });
        child.on('error', () => {
          entry.done = true;
          resolve(null);
        });
      }),
    };
    this.procs.set(pid, entry);
    return { pid, node: i, exited: entry.exited, alive: () => !entry.done };
  }

  /** The pids of the processes this harness started that still run. */
  pids(): number[] {
    return [...this.procs].filter(([, e]) => !e.done).map(([pid]) => pid);
  }

  /**
   * End a process this harness started: `signal` (SIGTERM by default, then
   * SIGKILL after the grace period), or SIGKILL at once. Waits until it is gone.
   */
  async stop(pid: number, signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM', graceMs = STOP_GRACE_MS): Promise<void> {
    const e = this.procs.get(pid);
    if (!e) throw new Error(`pid ${pid} was not started by this harness`);
    if (!e.done) {
      try {
        process.kill(pid, signal);
      } catch {
        // gone meanwhile
      }
      const timer = new Promise<'late'>((r) => setTimeout(() => r('late'), graceMs).unref());
      if ((await Promise.race([e.exited, timer])) === 'late' && !e.done) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
        await Promise.race([e.exited, new Promise((r) => setTimeout(r, graceMs).unref())]);
      }
    }
    this.procs.delete(pid);
  }

  /**
   * Start `mirrorbd daemon` (in the foreground, so its pid is ours) inside
   * node i's namespace, logging to `<runDir>/<nodeName>.log` like a daemon
   * that `up` starts, and wait until its control socket answers.
   */
  async startMirrorbd(i: number, o: { cliPath: string; configFile: string; nodeName: string; runDir: string; env?: NodeJS.ProcessEnv }): Promise<ManagedProcess> {
    mkdirSync(o.runDir, { recursive: true, mode: 0o755 });
    const p = this.spawn(i, process.execPath, [o.cliPath, '-c', o.configFile, '--node', o.nodeName, 'daemon'], {
      logFile: path.join(o.runDir, `${o.nodeName}.log`),
      env: o.env,
    });
    const socket = path.join(o.runDir, `${o.nodeName}.sock`);
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      if (!p.alive()) throw new Error(`mirrorbd daemon for ${o.nodeName} exited while starting; see ${path.join(o.runDir, `${o.nodeName}.log`)}`);
      if (await socketAnswers(socket)) return p;
      await sleep(50);
    }
    await this.stop(p.pid, 'SIGKILL');
    throw new Error(`mirrorbd daemon for ${o.nodeName} did not open ${socket} within 15 s`);
  }

  /** Wait until node i answers a TCP connection attempt from the host (any answer, even a refusal). */
  async waitReachable(i: number, timeoutMs = 10_000): Promise<void> {
    const n = this.node(i);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (await tcpAnswers(n.address, 9, 500)) return;
      await sleep(50);
    }
    throw new Error(`node ${i} (${n.address}) is not reachable from the host`);
  }

  // --- faults -----------------------------------------------------------

  /** Cut node i off from everyone (its veth goes down): packets to and from it are lost. */
  async partition(i: number): Promise<void> {
    await must('ip', ['link', 'set', this.node(i).hostVeth, 'down']);
  }

  /** Undo `partition(i)`. */
  async heal(i: number): Promise<void> {
    await must('ip', ['link', 'set', this.node(i).hostVeth, 'up']);
    await this.waitReachable(i);
  }

  /** Drop every packet node `from` sends to node `to` (the other direction still flows). */
  async dropOneWay(from: number, to: number): Promise<void> {
    const set = this.drops.get(from) ?? new Set<string>();
    set.add(this.node(to).address);
    this.drops.set(from, set);
    await this.applyDrops(from);
  }

  /** Undo `dropOneWay(from, to)`. */
  async restoreOneWay(from: number, to: number): Promise<void> {
    this.drops.get(from)?.delete(this.node(to).address);
    await this.applyDrops(from);
  }

  private async applyDrops(i: number): Promise<void> {
    const dsts = [...(this.drops.get(i) ?? [])];
    const tool = firewallTool();
    if (tool === null) throw new Error('dropOneWay needs nft (nftables) or iptables');
    if (tool === 'nft') {
      // One table of ours per namespace, rewritten whole: nothing else is touched.
      await this.exec(i, 'nft', ['delete', 'table', 'inet', 'mbdt']);
      if (dsts.length === 0) return;
      const rules = dsts.map((d) => `    ip daddr ${d} drop`).join('\n');
      const script = `table inet mbdt {\n  chain out {\n    type filter hook output priority 0; policy accept;\n${rules}\n  }\n}\n`;
      const r = await this.exec(i, 'nft', ['-f', '-'], { input: script });
      if (r.code !== 0) throw new Error(`nft in ${this.node(i).ns} failed: ${r.stderr.trim()}`);
      return;
    }
    // iptables: our own chain, flushed and refilled.
    await this.exec(i, 'iptables', ['-N', 'MBDT']);
    await this.exec(i, 'iptables', ['-F', 'MBDT']);
    const hooked = (await this.exec(i, 'iptables', ['-C', 'OUTPUT', '-j', 'MBDT'])).code === 0;
    if (!hooked) await this.mustExec(i, 'iptables', ['-A', 'OUTPUT', '-j', 'MBDT']);
    for (const d of dsts) await this.mustExec(i, 'iptables', ['-A', 'MBDT', '-d', `${d}/32`, '-j', 'DROP']);
  }

  private async mustExec(i: number, cmd: string, args: string[]): Promise<void> {
    const r = await this.exec(i, cmd, args);
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} in ${this.node(i).ns} failed: ${r.stderr.trim()}`);
  }

  /** Whether this kernel has tc netem (probed once, on node 0's link). */
  async netemAvailable(): Promise<boolean> {
    if (this.netem === null) {
      const n = this.node(0);
      const r = await this.exec(0, 'tc', ['qdisc', 'add', 'dev', n.device, 'root', 'netem', 'delay', '0ms']);
      this.netem = r.code === 0;
      if (this.netem) await this.exec(0, 'tc', ['qdisc', 'del', 'dev', n.device, 'root']);
    }
    return this.netem;
  }

  /** Delay and/or lose packets on node i's link, in both directions. Throws where netem is missing. */
  async setLink(i: number, shape: LinkShape): Promise<void> {
    if (!(await this.netemAvailable())) throw new Error('tc netem is not available in this kernel (module sch_netem)');
    const args = ['delay', `${shape.delayMs ?? 0}ms`];
    if (shape.jitterMs) args.push(`${shape.jitterMs}ms`);
    if (shape.lossPercent) args.push('loss', `${shape.lossPercent}%`);
    const n = this.node(i);
    await this.mustExec(i, 'tc', ['qdisc', 'replace', 'dev', n.device, 'root', 'netem', ...args]);
    await must('tc', ['qdisc', 'replace', 'dev', n.hostVeth, 'root', 'netem', ...args]);
  }

  /**
   * A slow link: node i's traffic is shaped to `rateKbit` kbit/s in both
   * directions (tc tbf, which needs no netem). Undone by `clearLink(i)`.
   */
  async setRate(i: number, rateKbit: number): Promise<void> {
    const n = this.node(i);
    // A burst of a few packets and up to 200 ms queued: beyond that, packets drop as on a congested link.
    const args = ['tbf', 'rate', `${rateKbit}kbit`, 'burst', '16kb', 'latency', '200ms'];
    await this.mustExec(i, 'tc', ['qdisc', 'replace', 'dev', n.device, 'root', ...args]);
    await must('tc', ['qdisc', 'replace', 'dev', n.hostVeth, 'root', ...args]);
  }

  /** Undo `setLink(i, ...)` or `setRate(i, ...)`. */
  async clearLink(i: number): Promise<void> {
    const n = this.node(i);
    await this.exec(i, 'tc', ['qdisc', 'del', 'dev', n.device, 'root']);
    await run('tc', ['qdisc', 'del', 'dev', n.hostVeth, 'root']);
  }

  // --- teardown ---------------------------------------------------------

  /** End every process started here (SIGTERM, then SIGKILL), remove the namespaces and the bridge. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    await Promise.all(this.pids().map((pid) => this.stop(pid).catch(() => undefined)));
    for (const n of this.nodes) {
      // Anything else in the namespace was started by a process of ours.
      const pids = await run('ip', ['netns', 'pids', n.ns]);
      for (const p of pids.stdout.split('\n').map((s) => Number(s.trim())).filter((x) => x > 0)) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          // gone
        }
      }
      await run('ip', ['netns', 'del', n.ns]);
      await run('ip', ['link', 'del', n.hostVeth]);
    }
    await run('ip', ['link', 'del', this.bridge]);
    live.delete(this);
    slotsInUse.delete(this.slot);
  }

  /** destroy() for an exiting process: synchronous, SIGKILL only. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const pid of this.pids()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    const opts = { timeout: COMMAND_TIMEOUT_MS, stdio: 'ignore' as const };
    for (const n of this.nodes) {
      const r = spawnSync('ip', ['netns', 'pids', n.ns], { timeout: COMMAND_TIMEOUT_MS, encoding: 'utf8' });
      for (const p of (r.stdout ?? '').split('\n').map((s) => Number(s.trim())).filter((x) => x > 0)) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          // gone
        }
      }
      spawnSync('ip', ['netns', 'del', n.ns], opts);
      spawnSync('ip', ['link', 'del', n.hostVeth], opts);
    }
    spawnSync('ip', ['link', 'del', this.bridge], opts);
    live.delete(this);
    slotsInUse.delete(this.slot);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** True when something accepts or refuses a TCP connection at host:port within the time. */
function tcpAnswers(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ host, port });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.on('connect', () => done(true));
    s.on('error', (e: NodeJS.ErrnoException) => done(e.code === 'ECONNREFUSED'));
  });
}

function socketAnswers(file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ path: file });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 500);
    s.on('connect', () => done(true));
    s.on('error', () => done(false));
  });
}
