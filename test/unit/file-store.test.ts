import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { mkdtemp, open as openHandle, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  BlockStoreError,
  FileStore,
  MAX_CHUNK_BYTES,
  nodePositionalIo,
  sizeOf,
  type FileStoreOptions,
  type PositionalIo,
} from '../../native-free-io/index.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
let opened: FileStore[];

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'mirrorbd-file-store-'));
  opened = [];
});

afterEach(async () => {
  await Promise.allSettled(opened.map((s) => s.close()));
  await rm(dir, { recursive: true, force: true });
});

function makeFile(name: string, content: Buffer): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, content);
  return file;
}

async function openStore(file: string, options?: FileStoreOptions): Promise<FileStore> {
  const store = await FileStore.open(file, options);
  opened.push(store);
  return store;
}

/** Resolves the BlockStoreError a promise rejects with; fails if it resolves or rejects otherwise. */
async function rejection(p: Promise<unknown>): Promise<BlockStoreError> {
  const outcome = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(outcome).toBeInstanceOf(BlockStoreError);
  return outcome as BlockStoreError;
}

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

interface IoRecord {
  op: 'read' | 'write' | 'datasync';
  length: number;
  position: number;
}

/**
 * Wraps the real system calls: records every call, tracks how many are
 * outstanding at once, and can delay them (so requests pile up) or cap the
 * bytes each call moves (so every read and write comes back short).
 */
function instrumentedIo(opts: { delayMs?: number; maxBytesPerCall?: number; fail?: (r: IoRecord) => string | undefined } = {}) {
  const stats = { current: 0, peak: 0, calls: [] as IoRecord[] };
  const cap = (n: number): number => Math.min(n, opts.maxBytesPerCall ?? n);
  async function around<T>(record: IoRecord, call: () => Promise<T>): Promise<T> {
    stats.calls.push(record);
    stats.current++;
    stats.peak = Math.max(stats.peak, stats.current);
    try {
      if (opts.delayMs !== undefined) await new Promise((r) => setTimeout(r, opts.delayMs));
      const errno = opts.fail?.(record);
      if (errno !== undefined) throw Object.assign(new Error(`injected ${errno}`), { code: errno });
      return await call();
    } finally {
      stats.current--;
    }
  }
  const io: PositionalIo = {
    read: (fd, buffer, off, length, position) =>
      around({ op: 'read', length, position }, () => nodePositionalIo.read(fd, buffer, off, cap(length), position)),
    write: (fd, buffer, off, length, position) =>
      around({ op: 'write', length, position }, () => nodePositionalIo.write(fd, buffer, off, cap(length), position)),
    datasync: (fd) => around({ op: 'datasync', length: 0, position: 0 }, () => nodePositionalIo.datasync(fd)),
  };
  return { io, stats };
}

describe('FileStore on a regular file', () => {
  it('round-trips data at odd offsets and sizes, and the bytes land in the file', async () => {
    const file = makeFile('disk.img', Buffer.alloc(1 * MiB + 333, 0x5a));
    const store = await openStore(file);
    expect(store.size).toBe(1 * MiB + 333);
    expect(store.isBlockDevice).toBe(false);

    const expected = Buffer.alloc(store.size, 0x5a);
    const writes: Array<[number, number]> = [
      [1, 1],
      [4095, 2],
      [12_345, 70_001],
      [store.size - 17, 17],
      [0, 3],
    ];
    for (const [offset, length] of writes) {
      const data = randomBytes(length);
      await store.write(offset, data);
      data.copy(expected, offset);
    }
    expect((await store.read(0, store.size)).equals(expected)).toBe(true);
    expect(fs.readFileSync(file).equals(expected)).toBe(true);

    // Reading into a caller's buffer fills exactly that buffer and returns it.
    const into = Buffer.alloc(70_001);
    const got = await store.read(12_345, 70_001, into);
    expect(got).toBe(into);
    expect(into.equals(expected.subarray(12_345, 12_345 + 70_001))).toBe(true);
    expect((await store.read(store.size, 0)).length).toBe(0);
  });

  it('splits large requests into calls of at most 8 MiB', async () => {
    const file = makeFile('big.img', Buffer.alloc(20 * MiB));
    const { io, stats } = instrumentedIo();
    const store = await openStore(file, { io });
    const data = randomBytes(17 * MiB + 3);
    await store.write(5, data);
    expect((await store.read(5, data.length)).equals(data)).toBe(true);
    expect(stats.calls.length).toBe(6); // 3 writes, 3 reads
    expect(Math.max(...stats.calls.map((c) => c.length))).toBe(MAX_CHUNK_BYTES);
  });

  it('continues short reads and writes until the whole request is done', async () => {
    const file = makeFile('short.img', Buffer.alloc(256 * KiB));
    const { io, stats } = instrumentedIo({ maxBytesPerCall: 1000 });
    const store = await openStore(file, { io });
    const data = randomBytes(10_007);
    await store.write(333, data);
    expect(fs.readFileSync(file).subarray(333, 333 + data.length).equals(data)).toBe(true);
    expect((await store.read(333, data.length)).equals(data)).toBe(true);
    expect(stats.calls.filter((c) => c.op === 'write').length).toBe(11);
    expect(stats.calls.filter((c) => c.op === 'read').length).toBe(11);
  });

  it('reads past the end of a backing file that shrank as zeroes', async () => {
    const file = makeFile('shrinks.img', Buffer.alloc(64 * KiB, 0x77));
    const store = await openStore(file);
    fs.truncateSync(file, 10_000);
    const into = Buffer.alloc(10 * KiB, 0xff);
    await store.read(8_000, into.length, into);
    expect(into.subarray(0, 2_000).every((b) => b === 0x77)).toBe(true);
    expect(into.subarray(2_000).every((b) => b === 0)).toBe(true);
    // Entirely past the end: all zeroes, and no stale bytes left in the buffer.
    const beyond = Buffer.alloc(4 * KiB, 0xff);
    await store.read(60 * KiB, beyond.length, beyond);
    expect(beyond.every((b) => b === 0)).toBe(true);
  });

  it('rejects out-of-range and malformed requests before any I/O', async () => {
    const content = randomBytes(64 * KiB);
    const file = makeFile('range.img', content);
    const { io, stats } = instrumentedIo();
    const store = await openStore(file, { io });
    const end = store.size;

    const cases: Array<[Promise<unknown>, string, string]> = [
      [store.read(end - 1, 2), 'read', 'EINVAL'],
      [store.read(end + 1, 0), 'read', 'EINVAL'],
      [store.write(end - 3, Buffer.alloc(4)), 'write', 'ENOSPC'],
      [store.writeZeroes(end, 1), 'writeZeroes', 'ENOSPC'],
      [store.trim(0, end + 1), 'trim', 'EINVAL'],
      [store.extents(end - 1, 2), 'extents', 'EINVAL'],
      [store.read(-1, 1), 'read', 'EINVAL'],
      [store.read(1.5, 1), 'read', 'EINVAL'],
      [store.write(Number.NaN, Buffer.alloc(1)), 'write', 'EINVAL'],
      [store.writeZeroes(0, Number.MAX_SAFE_INTEGER + 2), 'writeZeroes', 'EINVAL'],
      [store.read(0, 100, Buffer.alloc(99)), 'read', 'EINVAL'],
    ];
    for (const [p, op, errno] of cases) {
      const err = await rejection(p);
      expect({ op: err.op, errno: err.errno }).toEqual({ op, errno });
    }
    const err = await rejection(store.write(end - 3, Buffer.alloc(4)));
    expect({ offset: err.offset, length: err.length }).toEqual({ offset: end - 3, length: 4 });
    expect(stats.calls).toEqual([]);
    expect(fs.readFileSync(file).equals(content)).toBe(true);
  });

  it('writeZeroes zeroes exactly its range, also beyond one chunk', async () => {
    const size = MAX_CHUNK_BYTES + 3 * MiB;
    const file = makeFile('zero.img', Buffer.alloc(size, 0xaa));
    const store = await openStore(file);
    const offset = 7;
    const length = MAX_CHUNK_BYTES + 1 * MiB + 5;
    await store.writeZeroes(offset, length);
    await store.writeZeroes(size - 1, 1, { noHole: true });
    const bytes = fs.readFileSync(file);
    expect(bytes.subarray(0, offset).every((b) => b === 0xaa)).toBe(true);
    expect(bytes.subarray(offset, offset + length).every((b) => b === 0)).toBe(true);
    expect(bytes.subarray(offset + length, size - 1).every((b) => b === 0xaa)).toBe(true);
    expect(bytes[size - 1]).toBe(0);
    // The shared zero source is still all zeroes after data was read around it.
    await store.writeZeroes(0, 4 * KiB);
    expect((await store.read(0, 4 * KiB)).every((b) => b === 0)).toBe(true);
  });

  it('flush calls fdatasync once and reports its failure with the errno', async () => {
    const file = makeFile('flush.img', Buffer.alloc(64 * KiB));
    let failSync = false;
    const { io, stats } = instrumentedIo({ fail: (r) => (r.op === 'datasync' && failSync ? 'EIO' : undefined) });
    const store = await openStore(file, { io });
    await store.write(100, Buffer.from('durable'));
    await store.flush();
    expect(stats.calls.map((c) => c.op)).toEqual(['write', 'datasync']);
    expect(fs.readFileSync(file).subarray(100, 107).toString()).toBe('durable');

    failSync = true;
    const err = await rejection(store.flush());
    expect({ op: err.op, errno: err.errno }).toEqual({ op: 'flush', errno: 'EIO' });
    expect(err.message).toContain(file);
  });

  it('never has more than maxInFlight calls at the fs layer, and serves the queue in order', async () => {
    const file = makeFile('busy.img', Buffer.alloc(1 * MiB));
    const { io, stats } = instrumentedIo({ delayMs: 2 });
    const store = await openStore(file, { io, maxInFlight: 4 });
    expect(store.maxInFlight).toBe(4);

    const blockBytes = 4 * KiB;
    const ops: Array<Promise<unknown>> = [];
    const written = new Map<number, Buffer>();
    for (let i = 0; i < 120; i++) {
      const offset = (i % 64) * blockBytes;
      if (i % 4 === 0) {
        const data = randomBytes(blockBytes);
        written.set(offset, data);
        ops.push(store.write(offset, data));
      } else if (i % 4 === 1) ops.push(store.read(offset, blockBytes));
      else if (i % 4 === 2) ops.push(store.flush());
      else ops.push(store.read(offset + 1, 100));
    }
    expect(store.inFlight).toBe(4);
    expect(store.queued).toBe(116);
    await Promise.all(ops);

    expect(stats.peak).toBe(4);
    expect(store.inFlight).toBe(0);
    expect(store.queued).toBe(0);
    // Each request here is one call, so calls start in submission order.
    const kinds = stats.calls.map((c) => c.op);
    expect(kinds).toEqual(Array.from({ length: 120 }, (_, i) => (['write', 'read', 'datasync', 'read'] as const)[i % 4]));
    for (const [offset, data] of written) expect((await store.read(offset, blockBytes)).equals(data)).toBe(true);
  });

  it('uses 64 as the default bound', async () => {
    const file = makeFile('default.img', Buffer.alloc(64 * KiB));
    const { io, stats } = instrumentedIo({ delayMs: 2 });
    const store = await openStore(file, { io });
    await Promise.all(Array.from({ length: 200 }, (_, i) => store.read(i * 7, 512)));
    expect(stats.peak).toBe(64);
  });

  it('sizeLimitBytes hides everything past the limit', async () => {
    const file = makeFile('limited.img', Buffer.alloc(1 * MiB, 0x33));
    const limit = 192 * KiB;
    const store = await openStore(file, { sizeLimitBytes: limit });
    expect(store.size).toBe(limit);
    expect(store.deviceSizeBytes).toBe(1 * MiB);
    await store.writeZeroes(0, store.size);
    expect((await rejection(store.write(limit, Buffer.alloc(1)))).errno).toBe('ENOSPC');
    expect((await rejection(store.read(limit - 1, 2))).errno).toBe('EINVAL');
    expect(await store.extents(0, limit)).toEqual([{ offset: 0, length: limit, hole: false, zero: false }]);
    const bytes = fs.readFileSync(file);
    expect(bytes.subarray(0, limit).every((b) => b === 0)).toBe(true);
    expect(bytes.subarray(limit).every((b) => b === 0x33)).toBe(true);

    const tooBig = await rejection(FileStore.open(file, { sizeLimitBytes: 1 * MiB + 1 }));
    expect({ op: tooBig.op, errno: tooBig.errno }).toEqual({ op: 'open', errno: 'EINVAL' });
  });

  it('surfaces system errors as BlockStoreError with the errno', async () => {
    const content = randomBytes(8 * KiB);
    const file = makeFile('ro.img', content);
    const store = await openStore(file, { readOnly: true });
    expect(store.readOnly).toBe(true);
    const err = await rejection(store.write(10, Buffer.from('nope')));
    expect({ errno: err.errno, op: err.op, offset: err.offset, length: err.length }).toEqual({
      errno: 'EBADF',
      op: 'write',
      offset: 10,
      length: 4,
    });
    expect((await rejection(store.writeZeroes(0, 1))).errno).toBe('EBADF');
    expect((await store.read(0, 8 * KiB)).equals(content)).toBe(true);
    expect(fs.readFileSync(file).equals(content)).toBe(true);

    const { io } = instrumentedIo({ fail: (r) => (r.op === 'read' && r.position + r.length > 4096 ? 'EIO' : undefined) });
    const failing = await openStore(file, { io });
    expect((await failing.read(0, 4096)).equals(content.subarray(0, 4096))).toBe(true);
    const eio = await rejection(failing.read(4000, 200));
    expect({ errno: eio.errno, op: eio.op, offset: eio.offset, length: eio.length }).toEqual({
      errno: 'EIO',
      op: 'read',
      offset: 4000,
      length: 200,
    });
  });

  it('refuses to open what it cannot serve, without leaking descriptors', async () => {
    const fdsBefore = openFdCount();
    const missing = await rejection(FileStore.open(path.join(dir, 'missing.img')));
    expect({ op: missing.op, errno: missing.errno }).toEqual({ op: 'open', errno: 'ENOENT' });
    // A directory opens read-only but is neither a file nor a device.
    expect((await rejection(FileStore.open(dir, { readOnly: true }))).errno).toBe('EINVAL');
    expect((await rejection(FileStore.open(dir))).errno).toBe('EISDIR');
    const file = makeFile('opts.img', Buffer.alloc(4096));
    expect((await rejection(FileStore.open(file, { maxInFlight: 0 }))).errno).toBe('EINVAL');
    expect((await rejection(FileStore.open(file, { sizeLimitBytes: -1 }))).errno).toBe('EINVAL');
    expect(openFdCount()).toBe(fdsBefore);
  });

  it('close lets accepted requests finish, then refuses new ones with EBADF', async () => {
    const file = makeFile('close.img', Buffer.alloc(64 * KiB));
    const fdsBefore = openFdCount();
    const { io } = instrumentedIo({ delayMs: 5 });
    const store = await FileStore.open(file, { io, maxInFlight: 2 });
    expect(openFdCount()).toBe(fdsBefore + 1);

    const pending = Array.from({ length: 6 }, (_, i) => store.write(i * KiB, Buffer.alloc(KiB, i + 1)));
    const closed = store.close();
    const late = await rejection(store.read(0, 1));
    expect({ op: late.op, errno: late.errno }).toEqual({ op: 'read', errno: 'EBADF' });
    await Promise.all(pending);
    await closed;
    await store.close(); // idempotent
    expect(openFdCount()).toBe(fdsBefore);

    for (const p of [store.write(0, Buffer.alloc(1)), store.flush(), store.trim(0, 1), store.extents(0, 1), store.writeZeroes(0, 1)]) {
      expect((await rejection(p)).errno).toBe('EBADF');
    }
    const bytes = fs.readFileSync(file);
    for (let i = 0; i < 6; i++) expect(bytes.subarray(i * KiB, (i + 1) * KiB).every((b) => b === i + 1)).toBe(true);
  });

  it('trim is a successful no-op and extents report all data, as the capabilities say', async () => {
    const content = randomBytes(128 * KiB);
    const file = makeFile('caps.img', content);
    const store = await openStore(file);
    expect(store.capabilities).toEqual({ canTrim: false, canFastZero: false, knowsAllocation: false, rotational: false });
    await store.trim(4096, 64 * KiB);
    expect(fs.readFileSync(file).equals(content)).toBe(true);
    expect(await store.extents(10, 1000)).toEqual([{ offset: 10, length: 1000, hole: false, zero: false }]);
    expect(await store.extents(10, 0)).toEqual([]);
  });

  it('sizeOf accepts a file descriptor and a FileHandle alike', async () => {
    const file = makeFile('sized.img', Buffer.alloc(12_345));
    const handle = await openHandle(file, 'r');
    try {
      expect(await sizeOf(handle)).toEqual({ size: 12_345, isBlockDevice: false });
      expect(await sizeOf(handle.fd)).toEqual({ size: 12_345, isBlockDevice: false });
    } finally {
      await handle.close();
    }
  });
});

describe('FileStore: writeNow (a write on the calling thread)', () => {
  it('writes the pieces as one range before it returns, and the async path reads them back', async () => {
    const file = makeFile('now.img', Buffer.alloc(64 * KiB));
    const store = await openStore(file);
    const parts = [Buffer.alloc(1000, 1), Buffer.alloc(3096, 2), Buffer.alloc(4096, 3)];
    expect(store.writeNow(5 * KiB, parts)).toBe(true);
    // Nothing awaited in between: the bytes are in the file already.
    const fd = fs.openSync(file, 'r');
    const raw = Buffer.alloc(8 * KiB);
    fs.readSync(fd, raw, 0, raw.length, 5 * KiB);
    fs.closeSync(fd);
    expect(raw).toEqual(Buffer.concat(parts));
    expect(await store.read(5 * KiB, 8 * KiB)).toEqual(Buffer.concat(parts));
    expect(store.inFlight).toBe(0);
  });

  it('continues short writes until every byte is in', async () => {
    const file = makeFile('short.img', Buffer.alloc(64 * KiB));
    const calls: number[] = [];
    const io: PositionalIo = {
      ...nodePositionalIo,
      // at most 1000 bytes per call, as a disk that keeps coming back short
      writevSync: (fd, buffers, position) => {
        const first = Buffer.from(buffers[0]!.buffer, buffers[0]!.byteOffset, Math.min(1000, buffers[0]!.length));
        calls.push(first.length);
        return fs.writeSync(fd, first, 0, first.length, position);
      },
    };
    const store = await openStore(file, { io });
    const parts = [randomBytes(2500), randomBytes(1700)];
    expect(store.writeNow(100, parts)).toBe(true);
    expect(calls.reduce((a, b) => a + b, 0)).toBe(4200);
    expect(calls.length).toBeGreaterThan(4);
    expect(await store.read(100, 4200)).toEqual(Buffer.concat(parts));
  });

  it('writev continues a short pwritev with the rest of the pieces (the async path)', async () => {
    const file = makeFile('shortv.img', Buffer.alloc(64 * KiB));
    const io: PositionalIo = {
      ...nodePositionalIo,
      // the first call moves 1000 bytes of the first piece only
      writev: (fd, buffers, position) => nodePositionalIo.write(fd, buffers[0]!, 0, Math.min(1000, buffers[0]!.length), position),
    };
    const store = await openStore(file, { io });
    const parts = [randomBytes(2500), randomBytes(1700), randomBytes(300)];
    await store.writev(100, parts);
    expect(await store.read(100, 4500)).toEqual(Buffer.concat(parts));
    expect(store.inFlight).toBe(0);
  });

  it('throws BlockStoreErrors as write rejects: past the end ENOSPC, after close EBADF, the system\'s errno on failure', async () => {
    const file = makeFile('errors.img', Buffer.alloc(16 * KiB));
    const failing: PositionalIo = {
      ...nodePositionalIo,
      writevSync: () => {
        throw Object.assign(new Error('injected'), { code: 'EIO' });
      },
    };
    const store = await openStore(file, { io: failing });
    const thrown = (f: () => unknown): BlockStoreError => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(BlockStoreError);
        return e as BlockStoreError;
      }
      throw new Error('expected a BlockStoreError');
    };
    expect(thrown(() => store.writeNow(12 * KiB, [Buffer.alloc(8 * KiB)])).errno).toBe('ENOSPC');
    const eio = thrown(() => store.writeNow(0, [Buffer.alloc(4 * KiB)]));
    expect([eio.errno, eio.op, eio.offset, eio.length]).toEqual(['EIO', 'write', 0, 4 * KiB]);
    await store.close();
    expect(thrown(() => store.writeNow(0, [Buffer.alloc(1)])).errno).toBe('EBADF');
  });

  it('answers false, writing nothing, while another request of the store is in progress', async () => {
    const file = makeFile('busy.img', Buffer.alloc(16 * KiB));
    let finishSync!: () => void;
    const io: PositionalIo = {
      ...nodePositionalIo,
      datasync: (fd) =>
        new Promise<void>((resolve) => {
          finishSync = resolve;
        }).then(() => nodePositionalIo.datasync(fd)),
    };
    const store = await openStore(file, { io });
    const flushing = store.flush();
    await new Promise((r) => setImmediate(r));
    expect(store.writeNow(0, [Buffer.alloc(4 * KiB, 9)])).toBe(false);
    expect(await store.read(0, 4 * KiB)).toEqual(Buffer.alloc(4 * KiB));
    finishSync();
    await flushing;
    expect(store.writeNow(0, [Buffer.alloc(4 * KiB, 9)])).toBe(true);
    expect(await store.read(0, 4 * KiB)).toEqual(Buffer.alloc(4 * KiB, 9));
  });

  it('answers false, writing nothing, where the injected I/O has no synchronous call', async () => {
    const file = makeFile('nosync.img', Buffer.alloc(16 * KiB));
    const { io } = instrumentedIo();
    const store = await openStore(file, { io });
    expect(store.writeNow(0, [Buffer.alloc(4 * KiB, 9)])).toBe(false);
    expect(await store.read(0, 4 * KiB)).toEqual(Buffer.alloc(4 * KiB));
  });
});

describe('FileStore: scattered runs (readRuns, writeRuns)', () => {
  const runs = [
    { offset: 3, length: 5000 },
    { offset: 8192, length: 4096 },
    { offset: 8192 + 4096, length: 1 }, // adjacent to the one before
    { offset: 100 * KiB, length: 10 * KiB },
  ];
  const total = runs.reduce((n, r) => n + r.length, 0);

  /** The bytes of the runs, one after the other, as separate reads see them. */
  function gather(content: Buffer): Buffer {
    return Buffer.concat(runs.map((r) => content.subarray(r.offset, r.offset + r.length)));
  }

  /** Waits for the worker prepareRuns started. */
  async function withWorker(store: FileStore): Promise<void> {
    store.prepareRuns();
    const deadline = Date.now() + 10_000;
    while (!store.runsInWorker) {
      if (Date.now() > deadline) throw new Error('the scattered I/O worker never came online');
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  for (const mode of ['pool', 'worker'] as const) {
    it(`reads and writes the runs in order, pieces cut anywhere (${mode})`, async () => {
      const content = randomBytes(256 * KiB);
      const file = makeFile(`runs-${mode}.img`, content);
      const store = await openStore(file);
      if (mode === 'worker') await withWorker(store);
      expect(store.runsInWorker).toBe(mode === 'worker');
      expect((await store.readRuns(runs)).equals(gather(content))).toBe(true);
      // into a caller's buffer (a view of a bigger one)
      const big = Buffer.alloc(total + 10, 0xee);
      const into = big.subarray(5, 5 + total);
      expect(await store.readRuns(runs, into)).toBe(into);
      expect(into.equals(gather(content))).toBe(true);
      expect(big.subarray(0, 5).every((b) => b === 0xee) && big.subarray(5 + total).every((b) => b === 0xee)).toBe(true);
      // pieces that do not line up with the runs
      const data = randomBytes(total);
      const pieces = [data.subarray(0, 1), data.subarray(1, 5001), data.subarray(5001, 9000), data.subarray(9000)];
      await store.writeRuns(runs, pieces);
      const after = fs.readFileSync(file);
      const expected = Buffer.from(content);
      let at = 0;
      for (const r of runs) {
        data.copy(expected, r.offset, at, at + r.length);
        at += r.length;
      }
      expect(after.equals(expected)).toBe(true);
      expect(store.inFlight).toBe(0);
    });

    it(`checks every run before any I/O (${mode})`, async () => {
      const content = randomBytes(64 * KiB);
      const file = makeFile(`runs-bad-${mode}.img`, content);
      const store = await openStore(file);
      if (mode === 'worker') await withWorker(store);
      const ok = { offset: 0, length: 4096 };
      expect((await rejection(store.readRuns([ok, { offset: 64 * KiB - 10, length: 11 }]))).errno).toBe('EINVAL');
      expect((await rejection(store.writeRuns([ok, { offset: 64 * KiB - 10, length: 11 }], [Buffer.alloc(4107)]))).errno).toBe('ENOSPC');
      expect((await rejection(store.writeRuns([{ offset: 8192, length: 10 }, ok], [Buffer.alloc(4106)]))).errno).toBe('EINVAL');
      expect((await rejection(store.writeRuns([ok, { offset: 4000, length: 10 }], [Buffer.alloc(4106)]))).errno).toBe('EINVAL');
      expect((await rejection(store.writeRuns([ok, { offset: 8192, length: 0 }], [Buffer.alloc(4096)]))).errno).toBe('EINVAL');
      expect((await rejection(store.writeRuns([ok], [Buffer.alloc(4095)]))).errno).toBe('EINVAL');
      expect((await rejection(store.readRuns([ok, { offset: 8192, length: 10 }], Buffer.alloc(4100)))).errno).toBe('EINVAL');
      // nothing was written
      expect(fs.readFileSync(file).equals(content)).toBe(true);
    });

    it(`reads past the end of a file that shrank as zeroes, and surfaces the errno of a failed write (${mode})`, async () => {
      const file = makeFile(`runs-shrink-${mode}.img`, Buffer.alloc(64 * KiB, 0x77));
      const store = await openStore(file);
      if (mode === 'worker') await withWorker(store);
      fs.truncateSync(file, 10_000);
      const got = await store.readRuns([{ offset: 0, length: 100 }, { offset: 9_950, length: 100 }, { offset: 60 * KiB, length: 10 }]);
      expect(got.subarray(0, 150).every((b) => b === 0x77)).toBe(true);
      expect(got.subarray(150).every((b) => b === 0)).toBe(true);
      const ro = await openStore(file, { readOnly: true });
      if (mode === 'worker') await withWorker(ro);
      const err = await rejection(ro.writeRuns([{ offset: 0, length: 1 }, { offset: 10, length: 1 }], [Buffer.alloc(2)]));
      expect({ errno: err.errno, op: err.op, offset: err.offset }).toEqual({ errno: 'EBADF', op: 'write', offset: 0 });
    });
  }

  it('through the pool: one slot per run, and a failure only once every run of the batch has settled', async () => {
    const file = makeFile('runs-slots.img', Buffer.alloc(256 * KiB));
    const { io, stats } = instrumentedIo({ delayMs: 2, fail: (r) => (r.position === 8192 ? 'EIO' : undefined) });
    const store = await openStore(file, { io, maxInFlight: 2 });
    // an injected PositionalIo is what is tested: no worker for it
    store.prepareRuns();
    await new Promise((r) => setTimeout(r, 50));
    expect(store.runsInWorker).toBe(false);
    const many = Array.from({ length: 8 }, (_, i) => ({ offset: i * 8192, length: 4096 }));
    const failed = store.writeRuns(many, [Buffer.alloc(8 * 4096)]).then(
      () => null,
      (e: unknown) => ({ e, outstanding: stats.current }),
    );
    const outcome = await failed;
    expect((outcome?.e as BlockStoreError).errno).toBe('EIO');
    expect(outcome?.outstanding).toBe(0);
    expect(stats.peak).toBe(2);
    expect(stats.calls.filter((c) => c.op === 'write')).toHaveLength(8);
  });

  it('close ends the worker; runs afterwards are refused with EBADF', async () => {
    const file = makeFile('runs-close.img', Buffer.alloc(64 * KiB));
    const store = await FileStore.open(file);
    await withWorker(store);
    const pending = store.writeRuns([{ offset: 0, length: 10 }, { offset: 100, length: 10 }], [Buffer.alloc(20, 1)]);
    const closing = store.close();
    await pending;
    await closing;
    expect(store.runsInWorker).toBe(false);
    expect((await rejection(store.readRuns([{ offset: 0, length: 1 }]))).errno).toBe('EBADF');
    expect(fs.readFileSync(file).subarray(100, 110).every((b) => b === 1)).toBe(true);
  });
});

describe('FileStore on a block device', () => {
  it('finds the size of a loop device and reads and writes through it', async (ctx) => {
    const backing = makeFile('loop-backing.img', Buffer.alloc(3 * MiB, 0x11));
    const data = randomBytes(10_001);
    let device: string;
    try {
      device = execFileSync('losetup', ['--find', '--show', backing], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    } catch (e) {
      console.warn(`skipping loop device test: losetup failed (${(e as Error).message.split('\n')[0]})`);
      ctx.skip();
      return;
    }
    try {
      const store = await openStore(device);
      expect(store.isBlockDevice).toBe(true);
      expect(store.size).toBe(3 * MiB);

      const st = fs.statSync(device);
      const sysfs = `/sys/dev/block/${Math.floor(st.rdev / 256) & 0xfff}:${st.rdev & 0xff}/queue/rotational`;
      expect(store.capabilities.rotational).toBe(fs.readFileSync(sysfs, 'utf8').trim() === '1');

      await store.write(777, data);
      await store.flush();
      expect((await store.read(777, data.length)).equals(data)).toBe(true);
      expect((await rejection(store.write(3 * MiB - 1, Buffer.alloc(2)))).errno).toBe('ENOSPC');
      expect((await rejection(store.read(3 * MiB, 1))).errno).toBe('EINVAL');
      await store.close();

      const limited = await openStore(device, { sizeLimitBytes: 1 * MiB });
      expect({ size: limited.size, deviceSizeBytes: limited.deviceSizeBytes }).toEqual({ size: 1 * MiB, deviceSizeBytes: 3 * MiB });
      await limited.close();
    } finally {
      execFileSync('losetup', ['-d', device]);
    }
    // The write went through the device into its backing file.
    expect(fs.readFileSync(backing).subarray(777, 777 + data.length).equals(data)).toBe(true);
  });
});
