import fs, { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AckLogWriter, readAckLog } from '../../src/check/ack-log.js';
import { buildHistory } from '../../src/check/history.js';
import { NbdCommandError, NbdConnectionLost } from '../../src/check/nbd-client.js';
import { STAMP_BLOCK_BYTES, decodeStamp } from '../../src/check/stamp.js';
import { runWorkload, type Clock, type WorkloadOptions, type WriteTarget } from '../../src/check/workload.js';
import { NBD_EIO, NBD_ESHUTDOWN } from '../../src/nbd/constants.js';
import { seededRandom } from '../helpers/seeded-random.js';

/** Time that moves only when the test says so. */
class ManualClock implements Clock {
  private t = 0;
  private timers: Array<{ at: number; fn: () => void; live: boolean }> = [];
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): { cancel(): void } {
    const timer = { at: this.t + ms, fn, live: true };
    this.timers.push(timer);
    return { cancel: () => (timer.live = false) };
  }
  advance(ms: number): void {
    const until = this.t + ms;
    for (;;) {
      const due = this.timers.filter((x) => x.live && x.at <= until).sort((a, b) => a.at - b.at)[0];
      if (due === undefined) break;
      due.live = false;
      this.t = due.at;
      due.fn();
    }
    this.t = until;
    this.timers = this.timers.filter((x) => x.live);
  }
}

interface Request {
  kind: 'write' | 'flush';
  block: number;
  sequence: number;
  fua: boolean;
  resolve(): void;
  reject(e: Error): void;
}

/**
 * A target that holds every request until the test (or `answer`) settles
 * it, and checks the workload's promises as requests arrive: each write's
 * record is in the log file before the write, no two writes to one block
 * are in flight, no more than the queue depth is.
 */
class FakeTarget implements WriteTarget {
  readonly sizeBytes = 64 * STAMP_BLOCK_BYTES;
  canFlush = true;
  canFua = true;
  held: Request[] = [];
  maxHeld = 0;
  requests = 0;
  dead = false;
  closed = false;
  problems: string[] = [];
  /** Called on every request; may answer it at once or later. */
  onRequest: (r: Request) => void = () => undefined;

  constructor(
    private readonly logPath: string,
    private readonly queueDepth: number,
  ) {}

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const s = decodeStamp(data);
    if (s.kind !== 'stamp') throw new Error('not a stamp');
    if (s.block * STAMP_BLOCK_BYTES !== offset) this.problems.push(`stamp of block ${s.block} written at ${offset}`);
    if (this.held.some((h) => h.kind === 'write' && h.block === s.block)) this.problems.push(`two writes to block ${s.block} in flight`);
    if (!fs.readFileSync(this.logPath, 'utf8').includes(`{"t":"write","seq":${s.sequence},"block":${s.block}`)) {
      this.problems.push(`write ${s.sequence} sent before its record was in the log`);
    }
    return this.hold('write', s.block, s.sequence, fua);
  }

  flush(): Promise<void> {
    return this.hold('flush', -1, 0, false);
  }

  destroy(): void {
    if (this.dead) return;
    this.dead = true;
    const held = this.held;
    this.held = [];
    for (const r of held) r.reject(new NbdConnectionLost('connection lost: test'));
  }

  async close(): Promise<void> {
    this.closed = true;
    this.dead = true;
  }

  /** Settles one held request (by default the oldest). */
  answer(r: Request = this.held[0]!, error?: Error): void {
    this.held = this.held.filter((h) => h !== r);
    if (error) r.reject(error);
    else r.resolve();
  }

  private hold(kind: Request['kind'], block: number, sequence: number, fua: boolean): Promise<void> {
    if (this.dead) return Promise.reject(new NbdConnectionLost('connection lost: test'));
    this.requests++;
    return new Promise((resolve, reject) => {
      const r: Request = { kind, block, sequence, fua, resolve, reject };
      this.held.push(r);
      this.maxHeld = Math.max(this.maxHeld, this.held.length);
      if (this.held.length > this.queueDepth) this.problems.push(`${this.held.length} requests in flight`);
      this.onRequest(r);
    });
  }
}

/** Answers held requests in a seeded random order, a few at a time, on later ticks. */
function answerRandomly(t: FakeTarget, seed: number): void {
  const random = seededRandom(seed);
  let scheduled = false;
  t.onRequest = () => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(function tick() {
      scheduled = false;
      const n = 1 + Math.floor(random() * t.held.length);
      for (let i = 0; i < n && t.held.length > 0; i++) t.answer(t.held[Math.floor(random() * t.held.length)]!);
      if (t.held.length > 0 && !scheduled) {
        scheduled = true;
        setImmediate(tick);
      }
    });
  };
}

let dir: string;
beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-check-workload-'));
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function setup(queueDepth = 4, blocks = 16, name = 'ack.log'): Promise<{ target: FakeTarget; log: AckLogWriter; logPath: string; opts: WorkloadOptions }> {
  const logPath = path.join(dir, name);
  const log = await AckLogWriter.create(logPath, { writer: 2, firstBlock: 8, blocks });
  const target = new FakeTarget(logPath, queueDepth);
  return { target, log, logPath, opts: { target, targetName: 'fake', log, queueDepth, seed: 5 } };
}

describe('workload', () => {
  it('keeps the queue full, one write per block in flight, records before sending, flushes as told', async () => {
    const { target, log, logPath, opts } = await setup(4, 6);
    answerRandomly(target, 1);
    const r = await runWorkload({ ...opts, writes: 500, flushEvery: 50 });
    await log.close();
    expect(target.problems).toEqual([]);
    expect(target.maxHeld).toBe(4);
    expect(r).toMatchObject({ stop: 'done', reason: '500 writes sent', writesSent: 500, writesAcked: 500, writesFailed: 0, writesUnanswered: 0, finalFlush: true });
    // One FLUSH after each 50 writes up to 450, then the final one after the 500th.
    expect(r.flushesSent).toBe(10);
    expect(r.flushesAcked).toBe(10);
    expect(target.closed).toBe(true);

    const h = buildHistory(await readAckLog(logPath));
    expect(h).toMatchObject({ writesSent: 500, writesAcked: 500, writesDurable: 500, flushesAcked: 10, complete: true });
    expect([...h.blocks.keys()].every((b) => b >= 8 && b < 14)).toBe(true);
  });

  it('queues no deeper than there are blocks', async () => {
    const { target, log, opts } = await setup(8, 3);
    answerRandomly(target, 2);
    await runWorkload({ ...opts, writes: 100 });
    await log.close();
    expect(target.problems).toEqual([]);
    expect(target.maxHeld).toBe(3);
  });

  it('sets FUA on every Nth write when the server offers it, and never when not', async () => {
    const { target, log, logPath, opts } = await setup();
    const fua: boolean[] = [];
    answerRandomly(target, 3);
    const onRequest = target.onRequest;
    target.onRequest = (r) => {
      if (r.kind === 'write') fua.push(r.fua);
      onRequest(r);
    };
    await runWorkload({ ...opts, writes: 9, fuaEvery: 3, flushEvery: 0 });
    await log.close();
    expect(fua.filter(Boolean)).toHaveLength(3);
    expect((await fsp.readFile(logPath, 'utf8')).match(/"fua":true/g)).toHaveLength(3);

    const other = await setup(4, 16, 'no-fua.log');
    other.target.canFua = false;
    answerRandomly(other.target, 3);
    await runWorkload({ ...other.opts, writes: 9, fuaEvery: 3 });
    await other.log.close();
    expect(await fsp.readFile(other.logPath, 'utf8')).not.toMatch(/fua/);
  });

  it('a server that goes away ends the run; what was acknowledged is kept', async () => {
    const { target, log, logPath, opts } = await setup(4);
    let acked = 0;
    target.onRequest = () => {
      if (target.held.length < 4) return;
      // Answer two of four, then die with two in flight.
      setImmediate(() => {
        if (target.dead) return;
        target.answer();
        target.answer();
        if (++acked === 10) target.destroy();
      });
    };
    const r = await runWorkload({ ...opts, flushEvery: 0 });
    await log.close();
    expect(target.problems).toEqual([]);
    expect(r).toMatchObject({ stop: 'connection-lost', reason: 'connection lost: test', finalFlush: false, flushesSent: 0 });
    expect(r.writesAcked).toBe(20);
    expect(r.writesUnanswered).toBe(r.writesSent - 20);
    expect(r.writesUnanswered).toBeGreaterThan(0);

    const parsed = await readAckLog(logPath);
    expect(parsed.records[parsed.records.length - 1]).toMatchObject({ t: 'end', reason: 'connection lost: test' });
    expect(buildHistory(parsed)).toMatchObject({ writesAcked: 20, writesSent: r.writesSent });
  });

  it('an error answer ends the run and is recorded as a failure', async () => {
    const { target, log, logPath, opts } = await setup(2);
    let n = 0;
    target.onRequest = (req) => {
      setImmediate(() => target.answer(req, ++n === 5 ? new NbdCommandError('WRITE', NBD_ESHUTDOWN) : undefined));
    };
    const r = await runWorkload({ ...opts, flushEvery: 0 });
    await log.close();
    expect(r).toMatchObject({ stop: 'server-error', writesFailed: 1 });
    expect(r.reason).toMatch(/answered write \d+ with ESHUTDOWN/);
    // A clean stop it is not: no final FLUSH after the server refused.
    expect(r.finalFlush).toBe(false);
    expect(await fsp.readFile(logPath, 'utf8')).toMatch(/{"t":"fail","seq":\d+,"error":"ESHUTDOWN"}/);
  });

  it('an interrupt drains what is in flight, flushes and ends cleanly', async () => {
    const { target, log, opts } = await setup(4);
    const abort = new AbortController();
    answerRandomly(target, 4);
    let seen = 0;
    const onRequest = target.onRequest;
    target.onRequest = (req) => {
      if (++seen === 40) abort.abort();
      onRequest(req);
    };
    const r = await runWorkload({ ...opts, signal: abort.signal, flushEvery: 0 });
    await log.close();
    expect(r).toMatchObject({ stop: 'interrupted', writesUnanswered: 0, finalFlush: true, flushesSent: 1 });
    expect(r.writesSent).toBeGreaterThanOrEqual(39);
  });

  it('stops when its time is up, and flushes on a timer', async () => {
    const { target, log, logPath, opts } = await setup(2);
    const clock = new ManualClock();
    let answered = 0;
    target.onRequest = (req) =>
      setImmediate(() => {
        answered++;
        // 1 ms passes per answer: the 10 ms FLUSH interval comes every ~10 answers.
        clock.advance(1);
        target.answer(req);
      });
    const r = await runWorkload({ ...opts, clock, durationMs: 100, flushEvery: 0, flushIntervalMs: 10 });
    await log.close();
    expect(r).toMatchObject({ stop: 'done', reason: 'time is up', finalFlush: true });
    expect(r.elapsedMs).toBeGreaterThanOrEqual(100);
    expect(r.flushesSent).toBeGreaterThanOrEqual(5);
    expect(answered).toBeGreaterThan(50);
    expect(buildHistory(await readAckLog(logPath)).complete).toBe(true);
  });

  it('gives up on a server that answers nothing', async () => {
    const { target, log, opts } = await setup(3);
    const clock = new ManualClock();
    target.onRequest = () => {
      if (target.held.length === 3) setImmediate(() => clock.advance(30_000));
    };
    const r = await runWorkload({ ...opts, clock, replyTimeoutMs: 30_000 });
    await log.close();
    expect(r).toMatchObject({ stop: 'no-reply', writesSent: 3, writesAcked: 0, writesUnanswered: 3 });
    expect(r.reason).toMatch(/no answer from the server for 30000 ms/);
    expect(target.dead).toBe(true);
  });

  it('after a stop, hangs up on requests that do not finish within the drain timeout', async () => {
    const { target, log, opts } = await setup(3);
    const clock = new ManualClock();
    const abort = new AbortController();
    target.onRequest = () => {
      if (target.held.length === 3)
        setImmediate(() => {
          abort.abort();
          clock.advance(5_000);
        });
    };
    const r = await runWorkload({ ...opts, clock, signal: abort.signal, drainTimeoutMs: 5_000 });
    await log.close();
    expect(r).toMatchObject({ stop: 'interrupted', writesUnanswered: 3, finalFlush: false });
  });

  it('refuses a range the target does not hold', async () => {
    const logPath = path.join(dir, 'big.log');
    const log = await AckLogWriter.create(logPath, { writer: 1, firstBlock: 60, blocks: 5 });
    const target = new FakeTarget(logPath, 1);
    await expect(runWorkload({ target, targetName: 'fake', log, seed: 1 })).rejects.toThrow(/fake has 262144 bytes; blocks 60..64 do not fit/);
    await log.close();
  });

  it('a second run continues the log with later sequences', async () => {
    const { target, log, logPath, opts } = await setup(2);
    answerRandomly(target, 6);
    const first = await runWorkload({ ...opts, writes: 20 });
    await log.close();
    const { writer } = await AckLogWriter.append(logPath);
    const second = new FakeTarget(logPath, 2);
    answerRandomly(second, 7);
    const r = await runWorkload({ ...opts, target: second, log: writer, writes: 20 });
    await writer.close();
    expect(r.run).toBe(2);
    expect(r.firstSeq).toBe(first.lastSeq + 1);
    expect(buildHistory(await readAckLog(logPath))).toMatchObject({ runs: 2, writesAcked: 40, complete: true });
    expect(second.problems).toEqual([]);
  });

  it('a failing answer code is named in the failure record', () => {
    expect(new NbdCommandError('FLUSH', NBD_EIO).message).toBe('FLUSH failed: EIO');
  });
});
