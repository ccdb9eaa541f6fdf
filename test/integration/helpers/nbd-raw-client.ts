/**
 * A deliberately small NBD client over a raw socket, for driving the server
 * through every path, including the ones a well-behaved client never takes.
 */
import net from 'node:net';
import tls from 'node:tls';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_EXTENDED_HEADERS,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_FLAG_ERROR,
} from '../../../src/nbd/constants.js';
import {
  decodeOptionReply,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  type OptionReply,
} from '../../../src/nbd/handshake-codec.js';
import { parseReplyHeader, type ReplyHeader } from '../../../src/nbd/reply-codec.js';
import { encodeRequest, type RequestFields } from '../../../src/nbd/request-decoder.js';
import type { NbdAddress } from '../../../src/config/model.js';

export interface Reply {
  header: ReplyHeader;
  /** READ data of a simple reply, or the chunk payload. */
  data: Buffer;
}

export class RawClient {
  private chunks: Buffer[] = [];
  private total = 0;
  private waiter: (() => void) | null = null;
  private ended = false;
  socket: net.Socket;
  readonly closed: Promise<void>;
  extended = false;
  /** Cookies of simple-mode READs and their lengths (a simple reply does not say). */
  readonly readLengths = new Map<bigint, number>();
  private readonly onData = (c: Buffer): void => {
    this.chunks.push(c);
    this.total += c.length;
    this.wake();
  };

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', this.onData);
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      }),
    );
  }

  static connect(address: NbdAddress): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = address.kind === 'tcp' ? net.connect({ host: address.host, port: address.port }) : net.connect({ path: address.path });
      s.once('connect', () => {
        s.removeListener('error', reject);
        if (address.kind === 'tcp') s.setNoDelay(true);
        resolve(new RawClient(s));
      });
      s.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Exactly n bytes; rejects if the connection ends first or nothing comes within timeoutMs. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.total < n) {
      if (this.ended) throw new Error(`connection closed after ${this.total} of ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.total})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.total = rest.length;
    return Buffer.from(out);
  }

  /** Bytes received and not read yet. */
  get pending(): number {
    return this.total;
  }

  /** Resolves true if the server closes the connection within timeoutMs. */
  async closesWithin(timeoutMs = 3000): Promise<boolean> {
    let t: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((r) => (t = setTimeout(() => r(false), timeoutMs)));
    const result = await Promise.race([this.closed.then(() => true), timedOut]);
    clearTimeout(t);
    return result;
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  /** Stop taking bytes from the socket (the server's replies back up), and go on. */
  pauseReading(): void {
    this.socket.pause();
  }

  resumeReading(): void {
    this.socket.resume();
  }

  destroy(): void {
    this.socket.destroy();
  }

  async greeting(flags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES): Promise<Buffer> {
    const g = await this.read(18);
    const f = Buffer.alloc(4);
    f.writeUInt32BE(flags >>> 0);
    this.write(f);
    return g;
  }

  sendOption(option: number, data?: Buffer): void {
    this.write(encodeOption(option, data));
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    const len = h.readUInt32BE(16);
    const body = len > 0 ? await this.read(len) : Buffer.alloc(0);
    return decodeOptionReply(Buffer.concat([h, body]))!.reply;
  }

  /** All replies to one option, up to and including the ACK or an error. */
  async optionReplies(): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type === NBD_REP_ACK || (r.type & NBD_REP_FLAG_ERROR) !== 0) return out;
    }
  }

  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    return this.optionReplies();
  }

  /** Upgrade to TLS (after the server's STARTTLS ACK). */
  async startTls(identity: { key?: Buffer; cert?: Buffer } = {}): Promise<tls.TLSSocket> {
    this.socket.removeListener('data', this.onData);
    const raw = this.socket;
    const secure = tls.connect({ socket: raw, rejectUnauthorized: false, ...identity });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    secure.on('error', () => {});
    secure.on('data', this.onData);
    secure.once('close', () => {
      this.ended = true;
      this.wake();
    });
    this.socket = secure;
    return secure;
  }

  /**
   * A typical modern handshake: structured replies (and optionally extended
   * headers), base:allocation, then GO. Returns the GO replies.
   */
  async negotiate(o: { name?: string; structured?: boolean; extended?: boolean; meta?: boolean; infos?: number[] } = {}): Promise<OptionReply[]> {
    await this.greeting();
    const name = o.name ?? '';
    if (o.extended) {
      const r = await this.option(NBD_OPT_EXTENDED_HEADERS);
      if (r[0]!.type !== NBD_REP_ACK) throw new Error('extended headers refused');
      this.extended = true;
    } else if (o.structured) {
      const r = await this.option(NBD_OPT_STRUCTURED_REPLY);
      if (r[0]!.type !== NBD_REP_ACK) throw new Error('structured replies refused');
    }
    if (o.meta) await this.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest(name, ['base:allocation']));
    const go = await this.option(NBD_OPT_GO, encodeInfoRequest(name, o.infos ?? []));
    if (go[go.length - 1]!.type !== NBD_REP_ACK) throw new Error(`GO refused: ${go[go.length - 1]!.data.toString()}`);
    return go;
  }

  request(r: RequestFields, payload?: Buffer): void {
    const h = encodeRequest(r, this.extended);
    this.write(payload ? Buffer.concat([h, payload]) : h);
  }

  /** Reads one reply (or chunk). Simple READ replies need the cookie in readLengths. */
  async readReply(timeoutMs = 5000): Promise<Reply> {
    const first = await this.read(4, timeoutMs);
    const magic = first.readUInt32BE(0);
    const size = magic === 0x67446698 ? 16 : magic === 0x668e33ef ? 20 : magic === 0x6e8a278c ? 32 : 4;
    const rest = size > 4 ? await this.read(size - 4, timeoutMs) : Buffer.alloc(0);
    const header = parseReplyHeader(Buffer.concat([first, rest]));
    if (header === null) throw new Error('short reply header');
    if (header.kind === 'simple') {
      const len = this.readLengths.get(header.cookie);
      this.readLengths.delete(header.cookie);
      const data = header.error === 0 && len !== undefined && len > 0 ? await this.read(len, timeoutMs) : Buffer.alloc(0);
      return { header, data };
    }
    const data = header.length > 0 ? await this.read(header.length, timeoutMs) : Buffer.alloc(0);
    return { header, data };
  }
}

/** Error number and message of an ERROR chunk payload. */
export function errorChunk(data: Buffer): { error: number; message: string } {
  const len = data.readUInt16BE(4);
  return { error: data.readUInt32BE(0), message: data.subarray(6, 6 + len).toString('utf8') };
}
