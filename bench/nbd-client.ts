/**
 * A minimal NBD client for the benchmarks: fixed newstyle handshake with
 * NBD_OPT_GO, then pipelined WRITE and FLUSH requests with simple replies.
 * Enough to dirty chosen blocks of an export; not a general client (no
 * structured replies, no TLS, no READ).
 */

import { connect, type Socket } from 'node:net';

const NBDMAGIC = Buffer.from('NBDMAGIC', 'latin1');
const IHAVEOPT = 0x49484156454f5054n;
const OPT_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;
const INFO_EXPORT = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const CMD_FLUSH = 3;

/** A byte stream reader: await exactly n bytes. */
class Reader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;

  constructor(sock: Socket) {
    sock.on('data', (b: Buffer) => {
      this.chunks.push(b);
      this.buffered += b.length;
      this.pump();
    });
    const fail = (e: Error): void => {
      this.failure ??= e;
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = null;
        w.reject(this.failure);
      }
    };
    sock.on('error', fail);
    sock.on('close', () => fail(new Error('NBD server closed the connection')));
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('concurrent read'));
    if (this.buffered >= n) return Promise.resolve(this.take(n));
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  private pump(): void {
    if (this.waiter && this.buffered >= this.waiter.n) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(this.take(w.n));
    }
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }
}

export class NbdClient {
  private nextHandle = 1n;
  private readonly pending = new Map<bigint, { resolve: () => void; reject: (e: Error) => void }>();
  private replyLoopError: Error | null = null;

  private constructor(
    private readonly sock: Socket,
    private readonly reader: Reader,
    /** The export's size in bytes. */
    readonly sizeBytes: number,
  ) {}

  /** Connects to host:port and selects the export by name (NBD_OPT_GO). */
  static async open(host: string, port: number, exportName: string, timeoutMs = 10_000): Promise<NbdClient> {
    const sock = connect({ host, port });
    sock.setNoDelay(true);
    const reader = new Reader(sock);
    const timer = setTimeout(() => sock.destroy(new Error(`NBD handshake with ${host}:${port} timed out`)), timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        sock.once('connect', resolve);
        sock.once('error', reject);
      });
      const hello = await reader.read(18);
      if (!hello.subarray(0, 8).equals(NBDMAGIC) || hello.readBigUInt64BE(8) !== IHAVEOPT) {
        throw new Error('not a newstyle NBD server');
      }
      const serverFlags = hello.readUInt16BE(16);
      if (!(serverFlags & FLAG_FIXED_NEWSTYLE)) throw new Error('NBD server is not fixed newstyle');
      const clientFlags = Buffer.alloc(4);
      clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES));
      const name = Buffer.from(exportName, 'utf8');
      const opt = Buffer.alloc(16 + 4 + name.length + 2);
      opt.writeBigUInt64BE(IHAVEOPT, 0);
      opt.writeUInt32BE(OPT_GO, 8);
      opt.writeUInt32BE(4 + name.length + 2, 12);
      opt.writeUInt32BE(name.length, 16);
      name.copy(opt, 20);
      opt.writeUInt16BE(0, 20 + name.length); // no information requests
      sock.write(Buffer.concat([clientFlags, opt]));

      let size: number | undefined;
      for (;;) {
        const head = await reader.read(20);
        if (head.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) throw new Error('bad NBD option reply magic');
        const type = head.readUInt32BE(12);
        const len = head.readUInt32BE(16);
        const data = len > 0 ? await reader.read(len) : Buffer.alloc(0);
        if (type & 0x80000000) {
          const msg = data.length > 0 ? `: ${data.toString('utf8')}` : '';
          throw new Error(`NBD_OPT_GO refused (reply type 0x${type.toString(16)})${msg}`);
        }
        if (type === REP_INFO && data.length >= 12 && data.readUInt16BE(0) === INFO_EXPORT) {
          size = Number(data.readBigUInt64BE(2));
        } else if (type === REP_ACK) {
          break;
        }
      }
      if (size === undefined) throw new Error('NBD server sent no export size');
      clearTimeout(timer);
      const client = new NbdClient(sock, reader, size);
      void client.replyLoop();
      return client;
    } catch (e) {
      clearTimeout(timer);
      sock.destroy();
      throw e;
    }
  }

  private async replyLoop(): Promise<void> {
    try {
      for (;;) {
        const r = await this.reader.read(16);
        if (r.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error('unexpected NBD reply magic');
        const error = r.readUInt32BE(4);
        const handle = r.readBigUInt64BE(8);
        const p = this.pending.get(handle);
        if (!p) throw new Error(`NBD reply for unknown handle ${handle}`);
        this.pending.delete(handle);
        if (error !== 0) p.reject(new Error(`NBD request failed with error ${error}`));
        else p.resolve();
      }
    } catch (e) {
      this.replyLoopError = e instanceof Error ? e : new Error(String(e));
      for (const p of this.pending.values()) p.reject(this.replyLoopError);
      this.pending.clear();
    }
  }

  private request(type: number, offset: number, length: number, payload?: Buffer): Promise<void> {
    if (this.replyLoopError) return Promise.reject(this.replyLoopError);
    const handle = this.nextHandle++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(0, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(handle, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    const done = new Promise<void>((resolve, reject) => this.pending.set(handle, { resolve, reject }));
    this.sock.write(payload ? Buffer.concat([h, payload]) : h);
    return done;
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.request(CMD_WRITE, offset, data.length, data);
  }

  flush(): Promise<void> {
    return this.request(CMD_FLUSH, 0, 0);
  }

  /**
   * Writes one block at each offset, at most `depth` requests in flight,
   * then flushes.
   */
  async writeBlocks(offsets: readonly number[], block: Buffer, depth: number): Promise<void> {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < offsets.length) {
        const off = offsets[next++] as number;
        await this.write(off, block);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, depth) }, worker));
    await this.flush();
  }

  /** NBD_CMD_DISC, then close. */
  async close(): Promise<void> {
    if (!this.sock.destroyed) {
      const h = Buffer.alloc(28);
      h.writeUInt32BE(REQUEST_MAGIC, 0);
      h.writeUInt16BE(CMD_DISC, 6);
      await new Promise<void>((resolve) => this.sock.end(h, () => resolve()));
      this.sock.destroy();
    }
  }
}
