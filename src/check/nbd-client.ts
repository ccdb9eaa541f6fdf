/**
 * A minimal NBD client for the checker: fixed newstyle handshake, NBD_OPT_GO
 * for one export, simple replies, and READ, WRITE (optionally FUA) and FLUSH
 * with many requests in flight, answered in any order. It owns the socket;
 * the bytes are made and read by src/nbd's encoders and nbd-client-codec.ts.
 *
 * The caller bounds what it has in flight (the workload's queue depth), so
 * the client queues nothing of its own and ignores write()'s backpressure
 * signal: at most queue-depth requests can be buffered.
 */
import net from 'node:net';
import {
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_INFO_BLOCK_SIZE,
  NBD_MAX_OPTION_BYTES,
  NBD_OPT_GO,
  NBD_REP_ACK,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
} from '../nbd/constants.js';
import { nbdErrnoName } from '../nbd/errno.js';
import { decodeOptionReply, encodeInfoRequest, encodeOption } from '../nbd/handshake-codec.js';
import { encodeRequest } from '../nbd/request-decoder.js';
import { MirrorError, describeError } from '../errors.js';
import {
  GREETING_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  SimpleReplyDecoder,
  applyInfo,
  parseGreeting,
  type ExportInfo,
} from './nbd-client-codec.js';
import type { NbdUri } from './nbd-uri.js';

export const CONNECT_TIMEOUT_MS = 10_000;
/** How long close() waits for the server to end the connection after NBD_CMD_DISC. */
export const DISCONNECT_TIMEOUT_MS = 2_000;
/** Without NBD_INFO_BLOCK_SIZE the spec lets a client assume 32 MiB requests are fine. */
const DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024;
/** Cookies are u32 (the high half is always 0), reused once answered. */
const COOKIE_LIMIT = 0x1_0000_0000;

/** The connection ended (or broke the protocol) with requests possibly in flight. */
export class NbdConnectionLost extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NbdConnectionLost';
  }
}

/** The server answered one request with an NBD error number. */
export class NbdCommandError extends Error {
  constructor(
    readonly command: string,
    readonly errno: number,
  ) {
    super(`${command} failed: ${nbdErrnoName(errno)}`);
    this.name = 'NbdCommandError';
  }

  get errnoName(): string {
    return nbdErrnoName(this.errno);
  }
}

interface Pending {
  command: 'READ' | 'WRITE' | 'FLUSH';
  /** READ length; 0 otherwise. */
  length: number;
  resolve(data: Buffer | null): void;
  reject(e: Error): void;
}

const OPTION_ERRORS: ReadonlyMap<number, string> = new Map([
  [NBD_REP_ERR_UNSUP, 'NBD_REP_ERR_UNSUP'],
  [NBD_REP_ERR_POLICY, 'NBD_REP_ERR_POLICY'],
  [NBD_REP_ERR_UNKNOWN, 'NBD_REP_ERR_UNKNOWN'],
  [NBD_REP_ERR_SHUTDOWN, 'NBD_REP_ERR_SHUTDOWN'],
  [NBD_REP_ERR_TLS_REQD, 'NBD_REP_ERR_TLS_REQD'],
]);

export class NbdClient {
  readonly sizeBytes: number;
  readonly canFlush: boolean;
  readonly canFua: boolean;
  readonly readOnly: boolean;
  /** Largest READ or WRITE to send in one request. */
  readonly maxRequestBytes: number;
  /** Resolves when the socket has closed, for whatever reason. */
  readonly closed: Promise<void>;
  private readonly pending = new Map<number, Pending>();
  private readonly decoder: SimpleReplyDecoder;
  private nextCookie = 1;
  private endReason: string | null = null;

  private constructor(
    readonly uri: NbdUri,
    private readonly socket: net.Socket,
    info: ExportInfo,
    leftover: Buffer[],
  ) {
    this.sizeBytes = info.sizeBytes;
    this.canFlush = (info.transmissionFlags & NBD_FLAG_SEND_FLUSH) !== 0;
    this.canFua = (info.transmissionFlags & NBD_FLAG_SEND_FUA) !== 0;
    this.readOnly = (info.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0;
    this.maxRequestBytes = Math.min(info.blockSize?.maximum ?? DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_BYTES);
    this.decoder = new SimpleReplyDecoder((cookie) => this.pending.get(cookie)?.length);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) => {
      this.endReason ??= describeError(e);
    });
    socket.once('close', () => this.failAll(new NbdConnectionLost(`connection lost: ${this.endReason ?? 'the server closed the connection'}`)));
    for (const c of leftover) this.onData(c);
  }

  /** Connects, negotiates the export and is ready for requests; refusals become MirrorErrors naming the URI. */
  static async connect(uri: NbdUri, o: { timeoutMs?: number } = {}): Promise<NbdClient> {
    const socket = uri.address.kind === 'tcp' ? net.connect({ host: uri.address.host, port: uri.address.port }) : net.connect({ path: uri.address.path });
    const reader = new HandshakeReader(socket);
    const timer = setTimeout(() => socket.destroy(new Error(`no NBD handshake within ${o.timeoutMs ?? CONNECT_TIMEOUT_MS} ms`)), o.timeoutMs ?? CONNECT_TIMEOUT_MS);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', () => resolve());
        socket.once('error', reject);
      });
      if (uri.address.kind === 'tcp') socket.setNoDelay(true);
      const info = await handshake(socket, reader, uri.exportName);
      return new NbdClient(uri, socket, info, reader.detach());
    } catch (e) {
      socket.destroy();
      if (e instanceof MirrorError) throw new MirrorError(e.code, `${uri.text}: ${e.message}`, { ...e.details, target: uri.text });
      throw new MirrorError('ERR_IO', `${uri.text}: cannot connect: ${describeError(e)}`, { target: uri.text, reason: (e as NodeJS.ErrnoException).code ?? describeError(e) });
    } finally {
      clearTimeout(timer);
    }
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** False once the connection has ended. */
  get alive(): boolean {
    return !this.socket.destroyed;
  }

  write(offset: number, data: Buffer, fua = false): Promise<void> {
    return this.send('WRITE', NBD_CMD_WRITE, fua ? NBD_CMD_FLAG_FUA : 0, offset, data.length, data).then(() => undefined);
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.send('READ', NBD_CMD_READ, 0, offset, length, null).then((d) => d ?? Buffer.alloc(0));
  }

  flush(): Promise<void> {
    return this.send('FLUSH', NBD_CMD_FLUSH, 0, 0, 0, null).then(() => undefined);
  }

  /** Hold writes to the socket until uncork(), so a batch of requests leaves in few packets. */
  cork(): void {
    this.socket.cork();
  }

  uncork(): void {
    this.socket.uncork();
  }

  /** NBD_CMD_DISC, then waits for the server to close (or closes after a timeout). */
  async close(timeoutMs = DISCONNECT_TIMEOUT_MS): Promise<void> {
    if (this.socket.destroyed) return;
    this.endReason ??= 'closed by the checker';
    this.socket.end(encodeRequest({ type: NBD_CMD_DISC, cookie: 0n, offset: 0, length: 0 }));
    const timer = setTimeout(() => this.socket.destroy(), timeoutMs);
    await this.closed;
    clearTimeout(timer);
  }

  /** Ends the connection now; requests in flight fail with NbdConnectionLost. */
  destroy(reason: string): void {
    this.endReason ??= reason;
    this.socket.destroy();
  }

  private send(command: Pending['command'], type: number, flags: number, offset: number, length: number, payload: Buffer | null): Promise<Buffer | null> {
    if (this.socket.destroyed || this.endReason !== null) {
      return Promise.reject(new NbdConnectionLost(`connection lost: ${this.endReason ?? 'the connection is closed'}`));
    }
    const cookie = this.takeCookie();
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { command, length: type === NBD_CMD_READ ? length : 0, resolve, reject });
      this.socket.write(encodeRequest({ type, flags, cookie: BigInt(cookie), offset, length }));
      if (payload !== null) this.socket.write(payload);
    });
  }

  private takeCookie(): number {
    while (this.pending.has(this.nextCookie)) this.nextCookie = (this.nextCookie + 1) % COOKIE_LIMIT || 1;
    const c = this.nextCookie;
    this.nextCookie = (this.nextCookie + 1) % COOKIE_LIMIT || 1;
    return c;
  }

  private onData(chunk: Buffer): void {
    this.decoder.push(chunk);
    for (let r = this.decoder.next(); r !== null; r = this.decoder.next()) {
      const p = this.pending.get(r.cookie)!;
      this.pending.delete(r.cookie);
      if (r.error === 0) p.resolve(r.data);
      else p.reject(new NbdCommandError(p.command, r.error));
    }
    if (this.decoder.violation !== null) this.destroy(`protocol violation by the server: ${this.decoder.violation}`);
  }

  private failAll(e: Error): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(e);
  }
}

/** Reads exact byte counts from a socket during the handshake. */
class HandshakeReader {
  private chunks: Buffer[] = [];
  private total = 0;
  private waiter: (() => void) | null = null;
  private ended: Error | null = null;
  private readonly onData = (c: Buffer): void => {
    this.chunks.push(c);
    this.total += c.length;
    this.wake();
  };
  private readonly onEnd = (e?: Error): void => {
    this.ended ??= e ?? new Error('the server closed the connection during the handshake');
    this.wake();
  };

  constructor(private readonly socket: net.Socket) {
    socket.on('data', this.onData);
    socket.on('error', this.onEnd);
    socket.on('close', () => this.onEnd());
  }

  async read(n: number): Promise<Buffer> {
    while (this.total < n) {
      if (this.ended !== null) throw this.ended;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.total -= n;
    return all.subarray(0, n);
  }

  /** Stops listening; returns the bytes that arrived beyond the handshake. */
  detach(): Buffer[] {
    this.socket.off('data', this.onData);
    this.socket.off('error', this.onEnd);
    const rest = this.chunks;
    this.chunks = [];
    return rest;
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }
}

async function handshake(socket: net.Socket, reader: HandshakeReader, exportName: string): Promise<ExportInfo> {
  const greeting = parseGreeting(await reader.read(GREETING_BYTES));
  if (!greeting.ok) throw new MirrorError('ERR_IO', greeting.reason);
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(greeting.clientFlags);
  socket.write(Buffer.concat([flags, encodeOption(NBD_OPT_GO, encodeInfoRequest(exportName, [NBD_INFO_BLOCK_SIZE]))]));
  const info: Partial<ExportInfo> = {};
  for (;;) {
    const header = await reader.read(OPTION_REPLY_HEADER_BYTES);
    const length = header.readUInt32BE(16);
    // Limits first: a hostile length must not make us wait for (or buffer) gigabytes.
    if (length > NBD_MAX_OPTION_BYTES) throw new MirrorError('ERR_IO', `option reply of ${length} bytes`);
    const body = length > 0 ? await reader.read(length) : Buffer.alloc(0);
    let reply;
    try {
      reply = decodeOptionReply(Buffer.concat([header, body]))!.reply;
    } catch (e) {
      throw new MirrorError('ERR_IO', `not an NBD option reply: ${describeError(e)}`);
    }
    if (reply.option !== NBD_OPT_GO) throw new MirrorError('ERR_IO', `reply to option ${reply.option}, not to NBD_OPT_GO`);
    if ((reply.type & NBD_REP_FLAG_ERROR) !== 0) {
      const name = OPTION_ERRORS.get(reply.type) ?? `error 0x${reply.type.toString(16)}`;
      const message = reply.data.toString('utf8');
      throw new MirrorError('ERR_IO', `the server refused export "${exportName}" (${name})${message ? `: ${message}` : ''}`, { nbdError: name });
    }
    if (reply.type === NBD_REP_INFO) {
      const problem = applyInfo(reply.data, info);
      if (problem !== null) throw new MirrorError('ERR_IO', problem);
    } else if (reply.type === NBD_REP_ACK) {
      if (info.sizeBytes === undefined || info.transmissionFlags === undefined) throw new MirrorError('ERR_IO', 'the server sent no NBD_INFO_EXPORT before its ACK');
      return info as ExportInfo;
    }
  }
}
