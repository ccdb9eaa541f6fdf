/**
 * A minimal NBD client over node:net for what no real client sends: options
 * libnbd 1.14 has no call for, unknown commands, garbage. Big-endian
 * throughout, as on the wire.
 */
import { connect, type Socket } from 'node:net';

export const NBDMAGIC = Buffer.from('NBDMAGIC');
export const IHAVEOPT = Buffer.from('IHAVEOPT');
export const REP_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7, STRUCTURED_REPLY: 8 } as const;
export const REP = { ACK: 1, SERVER: 2, INFO: 3, ERR_UNSUP: 0x80000001, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006 } as const;
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3 } as const;
export const EINVAL = 22;

export class RawClient {
  private buf = Buffer.alloc(0);
  private closedFlag = false;
  private wake: (() => void) | null = null;
  private readonly closedPromise: Promise<void>;

  private constructor(private readonly sock: Socket) {
    sock.setNoDelay(true);
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    this.closedPromise = new Promise((resolve) => {
      sock.on('close', () => {
        this.closedFlag = true;
        this.wake?.();
        resolve();
      });
    });
    // A reset from the server is an ordinary way for it to hang up on us.
    sock.on('error', () => undefined);
  }

  static connect(host: string, port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = connect({ host, port });
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  /** Exactly n bytes; rejects if the server closes first or nothing comes in time. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closedFlag) throw new Error(`connection closed with ${this.buf.length} of ${n} bytes read`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.buf.length})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = null;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return Buffer.from(out);
  }

  write(b: Buffer): void {
    if (!this.closedFlag) this.sock.write(b);
  }

  /** True if the server closed the connection within timeoutMs. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const r = await Promise.race([this.closedPromise.then(() => true), timeout]);
    clearTimeout(timer);
    return r;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  destroy(): void {
    this.sock.destroy();
  }
}

/** Reads the 18-byte greeting, checks it, answers with FIXED_NEWSTYLE|NO_ZEROES. */
export async function handshake(c: RawClient): Promise<number> {
  const g = await c.read(18);
  if (!g.subarray(0, 8).equals(NBDMAGIC) || !g.subarray(8, 16).equals(IHAVEOPT)) {
    throw new Error(`bad greeting ${g.toString('hex')}`);
  }
  const flags = g.readUInt16BE(16);
  const cflags = Buffer.alloc(4);
  cflags.writeUInt32BE(flags & 3);
  c.write(cflags);
  return flags;
}

export function option(opt: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  IHAVEOPT.copy(h, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

/** INFO/GO payload: name, no info requests. */
export function goData(name: string): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(0, 4 + n.length);
  return b;
}

export interface OptReply {
  opt: number;
  type: number;
  data: Buffer;
}

export async function readOptReply(c: RawClient): Promise<OptReply> {
  const h = await c.read(20);
  const magic = h.readBigUInt64BE(0);
  if (magic !== REP_MAGIC) throw new Error(`bad option reply magic ${magic.toString(16)}`);
  const len = h.readUInt32BE(16);
  return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len > 0 ? await c.read(len) : Buffer.alloc(0) };
}

/** Replies up to and including the final one (ACK or an error). */
export async function optReplies(c: RawClient): Promise<OptReply[]> {
  const out: OptReply[] = [];
  for (;;) {
    const r = await readOptReply(c);
    out.push(r);
    if (r.type === REP.ACK || r.type >= 0x80000000) return out;
  }
}

export function request(type: number, flags: number, cookie: bigint, offset: bigint, length: number, payload?: Buffer): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(REQUEST_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(offset, 16);
  h.writeUInt32BE(length, 24);
  return payload ? Buffer.concat([h, payload]) : h;
}

export interface Reply {
  structured: boolean;
  cookie: bigint;
  /** 0 for success. */
  error: number;
  /** Read data (OFFSET_DATA payload after its offset, or simple-reply data). */
  data: Buffer;
  /** Chunk types seen, for structured replies. */
  chunks: number[];
}

/**
 * One complete reply: a simple reply (with `readLength` bytes of data when it
 * is a successful read) or structured chunks until DONE.
 */
export async function readReply(c: RawClient, readLength = 0): Promise<Reply> {
  const head = await c.read(4);
  const magic = head.readUInt32BE(0);
  if (magic === SIMPLE_REPLY_MAGIC) {
    const rest = await c.read(12);
    const error = rest.readUInt32BE(0);
    const cookie = rest.readBigUInt64BE(4);
    const data = error === 0 && readLength > 0 ? await c.read(readLength) : Buffer.alloc(0);
    return { structured: false, cookie, error, data, chunks: [] };
  }
  if (magic !== STRUCTURED_REPLY_MAGIC) throw new Error(`bad reply magic ${magic.toString(16)}`);
  let first = true;
  let h = head;
  const reply: Reply = { structured: true, cookie: 0n, error: 0, data: Buffer.alloc(0), chunks: [] };
  for (;;) {
    if (!first) {
      h = await c.read(4);
      if (h.readUInt32BE(0) !== STRUCTURED_REPLY_MAGIC) throw new Error('bad chunk magic');
    }
    first = false;
    const rest = await c.read(16);
    const flags = rest.readUInt16BE(0);
    const type = rest.readUInt16BE(2);
    reply.cookie = rest.readBigUInt64BE(4);
    const len = rest.readUInt32BE(12);
    const payload = len > 0 ? await c.read(len) : Buffer.alloc(0);
    reply.chunks.push(type);
    if (type === 1) reply.data = Buffer.concat([reply.data, payload.subarray(8)]);
    if (type === 2) reply.data = Buffer.concat([reply.data, Buffer.alloc(payload.readUInt32BE(8))]);
    if (type & 0x8000) reply.error = payload.readUInt32BE(0);
    if (flags & 1) return reply;
  }
}

/** Handshake, optionally structured replies, then GO on `name`. */
export async function openExport(host: string, port: number, name: string, structured: boolean): Promise<RawClient> {
  const c = await RawClient.connect(host, port);
  await handshake(c);
  if (structured) {
    c.write(option(OPT.STRUCTURED_REPLY));
    const r = await readOptReply(c);
    if (r.type !== REP.ACK) throw new Error(`STRUCTURED_REPLY answered ${r.type.toString(16)}`);
  }
  c.write(option(OPT.GO, goData(name)));
  const replies = await optReplies(c);
  const last = replies[replies.length - 1]!;
  if (last.type !== REP.ACK) throw new Error(`GO answered ${last.type.toString(16)}`);
  return c;
}
