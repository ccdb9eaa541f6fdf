/**
 * The ack log on disk: what the checker sent and what the server
 * acknowledged, in the order it happened (format in ack-log-format.ts).
 *
 * It must outlive a checker killed with -9 at any moment. Records are
 * gathered in memory and written with one synchronous write per batch: the
 * workload commits the "write" records of a batch before those requests go
 * to the socket, so every stamp that can reach the disk is in the log, and
 * commits acks as they arrive. A killed process leaves its written bytes in
 * the page cache, so only a crash of the checker's own machine can lose
 * records; against that the log is fdatasync'ed at every acknowledged FLUSH
 * (and at the end), which keeps the writes that FLUSH made durable on record.
 */
import { randomBytes } from 'node:crypto';
import fs, { promises as fsp } from 'node:fs';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import { MirrorError, describeError } from '../errors.js';
import {
  ACK_LOG_VERSION,
  encodeRecord,
  parseAckLog,
  type AckLogHeader,
  type ParsedAckLog,
  type RunRecord,
} from './ack-log-format.js';
import { STAMP_BLOCK_BYTES } from './stamp.js';

const fdatasync = promisify(fs.fdatasync);

export interface NewLogOptions {
  writer: number;
  firstBlock: number;
  blocks: number;
  /** 16 hex digits; random by default. Tests fix it. */
  logId?: string;
}

export type RunInfo = Omit<RunRecord, 't' | 'run' | 'firstSeq' | 'started'>;

export class AckLogWriter {
  private pending: string[] = [];
  /** Where the next byte goes (positional writes: an appender overwrites a cut-off tail). */
  private position = 0;
  private seq: number;
  private run: number;
  private closed = false;
  /** The sync not yet started: callers arriving before it starts share it. */
  private queuedSync: Promise<void> | null = null;
  private lastSync: Promise<void> = Promise.resolve();

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly header: AckLogHeader,
    lastSeq: number,
    runs: number,
  ) {
    this.seq = lastSeq;
    this.run = runs;
  }

  /** A new log; refuses to overwrite an existing file. The header is on disk when this resolves. */
  static async create(path: string, o: NewLogOptions): Promise<AckLogWriter> {
    const header: AckLogHeader = {
      t: 'log',
      version: ACK_LOG_VERSION,
      logId: o.logId ?? randomBytes(8).toString('hex'),
      writer: o.writer,
      blockSize: STAMP_BLOCK_BYTES,
      firstBlock: o.firstBlock,
      blocks: o.blocks,
      created: new Date().toISOString(),
    };
    let fd: number;
    try {
      fd = fs.openSync(path, 'wx');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new MirrorError('ERR_IO', `${path} exists: continue it with --append, or name a new log`, { path });
      }
      throw logError(path, 'create', e);
    }
    const w = new AckLogWriter(path, fd, header, 0, 0);
    w.pending.push(encodeRecord(header));
    await w.sync();
    // The new name must outlive a crash as well as the bytes behind it.
    await syncDirectory(dirname(path)).catch((e: unknown) => {
      throw logError(path, 'sync the directory of', e);
    });
    return w;
  }

  /**
   * Continues an existing log: checks it, cuts off a record left incomplete
   * by a killed checker, and goes on after its last sequence.
   */
  static async append(path: string): Promise<{ writer: AckLogWriter; previous: ParsedAckLog }> {
    const previous = await readAckLog(path);
    let fd: number;
    try {
      fd = fs.openSync(path, 'r+');
    } catch (e) {
      throw logError(path, 'open for appending', e);
    }
    try {
      fs.ftruncateSync(fd, previous.validBytes);
    } catch (e) {
      fs.closeSync(fd);
      throw logError(path, 'cut the incomplete last record of', e);
    }
    const w = new AckLogWriter(path, fd, previous.header, previous.lastSeq, previous.runs);
    w.position = previous.validBytes;
    return { writer: w, previous };
  }

  /** The sequence for the next write or flush. */
  nextSequence(): number {
    return ++this.seq;
  }

  startRun(info: RunInfo): number {
    this.run += 1;
    this.pending.push(encodeRecord({ t: 'run', run: this.run, firstSeq: this.seq + 1, started: new Date().toISOString(), ...info }));
    return this.run;
  }

  write(seq: number, block: number, fua: boolean): void {
    this.pending.push(encodeRecord(fua ? { t: 'write', seq, block, fua: true } : { t: 'write', seq, block }));
  }

  flush(seq: number): void {
    this.pending.push(encodeRecord({ t: 'flush', seq }));
  }

  ack(seq: number): void {
    this.pending.push(encodeRecord({ t: 'ack', seq }));
  }

  fail(seq: number, error: string): void {
    this.pending.push(encodeRecord({ t: 'fail', seq, error }));
  }

  endRun(reason: string): void {
    this.pending.push(encodeRecord({ t: 'end', run: this.run, reason, ended: new Date().toISOString() }));
  }

  /** Writes the gathered records now (synchronously: see the top of the file). */
  commit(): void {
    if (this.pending.length === 0) return;
    if (this.closed) throw new MirrorError('ERR_IO', `${this.path}: the log is closed`, { path: this.path });
    const bytes = Buffer.from(this.pending.join(''), 'utf8');
    this.pending = [];
    try {
      let done = 0;
      while (done < bytes.length) done += fs.writeSync(this.fd, bytes, done, bytes.length - done, this.position + done);
    } catch (e) {
      throw logError(this.path, 'write', e);
    }
    this.position += bytes.length;
  }

  /** Commits, then fdatasync; concurrent callers share one sync that covers all of them. */
  sync(): Promise<void> {
    this.commit();
    if (this.queuedSync !== null) return this.queuedSync;
    const p = this.lastSync.then(() => {
      // Anything committed from here on needs the next sync.
      this.queuedSync = null;
      return fdatasync(this.fd).catch((e: unknown) => {
        throw logError(this.path, 'sync', e);
      });
    });
    this.queuedSync = p;
    this.lastSync = p.catch(() => undefined);
    return p;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      await this.sync();
    } finally {
      this.closed = true;
      fs.closeSync(this.fd);
    }
  }
}

/** Reads and checks a whole log. */
export async function readAckLog(path: string): Promise<ParsedAckLog> {
  let bytes: Buffer;
  try {
    bytes = await fsp.readFile(path);
  } catch (e) {
    throw logError(path, 'read', e);
  }
  const r = parseAckLog(bytes);
  if (!r.ok) throw new MirrorError('ERR_IO', `${path}:${r.line}: not a usable check log: ${r.reason}`, { path, line: r.line });
  return r.log;
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await fsp.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function logError(path: string, what: string, e: unknown): MirrorError {
  return new MirrorError('ERR_IO', `${path}: cannot ${what} the check log: ${describeError(e)}`, {
    path,
    reason: (e as NodeJS.ErrnoException).code ?? describeError(e),
  });
}
