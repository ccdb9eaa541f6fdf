/**
 * Scattered reads and writes (a store's readRuns and writeRuns) as one job
 * each: a worker thread makes every pread/pwrite of a batch back to back,
 * synchronously, and answers once.
 *
 * Through libuv's thread pool each call of a batch costs the event loop a
 * request object, a hand-off to a pool thread and a completion callback; for
 * a 4 KiB block in the page cache that is several times the system call
 * itself (measured on a 2-core VM: 2,600 scattered 4 KiB reads, 15-35 ms
 * through the pool, 4-9 ms back to back on one thread). Here a batch costs
 * the loop one message each way and one copy of its bytes into or out of
 * the SharedArrayBuffer the worker works on (it shares nothing else).
 *
 * Nothing native: node:worker_threads and node:fs. The worker starts on
 * request (start()) and comes up in the background; until it is online, and
 * for good if it ever fails, the store serves batches through the pool, so
 * nobody waits for it. It runs only while a batch is pending (unref'd
 * otherwise) and ends with the store.
 */
import { Worker } from 'node:worker_threads';
import type { ByteRange } from './block-store.js';

/** Why a batch failed: the system's errno string (EIO when the worker itself failed) and a message. */
export type WorkerFailure = Error & { code: string };

function failure(code: string, message: string): WorkerFailure {
  return Object.assign(new Error(message), { code });
}

/**
 * The worker's code: CommonJS, evaluated (no file to find next to the
 * compiled module, whether it runs from dist/ or from the TypeScript
 * sources under test). Messages: { id, op, fd, sab, runs: [offset, length,
 * ...], blockDevice }; answers { id } or { id, code, message }. The
 * semantics are FileStore's: chunks of at most 8 MiB, short calls
 * continued, end of a regular file reads as zeroes, end of a device is EIO.
 * A first message { id: 0, op: 'warm' } reads one byte a few times and
 * writes none, and is answered like a batch: the worker counts as ready
 * only then, once both directions of the message path and the system calls
 * have run once (a cold worker answered its first batch 10-25 ms late on a
 * 2-core VM, however small the batch).
 */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const MAX_CHUNK = 8 * 1024 * 1024;
function failure(code, message) { return Object.assign(new Error(message), { code }); }
function warm(fd) {
  const one = new Uint8Array(1);
  try {
    for (let i = 0; i < 3; i++) {
      fs.readSync(fd, one, 0, 1, 0);
      fs.writeSync(fd, one, 0, 0, 0);
    }
  } catch {
    // an empty or read-only file: what could run has run
  }
}
parentPort.on('message', (m) => {
  if (m.op === 'warm') {
    warm(m.fd);
    parentPort.postMessage({ id: m.id });
    return;
  }
  const buf = new Uint8Array(m.sab);
  let at = 0;
  try {
    for (let i = 0; i < m.runs.length; i += 2) {
      const position = m.runs[i];
      const length = m.runs[i + 1];
      let done = 0;
      while (done < length) {
        const n = Math.min(length - done, MAX_CHUNK);
        if (m.op === 'read') {
          const got = fs.readSync(m.fd, buf, at + done, n, position + done);
          if (got === 0) {
            if (m.blockDevice) throw failure('EIO', 'device ended at ' + (position + done));
            buf.fill(0, at + done, at + length);
            break;
          }
          done += got;
        } else {
          const put = fs.writeSync(m.fd, buf, at + done, n, position + done);
          if (put <= 0) throw failure('EIO', 'no progress writing at ' + (position + done));
          done += put;
        }
      }
      at += length;
    }
    parentPort.postMessage({ id: m.id });
  } catch (e) {
    parentPort.postMessage({ id: m.id, code: typeof e.code === 'string' ? e.code : 'EIO', message: String(e && e.message) });
  }
});
`;

/** The id of the warm-up message (batches count from 1). */
const WARM_ID = 0;
/** Free SharedArrayBuffers kept for the next batches, in bytes at most. */
const KEEP_SHARED_BYTES = 8 * 1024 * 1024;
/** The smallest SharedArrayBuffer made: small batches share a size class. */
const MIN_SHARED_BYTES = 256 * 1024;

interface Pending {
  resolve(): void;
  reject(f: WorkerFailure): void;
}

export class ScatteredWorker {
  private worker: Worker | null = null;
  private online = false;
  /** Never used again: it failed, or the store closed. */
  private done = false;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly free: SharedArrayBuffer[] = [];
  private freeBytes = 0;

  constructor(
    private readonly fd: number,
    private readonly blockDevice: boolean,
  ) {}

  /** Starts the worker (once); it is ready some milliseconds later. */
  start(): void {
    if (this.worker !== null || this.done) return;
    let w: Worker;
    try {
      w = new Worker(WORKER_SOURCE, { eval: true });
    } catch {
      this.done = true;
      return;
    }
    this.worker = w;
    w.unref();
    w.on('message', (m: { id: number; code?: string; message?: string }) => {
      if (m.id === WARM_ID) this.online = !this.done;
      else this.answered(m);
    });
    w.on('error', (e: Error) => this.lost(failure('EIO', `scattered I/O worker failed: ${e.message}`)));
    w.on('exit', () => this.lost(failure('EIO', 'scattered I/O worker exited')));
    w.postMessage({ id: WARM_ID, op: 'warm', fd: this.fd });
  }

  /** Online and usable: batches may go to it. */
  get ready(): boolean {
    return this.online && !this.done;
  }

  /**
   * Reads the runs, one after the other, into a new buffer of `total`
   * bytes. The worker reads straight into it: its memory is a
   * SharedArrayBuffer of its own, which the caller owns from then on like
   * any Buffer.
   */
  async read(runs: readonly ByteRange[], total: number): Promise<Buffer> {
    const sab = new SharedArrayBuffer(total);
    await this.post('read', runs, sab);
    return Buffer.from(sab, 0, total);
  }

  /** Reads the runs, one after the other, into `into` (which holds `total` bytes at least): through a pooled buffer, then copied. */
  async readInto(runs: readonly ByteRange[], total: number, into: Buffer): Promise<void> {
    const sab = this.take(total);
    try {
      await this.post('read', runs, sab);
      into.set(new Uint8Array(sab, 0, total));
    } finally {
      this.giveBack(sab);
    }
  }

  /** Writes the bytes of `data` (`total` of them, concatenated) to the runs in order. */
  async write(runs: readonly ByteRange[], data: readonly Buffer[], total: number): Promise<void> {
    const sab = this.take(total);
    try {
      const view = new Uint8Array(sab, 0, total);
      let at = 0;
      for (const b of data) {
        view.set(b, at);
        at += b.length;
      }
      await this.post('write', runs, sab);
    } finally {
      this.giveBack(sab);
    }
  }

  /** No more batches; the worker ends (batches still pending fail with EIO). */
  async close(): Promise<void> {
    this.done = true;
    const w = this.worker;
    this.worker = null;
    if (w !== null) await w.terminate();
    this.lost(failure('EBADF', 'the store was closed'));
  }

  private post(op: 'read' | 'write', runs: readonly ByteRange[], sab: SharedArrayBuffer): Promise<void> {
    const w = this.worker;
    if (w === null || !this.ready) return Promise.reject(failure('EIO', 'scattered I/O worker is not running'));
    const flat = new Float64Array(runs.length * 2);
    runs.forEach((r, i) => {
      flat[2 * i] = r.offset;
      flat[2 * i + 1] = r.length;
    });
    const id = this.nextId++;
    // Pending work keeps the process alive, as a pool request would.
    if (this.pending.size === 0) w.ref();
    return new Promise<void>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ id, op, fd: this.fd, sab, runs: flat, blockDevice: this.blockDevice });
    });
  }

  private answered(m: { id: number; code?: string; message?: string }): void {
    const p = this.pending.get(m.id);
    if (p === undefined) return;
    this.pending.delete(m.id);
    if (this.pending.size === 0) this.worker?.unref();
    if (m.code === undefined) p.resolve();
    else p.reject(failure(m.code, m.message ?? m.code));
  }

  /** The worker is gone: what it had not answered fails, and it is not used again. */
  private lost(f: WorkerFailure): void {
    this.done = true;
    this.online = false;
    for (const p of this.pending.values()) p.reject(f);
    this.pending.clear();
  }

  private take(total: number): SharedArrayBuffer {
    const i = this.free.findIndex((s) => s.byteLength >= total);
    if (i >= 0) {
      const sab = this.free.splice(i, 1)[0]!;
      this.freeBytes -= sab.byteLength;
      return sab;
    }
    let size = MIN_SHARED_BYTES;
    while (size < total) size *= 2;
    return new SharedArrayBuffer(size);
  }

  private giveBack(sab: SharedArrayBuffer): void {
    if (this.done || this.freeBytes + sab.byteLength > KEEP_SHARED_BYTES) return;
    this.free.push(sab);
    this.freeBytes += sab.byteLength;
  }
}
