/**
 * The write workload: stamped 4 KiB writes to blocks drawn from a seeded
 * generator over the log's block range, `queueDepth` requests in flight,
 * a FLUSH every so many writes or milliseconds, every request and every
 * answer recorded in the ack log as it happens.
 *
 * Two writes to one block are never in flight together: NBD does not order
 * requests in flight, so only then does a higher sequence on a block always
 * mean newer data, which is what verify relies on.
 *
 * A server that dies, hangs up or refuses is the expected end of a run
 * under fault injection, not an error: the run stops, waits a bounded time
 * for what is in flight, and returns what was acknowledged. Only a failure
 * of the ack log itself (or a bug) rejects.
 */
import { MirrorError, describeError } from '../errors.js';
import type { AckLogWriter } from './ack-log.js';
import { NbdCommandError, NbdConnectionLost } from './nbd-client.js';
import { DEFAULT_FLUSH_EVERY, DEFAULT_QUEUE_DEPTH } from './defaults.js';
import { STAMP_BLOCK_BYTES, encodeStamp } from './stamp.js';

/** What the workload writes to; NbdClient is one. */
export interface WriteTarget {
  readonly sizeBytes: number;
  readonly canFlush: boolean;
  readonly canFua: boolean;
  /** Rejects with NbdConnectionLost or NbdCommandError. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  cork?(): void;
  uncork?(): void;
  /** Hangs up now; requests in flight reject with NbdConnectionLost. */
  destroy(reason: string): void;
  /** Disconnects politely. */
  close(): Promise<void>;
}

/** Timers from outside, so a test can drive time. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): { cancel(): void };
}

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    // Not unref'd: the run awaits these (the time limit, the drain), and an
    // unref'd timer would let the process exit with the run unfinished.
    const t = setTimeout(fn, ms);
    return { cancel: () => clearTimeout(t) };
  },
};

export const DRAIN_TIMEOUT_MS = 10_000;
export const REPLY_TIMEOUT_MS = 30_000;

export interface WorkloadOptions {
  target: WriteTarget;
  /** A URI or name recorded in the run record. */
  targetName: string;
  log: AckLogWriter;
  queueDepth?: number;
  /** Stop after sending this many writes. */
  writes?: number;
  /** Stop sending after this long. */
  durationMs?: number;
  /** A FLUSH after every N writes sent; 0: never. */
  flushEvery?: number;
  /** A FLUSH at least this often; 0: never. */
  flushIntervalMs?: number;
  /** Every Nth write with FUA; 0: never. */
  fuaEvery?: number;
  /** Seeds the block choice; recorded in the run record. */
  seed: number;
  /** Stops the run as if its time were up (SIGINT, SIGTERM). */
  signal?: AbortSignal;
  /** After the stop, how long requests in flight may take before the connection is dropped. */
  drainTimeoutMs?: number;
  /** Requests in flight and no answer for this long: the server is given up on. */
  replyTimeoutMs?: number;
  clock?: Clock;
  /** Called every progressIntervalMs while the run lasts. */
  onProgress?: (p: WorkloadCounts) => void;
  progressIntervalMs?: number;
}

export type StopKind =
  /** The write count or the time was reached. */
  | 'done'
  /** The signal fired. */
  | 'interrupted'
  /** The connection ended under the workload. */
  | 'connection-lost'
  /** The server answered a request with an error. */
  | 'server-error'
  /** The server stopped answering. */
  | 'no-reply';

export interface WorkloadCounts {
  writesSent: number;
  writesAcked: number;
  writesFailed: number;
  flushesSent: number;
  flushesAcked: number;
  elapsedMs: number;
}

export interface WorkloadResult extends WorkloadCounts {
  run: number;
  stop: StopKind;
  reason: string;
  /** Writes sent and never answered (they may or may not have landed). */
  writesUnanswered: number;
  /** The last acknowledged FLUSH came after every acknowledged write. */
  finalFlush: boolean;
  firstSeq: number;
  lastSeq: number;
}

/** Runs one workload run to its end. */
export async function runWorkload(o: WorkloadOptions): Promise<WorkloadResult> {
  return new Workload(o).run();
}

/** mulberry32: small, fast and seedable; the block choice needs nothing stronger. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 0x1_0000_0000;
  };
}

type Op = { kind: 'write'; seq: number; block: number; fua: boolean; data: Buffer } | { kind: 'flush'; seq: number };

class Workload {
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly queueDepth: number;
  private readonly first: number;
  private readonly blocks: number;
  /** Blocks with a write in flight. */
  private readonly busy = new Set<number>();
  private inFlight = 0;
  private flushInFlight = false;
  private writesSinceFlush = 0;
  private lastFlushAt = 0;
  /** The last request sent or answer received: a server silent since then may be hung. */
  private lastActivityAt = 0;
  private readonly started: number;
  private readonly counts = { writesSent: 0, writesAcked: 0, writesFailed: 0, flushesSent: 0, flushesAcked: 0 };
  private stopped: { kind: StopKind; reason: string } | null = null;
  /** The connection is gone: nothing more can be sent. */
  private lost = false;
  private finishing = false;
  private settled = false;
  private finalFlush = false;
  private pumpScheduled = false;
  private runNumber = 0;
  private firstSeq = 0;
  private lastSeq = 0;
  private readonly timers = new Map<'duration' | 'drain' | 'watch' | 'progress', { cancel(): void }>();
  private settle!: { resolve(r: WorkloadResult): void; reject(e: unknown): void };
  private readonly onAbort = (): void => this.stop('interrupted', 'interrupted');

  constructor(private readonly o: WorkloadOptions) {
    this.clock = o.clock ?? realClock;
    this.random = seededRandom(o.seed);
    this.first = o.log.header.firstBlock;
    this.blocks = o.log.header.blocks;
    if ((this.first + this.blocks) * STAMP_BLOCK_BYTES > o.target.sizeBytes) {
      throw new MirrorError('ERR_IO', `${o.targetName} has ${o.target.sizeBytes} bytes; blocks ${this.first}..${this.first + this.blocks - 1} do not fit`, {
        target: o.targetName,
      });
    }
    // One write per block in flight at most, so more slots than blocks would stay empty.
    this.queueDepth = Math.max(1, Math.min(o.queueDepth ?? DEFAULT_QUEUE_DEPTH, this.blocks));
    this.started = this.clock.now();
    this.lastFlushAt = this.started;
    this.lastActivityAt = this.started;
  }

  run(): Promise<WorkloadResult> {
    return new Promise((resolve, reject) => {
      this.settle = { resolve, reject };
      const log = this.o.log;
      this.runNumber = log.startRun({ target: this.o.targetName, seed: this.o.seed, queueDepth: this.queueDepth });
      if (this.o.durationMs !== undefined) this.setTimer('duration', () => this.stop('done', 'time is up'), this.o.durationMs);
      this.watchReplies();
      this.reportProgress();
      if (this.o.signal?.aborted) this.stop('interrupted', 'interrupted');
      this.o.signal?.addEventListener('abort', this.onAbort);
      this.pump();
    });
  }

  private pump(): void {
    this.pumpScheduled = false;
    if (this.finishing) return;
    const ops: Op[] = [];
    try {
      while (this.stopped === null && this.inFlight + ops.length < this.queueDepth) {
        if (this.o.writes !== undefined && this.counts.writesSent >= this.o.writes) {
          this.stop('done', `${this.o.writes} writes sent`);
          break;
        }
        ops.push(this.flushDue() ? this.planFlush() : this.planWrite());
      }
      // The records of these requests are in the log before any of them leaves.
      this.o.log.commit();
    } catch (e) {
      this.fail(e);
      return;
    }
    if (ops.length > 0) {
      this.lastActivityAt = this.clock.now();
      this.o.target.cork?.();
      for (const op of ops) this.send(op);
      this.o.target.uncork?.();
    }
    this.maybeFinish();
  }

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    // After every answer of this batch of replies has been recorded: one
    // commit for all of them.
    queueMicrotask(() => this.pump());
  }

  private flushDue(): boolean {
    if (!this.o.target.canFlush || this.flushInFlight) return false;
    const every = this.o.flushEvery ?? DEFAULT_FLUSH_EVERY;
    if (every > 0 && this.writesSinceFlush >= every) return true;
    const interval = this.o.flushIntervalMs ?? 0;
    return interval > 0 && this.writesSinceFlush > 0 && this.clock.now() - this.lastFlushAt >= interval;
  }

  private planFlush(): Op {
    const seq = this.takeSeq();
    this.o.log.flush(seq);
    this.flushInFlight = true;
    this.writesSinceFlush = 0;
    this.lastFlushAt = this.clock.now();
    this.counts.flushesSent++;
    return { kind: 'flush', seq };
  }

  private planWrite(): Op {
    const seq = this.takeSeq();
    const block = this.pickBlock();
    const fuaEvery = this.o.fuaEvery ?? 0;
    const fua = this.o.target.canFua && fuaEvery > 0 && (this.counts.writesSent + 1) % fuaEvery === 0;
    const data = encodeStamp({ logId: this.o.log.header.logId, writer: this.o.log.header.writer, block, sequence: seq });
    this.o.log.write(seq, block, fua);
    this.busy.add(block);
    this.counts.writesSent++;
    this.writesSinceFlush++;
    return { kind: 'write', seq, block, fua, data };
  }

  private takeSeq(): number {
    const seq = this.o.log.nextSequence();
    if (this.firstSeq === 0) this.firstSeq = seq;
    this.lastSeq = seq;
    return seq;
  }

  /** A random block without a write in flight (the next free one after the draw). */
  private pickBlock(): number {
    let i = Math.floor(this.random() * this.blocks);
    while (this.busy.has(this.first + i)) i = (i + 1) % this.blocks;
    return this.first + i;
  }

  private send(op: Op): void {
    this.inFlight++;
    const p = op.kind === 'write' ? this.o.target.write(op.block * STAMP_BLOCK_BYTES, op.data, op.fua) : this.o.target.flush();
    p.then(
      () => this.answered(op, null),
      (e: unknown) => this.answered(op, e),
    );
  }

  private answered(op: Op, error: unknown): void {
    this.inFlight--;
    this.lastActivityAt = this.clock.now();
    if (op.kind === 'write') this.busy.delete(op.block);
    else this.flushInFlight = false;
    try {
      if (error === null) {
        this.o.log.ack(op.seq);
        if (op.kind === 'write') this.counts.writesAcked++;
        else {
          this.counts.flushesAcked++;
          // What this FLUSH made durable is on record before we rely on it.
          this.o.log.sync().catch((e: unknown) => this.fail(e));
        }
      } else if (error instanceof NbdCommandError) {
        this.o.log.fail(op.seq, error.errnoName);
        if (op.kind === 'write') this.counts.writesFailed++;
        this.stop('server-error', `the server answered ${op.kind} ${op.seq} with ${error.errnoName}`);
      } else if (error instanceof NbdConnectionLost) {
        this.lost = true;
        this.stop('connection-lost', error.message);
      } else {
        throw error;
      }
    } catch (e) {
      this.fail(e);
      return;
    }
    this.schedulePump();
  }

  private stop(kind: StopKind, reason: string): void {
    if (this.stopped !== null) return;
    this.stopped = { kind, reason };
    const drainMs = this.o.drainTimeoutMs ?? DRAIN_TIMEOUT_MS;
    this.setTimer(
      'drain',
      () => {
        this.lost = true;
        this.o.target.destroy(`requests still unanswered ${drainMs} ms after the run stopped`);
      },
      drainMs,
    );
    this.schedulePump();
  }

  private maybeFinish(): void {
    if (this.stopped === null || this.inFlight > 0 || this.finishing) return;
    this.finishing = true;
    void this.finish();
  }

  private async finish(): Promise<void> {
    const { kind, reason } = this.stopped!;
    try {
      // A clean stop ends with a FLUSH, so everything acknowledged is durable
      // (what `verify --crash` then requires).
      if ((kind === 'done' || kind === 'interrupted') && !this.lost && this.o.target.canFlush) {
        const seq = this.takeSeq();
        this.o.log.flush(seq);
        this.o.log.commit();
        this.counts.flushesSent++;
        try {
          await this.o.target.flush();
          this.o.log.ack(seq);
          this.counts.flushesAcked++;
          this.finalFlush = true;
        } catch (e) {
          if (e instanceof NbdCommandError) this.o.log.fail(seq, e.errnoName);
          else if (e instanceof NbdConnectionLost) this.lost = true;
          else throw e;
        }
      }
      this.o.log.endRun(reason);
      await this.o.log.sync();
      if (!this.lost) await this.o.target.close();
      else this.o.target.destroy(reason);
    } catch (e) {
      this.fail(e);
      return;
    }
    this.cleanUp();
    this.settled = true;
    this.settle.resolve({
      ...this.counts,
      elapsedMs: this.clock.now() - this.started,
      run: this.runNumber,
      stop: kind,
      reason,
      writesUnanswered: this.counts.writesSent - this.counts.writesAcked - this.counts.writesFailed,
      finalFlush: this.finalFlush,
      firstSeq: this.firstSeq,
      lastSeq: this.lastSeq,
    });
  }

  /** The log failed, or a bug: the run cannot go on. */
  private fail(e: unknown): void {
    if (this.settled) return;
    this.settled = true;
    this.finishing = true;
    this.cleanUp();
    this.o.target.destroy(`the checker failed: ${describeError(e)}`);
    this.settle.reject(e);
  }

  private setTimer(name: 'duration' | 'drain' | 'watch' | 'progress', fn: () => void, ms: number): void {
    this.timers.get(name)?.cancel();
    this.timers.set(name, this.clock.setTimeout(fn, ms));
  }

  private cleanUp(): void {
    for (const t of this.timers.values()) t.cancel();
    this.timers.clear();
    this.o.signal?.removeEventListener('abort', this.onAbort);
  }

  /** Gives up on a server that holds requests and answers none for replyTimeoutMs. */
  private watchReplies(): void {
    const timeoutMs = this.o.replyTimeoutMs ?? REPLY_TIMEOUT_MS;
    const check = (): void => {
      const silentMs = this.clock.now() - this.lastActivityAt;
      if (this.inFlight > 0 && silentMs >= timeoutMs) {
        this.stop('no-reply', `no answer from the server for ${timeoutMs} ms`);
        this.lost = true;
        this.o.target.destroy(`no answer for ${timeoutMs} ms`);
        return;
      }
      this.setTimer('watch', check, silentMs < timeoutMs ? timeoutMs - silentMs : timeoutMs);
    };
    this.setTimer('watch', check, timeoutMs);
  }

  private reportProgress(): void {
    const { onProgress, progressIntervalMs } = this.o;
    if (onProgress === undefined || progressIntervalMs === undefined || progressIntervalMs <= 0) return;
    const tick = (): void => {
      onProgress({ ...this.counts, elapsedMs: this.clock.now() - this.started });
      this.setTimer('progress', tick, progressIntervalMs);
    };
    this.setTimer('progress', tick, progressIntervalMs);
  }
}
