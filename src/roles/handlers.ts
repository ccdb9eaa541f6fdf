/**
 * Runs the configured handler commands (`handlers { ... }`): each through
 * `/bin/sh -c`, with the facts in its environment, one at a time per
 * resource in the order they were asked for, each within a time limit.
 *
 * One at a time matters: notification scripts that run concurrently race
 * each other (an `after-demote` that finishes after the next `after-promote`
 * takes the service address down again). A queue per resource keeps them in
 * the order the events happened; a hung script is killed at the timeout so
 * the ones behind it still run.
 *
 * The environment carries both mirrorbd's names and DRBD's, so existing
 * DRBD handler scripts (crm-fence-peer and friends read DRBD_RESOURCE and
 * DRBD_PEER) work unchanged.
 */
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import type { HandlerName } from '../config/schema.js';

/** stdout and stderr together keep at most their last this many bytes. */
export const HANDLER_OUTPUT_BYTES = 4096;
/** After SIGTERM to the process group at the timeout, SIGKILL follows this much later. */
export const HANDLER_KILL_GRACE_MS = 1000;
/**
 * Output may arrive after the process exited; wait this long for it. A
 * handler that left a background process holding its stdout (a daemon it
 * started) is not waited for beyond this.
 */
const OUTPUT_DRAIN_MS = 200;

/** fence-peer exit codes, as DRBD defines them. Anything else: the fencing failed. */
export const FENCE_PEER_EXIT = {
  /** The peer's disk is Inconsistent: it cannot be promoted. */
  PEER_INCONSISTENT: 3,
  /** The peer was marked Outdated: it cannot be promoted. */
  PEER_OUTDATED: 4,
  /** The peer could not be reached (it may still be running). */
  PEER_UNREACHABLE: 5,
  /** The peer refused: it is Primary. */
  PEER_PRIMARY: 6,
  /** The peer was fenced (STONITHed): it is down. */
  PEER_FENCED: 7,
} as const;

export type FencePeerOutcome = 'peer-outdated' | 'peer-fenced' | 'peer-inconsistent' | 'peer-primary' | 'unreachable' | 'failed';

/**
 * What a fence-peer exit code means. peer-outdated, peer-fenced and
 * peer-inconsistent make it safe to write without the peer; unreachable,
 * peer-primary and failed do not.
 */
export function fencePeerOutcome(exitCode: number | null): FencePeerOutcome {
  switch (exitCode) {
    case FENCE_PEER_EXIT.PEER_INCONSISTENT:
      return 'peer-inconsistent';
    case FENCE_PEER_EXIT.PEER_OUTDATED:
      return 'peer-outdated';
    case FENCE_PEER_EXIT.PEER_UNREACHABLE:
      return 'unreachable';
    case FENCE_PEER_EXIT.PEER_PRIMARY:
      return 'peer-primary';
    case FENCE_PEER_EXIT.PEER_FENCED:
      return 'peer-fenced';
    default:
      return 'failed';
  }
}

export interface HandlerPeer {
  name: string;
  nodeId: number;
}

/** The state of the resource when the handler is asked for. */
export interface HandlerContext {
  /** Role of this node (MIRRORBD_ROLE), e.g. Primary. */
  role: string;
  /** Disk state of this node (MIRRORBD_DISK), e.g. UpToDate. */
  disk: string;
  /** The peer the event is about, if any. */
  peer?: HandlerPeer;
}

export interface HandlerRan {
  ran: true;
  handler: HandlerName;
  /** Node name of the peer concerned, or null. */
  peer: string | null;
  /** null when the process was ended by a signal or never started. */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** Wall time from start to exit. */
  ms: number;
  /** The last HANDLER_OUTPUT_BYTES of stdout and stderr, interleaved as they came. */
  output: string;
  /** Set when the command could not be started at all. */
  error?: string;
}

export interface HandlerNotRun {
  ran: false;
  handler: HandlerName;
}

export type HandlerResult = HandlerRan | HandlerNotRun;

export interface HandlerEvent {
  type: 'handler';
  handler: HandlerName;
  peer: string | null;
  exitCode: number | null;
  timedOut: boolean;
  ms: number;
}

export interface HandlerRunnerOptions {
  resource: string;
  node: string;
  nodeId: number;
  /** Handler name -> command line (ResourceConfig.handlers). */
  handlers: Readonly<Record<string, string>>;
  /** ResourceOptions.handlerTimeoutMs. */
  timeoutMs: number;
  /** Called after every run (not for handlers that are not configured). */
  onEvent?: (e: HandlerEvent) => void;
  /** The environment handlers inherit (default: this process's). */
  baseEnv?: NodeJS.ProcessEnv;
}

/** Variables this runner sets; inherited values of them are never passed on. */
const OWN_VARIABLES = [
  'MIRRORBD_RESOURCE',
  'MIRRORBD_NODE',
  'MIRRORBD_NODE_ID',
  'MIRRORBD_PEER',
  'MIRRORBD_PEER_ID',
  'MIRRORBD_HANDLER',
  'MIRRORBD_ROLE',
  'MIRRORBD_DISK',
  'DRBD_RESOURCE',
  'DRBD_PEER',
] as const;

export class HandlerRunner {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: HandlerRunnerOptions) {}

  /** Whether a command is configured for this handler. */
  has(handler: HandlerName): boolean {
    return this.o.handlers[handler] !== undefined;
  }

  /**
   * Runs the handler after every run asked for before it; resolves with how
   * it went. Never rejects. A handler that is not configured resolves at
   * once, without waiting for the queue.
   */
  run(handler: HandlerName, ctx: HandlerContext): Promise<HandlerResult> {
    const command = this.o.handlers[handler];
    if (command === undefined) return Promise.resolve({ ran: false, handler });
    const env = this.environment(handler, ctx);
    const result = this.queue.then(() => this.exec(handler, command, env, ctx.peer?.name ?? null));
    this.queue = result;
    return result;
  }

  /** Resolves when every run asked for so far has finished. */
  async idle(): Promise<void> {
    let seen: Promise<unknown>;
    do {
      seen = this.queue;
      await seen;
    } while (seen !== this.queue);
  }

  private environment(handler: HandlerName, ctx: HandlerContext): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...(this.o.baseEnv ?? process.env) };
    for (const name of OWN_VARIABLES) delete env[name];
    env.MIRRORBD_RESOURCE = this.o.resource;
    env.MIRRORBD_NODE = this.o.node;
    env.MIRRORBD_NODE_ID = String(this.o.nodeId);
    env.MIRRORBD_HANDLER = handler;
    env.MIRRORBD_ROLE = ctx.role;
    env.MIRRORBD_DISK = ctx.disk;
    env.DRBD_RESOURCE = this.o.resource;
    if (ctx.peer !== undefined) {
      env.MIRRORBD_PEER = ctx.peer.name;
      env.MIRRORBD_PEER_ID = String(ctx.peer.nodeId);
      env.DRBD_PEER = ctx.peer.name;
    }
    return env;
  }

  private exec(handler: HandlerName, command: string, env: NodeJS.ProcessEnv, peer: string | null): Promise<HandlerRan> {
    return new Promise((resolve) => {
      const started = performance.now();
      const tail = new OutputTail(HANDLER_OUTPUT_BYTES);
      let timedOut = false;
      let exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
      let error: string | undefined;
      let settled = false;
      let killTimer: NodeJS.Timeout | undefined;
      let drainTimer: NodeJS.Timeout | undefined;

      // detached: the shell leads a new process group, so a timeout can end
      // the whole group (the script and whatever it started), not the shell only.
      const child = spawn('/bin/sh', ['-c', command], { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });

      const killGroup = (signal: NodeJS.Signals): void => {
        try {
          if (child.pid !== undefined) process.kill(-child.pid, signal);
        } catch {
          // The group is gone already.
        }
      };

      const finish = (): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timeoutTimer);
        clearTimeout(killTimer);
        clearTimeout(drainTimer);
        // A background process may still hold the pipes: keep draining them so
        // it never blocks on a full pipe, but do not let them keep us alive.
        for (const stream of [child.stdout, child.stderr]) {
          stream?.removeAllListeners('data');
          stream?.resume();
          (stream as unknown as { unref?: () => void } | null)?.unref?.();
        }
        const ms = performance.now() - started;
        const result: HandlerRan = {
          ran: true,
          handler,
          peer,
          exitCode: exited?.code ?? null,
          signal: exited?.signal ?? null,
          timedOut,
          ms,
          output: tail.text(),
        };
        if (error !== undefined) result.error = error;
        try {
          this.o.onEvent?.({ type: 'handler', handler, peer, exitCode: result.exitCode, timedOut, ms });
        } catch {
          // A failing listener must not stop the queue.
        }
        resolve(result);
      };

      const timeoutTimer = setTimeout(() => {
        timedOut = true;
        killGroup('SIGTERM');
        killTimer = setTimeout(() => killGroup('SIGKILL'), HANDLER_KILL_GRACE_MS);
        killTimer.unref();
      }, this.o.timeoutMs);
      timeoutTimer.unref();

      child.stdout.on('data', (b: Buffer) => tail.push(b));
      child.stderr.on('data', (b: Buffer) => tail.push(b));
      child.on('error', (e) => {
        error = e.message;
        finish();
      });
      child.on('exit', (code, signal) => {
        exited = { code, signal };
        drainTimer = setTimeout(finish, OUTPUT_DRAIN_MS);
        drainTimer.unref();
      });
      // 'close' comes once the process exited and its pipes are closed.
      child.on('close', finish);
    });
  }
}

/** The last `limit` bytes of what was pushed. */
class OutputTail {
  private chunks: Buffer[] = [];
  private bytes = 0;
  constructor(private readonly limit: number) {}

  push(b: Buffer): void {
    this.chunks.push(b);
    this.bytes += b.length;
    // Drop whole chunks that lie entirely before the last `limit` bytes.
    while (this.chunks.length > 1 && this.bytes - this.chunks[0]!.length >= this.limit) {
      this.bytes -= this.chunks.shift()!.length;
    }
  }

  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.limit)).toString('utf8');
  }
}
