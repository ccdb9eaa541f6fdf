/**
 * The transmission phase of one NBD connection: requests in, replies out.
 *
 * The session hands over its socket once an export is chosen (GO or
 * EXPORT_NAME). From then on this decodes requests (request-decoder),
 * dispatches them to the export, and answers through one ReplyWriter, so
 * frames never interleave. Nothing a client sends can throw out of here:
 * protocol violations close the connection (through the host) and failed
 * requests become error replies.
 *
 * Bounded work (backpressure): at most MAX_REQUESTS_IN_FLIGHT requests and
 * MAX_BYTES_IN_FLIGHT payload bytes are in flight; past either bound, or
 * while the socket refuses more replies, the socket is paused, so a client
 * that pipelines without limit fills its own send buffer, not our memory.
 *
 * Buffers, and who owns them:
 * - WRITE payloads are views of received chunks (gathered as parts when they
 *   straddle chunks); nothing writes to received chunks again, so the export
 *   owns them from the call on and may keep them (say, queued for a peer).
 * - READ data goes into a buffer from this connection's BufferPool, lent to
 *   the export until its promise settles, then to the ReplyWriter until the
 *   socket has sent it, then back to the pool.
 * - Reply headers are written into the writer's slab (see reply-writer.ts).
 */
import type { Socket } from 'node:net';
import { describeError } from '../errors.js';
import { BufferPool } from './buffer-pool.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_PAYLOAD_LEN,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  MAX_SAFE_BYTES,
  NBD_MAX_EXTENTS,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_BLOCK_STATUS_EXT,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
} from './constants.js';
import { nbdErrnoFromError, nbdErrnoName } from './errno.js';
import type { Extent, NbdExport } from './export.js';
import type { NbdLogger } from './logger.js';
import {
  ERROR_PAYLOAD_FIXED,
  ReplyMode,
  blockStatusPayloadSize,
  errorMessageBytes,
  writeBlockStatusPayload,
  writeChunkHeader,
  writeErrorPayload,
  writeOffset,
  writeSimpleReply,
} from './reply-codec.js';
import { PayloadProblem, RequestDecoder, type NbdRequest } from './request-decoder.js';
import { ReplyWriter } from './reply-writer.js';
import { blockStatusDescriptors } from './block-status.js';

/** Requests in flight per connection before we stop reading (backpressure). */
export const MAX_REQUESTS_IN_FLIGHT = 64;
/** Payload bytes (READ lengths + WRITE payloads) in flight before we stop reading. */
export const MAX_BYTES_IN_FLIGHT = 64 * 1024 * 1024;
/**
 * Shutting down with requests waiting in the socket (it was paused behind a
 * full window): how long the connection stays open for them to be read and
 * answered ESHUTDOWN if the socket delivers nothing. A loopback or LAN read
 * takes well under a millisecond; this only bounds a client that sent none.
 */
export const SHUTDOWN_READ_GRACE_MS = 50;
/**
 * Free READ buffers a connection keeps per size class, in bytes: enough for
 * 16 reads of 1 MiB (or 128 of 4 KiB) in flight without allocating.
 */
export const READ_POOL_RETAIN_BYTES = 16 * 1024 * 1024;
/** The context ID we hand out for base:allocation (IDs are per connection). */
export const BASE_ALLOCATION_ID = 1;
/** Largest header we ever put in the slab: extended chunk + error payload + message + offset. */
const MAX_FRAME_HEADER = 32 + ERROR_PAYLOAD_FIXED + 4096 + 8;

/** What transmission needs from its session. */
export interface TransmissionHost {
  /** Protocol violation: drop the connection now. */
  hardClose(reason: string): void;
  /** Draining is over (DISC or shutdown, nothing in flight): send what is queued, then close. */
  endAfterWrites(): void;
}

export interface TransmissionOptions {
  /** Reply framing agreed in the handshake. */
  mode: ReplyMode;
  /** 32-byte requests (NBD_OPT_EXTENDED_HEADERS). */
  extended: boolean;
  /** base:allocation was selected for this export (SET_META_CONTEXT). */
  baseAllocation: boolean;
}

export class Transmission {
  private readonly dec: RequestDecoder;
  private readonly writer: ReplyWriter;
  private readonly pool: BufferPool;
  private readonly mode: ReplyMode;
  private readonly extended: boolean;
  private readonly baseAllocation: boolean;
  private readonly maxPayload: number;
  private inFlight = 0;
  private bytesInFlight = 0;
  private paused = false;
  private pumping = false;
  /** No more requests are executed: set by DISC (stop reading) or shutdown (ESHUTDOWN). */
  private draining: 'disc' | 'shutdown' | null = null;
  /** The host was told to end the connection. */
  private ending = false;
  /**
   * Shutting down, the socket was resumed after a full window held it: the
   * requests waiting in it are read (and answered ESHUTDOWN) before the
   * connection ends, or SHUTDOWN_READ_GRACE_MS passes. Null otherwise.
   */
  private awaitingRead: NodeJS.Timeout | null = null;
  /** False once the socket has closed. */
  private open = true;

  constructor(
    private readonly socket: Socket,
    private readonly exp: NbdExport,
    options: TransmissionOptions,
    private readonly log: NbdLogger,
    private readonly host: TransmissionHost,
  ) {
    this.mode = options.mode;
    this.extended = options.extended;
    this.baseAllocation = options.baseAllocation;
    this.maxPayload = exp.blockSize().maximum;
    this.dec = new RequestDecoder({ extended: this.extended, maxPayload: this.maxPayload, gather: true });
    this.pool = new BufferPool(this.maxPayload, READ_POOL_RETAIN_BYTES);
    this.writer = new ReplyWriter(
      socket,
      {
        onBlocked: () => this.updateFlow(),
        onDrained: () => this.updateFlow(),
      },
      (buf) => this.pool.release(buf),
    );
  }

  /** Bytes from the socket (or left over from the handshake). */
  received(chunk: Buffer): void {
    // Nothing after DISC is acted on, nor anything once the connection is ending.
    if (this.draining === 'disc' || this.ending) return;
    this.stopAwaitingRead();
    this.dec.push(chunk);
    this.pump();
  }

  /** New requests get ESHUTDOWN; once nothing is in flight the connection ends. */
  shutdown(): void {
    if (this.draining === null) this.draining = 'shutdown';
    // Requests waiting behind a full window, in the decoder or the socket,
    // were sent: each gets its ESHUTDOWN (the client learns it was not
    // executed) while the ones in flight finish; then the connection ends.
    this.pump();
    this.maybeFinishDrain();
  }

  /** The socket closed: stop everything, drop the pooled buffers. */
  closed(): void {
    this.open = false;
    this.stopAwaitingRead();
    this.pool.clear();
  }

  // ---------------------------------------------------------------------------
  // flow control

  private blocked(): boolean {
    return this.inFlight >= MAX_REQUESTS_IN_FLIGHT || this.bytesInFlight >= MAX_BYTES_IN_FLIGHT || this.writer.blocked;
  }

  /**
   * Whether the next decoded request may be dispatched. While shutting down
   * every request is answered at once with ESHUTDOWN and holds nothing, so
   * only the reply writer's backpressure limits it.
   */
  private mayDispatch(): boolean {
    return this.draining === 'shutdown' ? !this.writer.blocked : !this.blocked();
  }

  /** Decode and dispatch as many requests as the window allows. */
  pump(): void {
    if (this.pumping || !this.open) return;
    this.pumping = true;
    try {
      const dec = this.dec;
      while (this.draining !== 'disc' && this.mayDispatch() && this.open) {
        const req = dec.next();
        if (req === null) {
          if (dec.violation !== null) this.host.hardClose(dec.violation);
          break;
        }
        this.dispatch(req);
      }
    } finally {
      this.pumping = false;
    }
    this.updateFlow();
    if (this.draining !== null) this.maybeFinishDrain();
  }

  /** Pause the socket while the window is full or the writer is blocked; resume otherwise. */
  private updateFlow(): void {
    if (!this.open) return;
    const blocked = !this.mayDispatch();
    if (blocked && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!blocked && this.paused) {
      this.paused = false;
      this.socket.resume();
      if (this.draining === 'shutdown' && this.awaitingRead === null) {
        // The writes in flight may all complete before the socket delivers
        // what waits in it; those requests were sent and get their ESHUTDOWN.
        this.awaitingRead = setTimeout(() => {
          this.awaitingRead = null;
          this.maybeFinishDrain();
        }, SHUTDOWN_READ_GRACE_MS);
        this.awaitingRead.unref();
      }
      this.pump();
    }
  }

  // ---------------------------------------------------------------------------
  // requests

  private dispatch(req: NbdRequest): void {
    if (req.type === NBD_CMD_DISC) {
      // No reply; finish what is in flight, then close.
      this.log.debug('client sent DISC');
      this.draining = 'disc';
      this.maybeFinishDrain();
      return;
    }
    this.inFlight++;
    this.bytesInFlight += weightOf(req);
    if (this.draining === 'shutdown') {
      return this.replyError(req, NBD_ESHUTDOWN, 'server is shutting down');
    }
    const exp = this.exp;
    const f = exp.features();
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
    const size = exp.size();
    // FUA is accepted on every command (clients set it liberally) once advertised.
    let allowed = f.canFua ? NBD_CMD_FLAG_FUA : 0;
    if (this.extended && req.type === NBD_CMD_WRITE) allowed |= NBD_CMD_FLAG_PAYLOAD_LEN;
    if (req.payloadProblem === PayloadProblem.TooLarge) {
      return this.replyError(req, NBD_EINVAL, `payload of ${req.length} bytes exceeds the maximum of ${this.maxPayload}`);
    }
    if (req.payloadProblem === PayloadProblem.Unexpected) {
      return this.replyError(req, NBD_EINVAL, 'this command takes no payload');
    }
    try {
      switch (req.type) {
        case NBD_CMD_READ: {
          if (this.mode !== ReplyMode.Simple) allowed |= NBD_CMD_FLAG_DF;
          if (req.flags & ~allowed) return this.badFlags(req);
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_EINVAL, 'read beyond the end of the export');
          if (req.length > this.maxPayload) {
            const errno = req.flags & NBD_CMD_FLAG_DF ? NBD_EOVERFLOW : NBD_EINVAL;
            return this.replyError(req, errno, `read of ${req.length} bytes exceeds the maximum of ${this.maxPayload}`);
          }
          if (req.length === 0) return this.replyRead(req, EMPTY, null);
          return this.startRead(exp, req);
        }
        case NBD_CMD_WRITE: {
          if (req.flags & ~allowed) return this.badFlags(req);
          if (f.readOnly) return this.replyError(req, NBD_EPERM, 'the export is read-only');
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_ENOSPC, 'write beyond the end of the export');
          if (req.length === 0) return this.replyOk(req);
          const parts = req.parts;
          const written =
            parts === null
              ? exp.write(req.offset, req.payload!, fua)
              : exp.writev !== undefined
                ? exp.writev(req.offset, parts, fua)
                : exp.write(req.offset, Buffer.concat(parts, req.length), fua);
          written.then(
            () => this.replyOk(req),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        case NBD_CMD_FLUSH: {
          if (req.flags & ~allowed) return this.badFlags(req);
          if (!f.canFlush) return this.replyError(req, NBD_EINVAL, 'FLUSH is not supported');
          if (req.offset !== 0 || req.length !== 0) return this.replyError(req, NBD_EINVAL, 'FLUSH needs offset and length 0');
          exp.flush().then(
            () => this.replyOk(req),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        case NBD_CMD_TRIM: {
          if (req.flags & ~allowed) return this.badFlags(req);
          if (f.readOnly) return this.replyError(req, NBD_EPERM, 'the export is read-only');
          if (!f.canTrim) return this.replyError(req, NBD_EINVAL, 'TRIM is not supported');
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_EINVAL, 'trim beyond the end of the export');
          if (req.length === 0) return this.replyOk(req);
          exp.trim(req.offset, req.length, fua).then(
            () => this.replyOk(req),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        case NBD_CMD_WRITE_ZEROES: {
          allowed |= NBD_CMD_FLAG_NO_HOLE;
          if (f.canFastZero) allowed |= NBD_CMD_FLAG_FAST_ZERO;
          if (req.flags & ~allowed) return this.badFlags(req);
          if (f.readOnly) return this.replyError(req, NBD_EPERM, 'the export is read-only');
          if (!f.canWriteZeroes) return this.replyError(req, NBD_EINVAL, 'WRITE_ZEROES is not supported');
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_ENOSPC, 'write beyond the end of the export');
          if (req.length === 0) return this.replyOk(req);
          const opts = {
            noHole: (req.flags & NBD_CMD_FLAG_NO_HOLE) !== 0,
            fua,
            fastZero: (req.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0,
          };
          exp.writeZeroes(req.offset, req.length, opts).then(
            () => this.replyOk(req),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        case NBD_CMD_CACHE: {
          if (req.flags & ~allowed) return this.badFlags(req);
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_EINVAL, 'cache beyond the end of the export');
          // A prefetch hint: without support it is a successful no-op.
          if (req.length === 0 || !f.canCache) return this.replyOk(req);
          exp.cache(req.offset, req.length).then(
            () => this.replyOk(req),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        case NBD_CMD_BLOCK_STATUS: {
          allowed |= NBD_CMD_FLAG_REQ_ONE;
          if (req.flags & ~allowed) return this.badFlags(req);
          if (this.mode === ReplyMode.Simple || !this.baseAllocation) {
            return this.replyError(req, NBD_EINVAL, 'no metadata context was negotiated');
          }
          if (req.length === 0) return this.replyError(req, NBD_EINVAL, 'BLOCK_STATUS of length 0');
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_EINVAL, 'block status beyond the end of the export');
          exp.extents(req.offset, req.length).then(
            (extents) => this.replyBlockStatus(req, extents),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        default:
          return this.replyError(req, NBD_EINVAL, `unknown command ${req.type}`);
      }
    } catch (e) {
      // An export that throws instead of rejecting still gets a reply.
      this.replyFailure(req, e);
    }
  }

  private badFlags(req: NbdRequest): void {
    this.replyError(req, NBD_EINVAL, `flags 0x${req.flags.toString(16)} are not valid for command ${req.type}`);
  }

  // ---------------------------------------------------------------------------
  // transmission: replies (each frame is appended whole, synchronously)

  private replyOk(req: NbdRequest): void {
    const w = this.writer;
    const at = w.begin(MAX_FRAME_HEADER);
    if (this.mode === ReplyMode.Extended) {
      w.end(writeChunkHeader(this.mode, w.slab, at, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, req.cookieHi, req.cookieLo, req.offsetHi, req.offsetLo, 0));
    } else {
      // Structured mode may still answer payload-less commands simply.
      w.end(writeSimpleReply(w.slab, at, 0, req.cookieHi, req.cookieLo));
    }
    this.completed(req);
  }

  /**
   * READ into a buffer lent from the pool. The export holds it until its
   * promise settles; a reply that carries it lends it on to the writer,
   * which gives it back to the pool once the socket has sent it.
   */
  private startRead(exp: NbdExport, req: NbdRequest): void {
    const into = this.pool.acquire(req.length);
    let reading: Promise<Buffer>;
    try {
      reading = exp.read(req.offset, req.length, into);
    } catch (e) {
      // Thrown, not rejected: the export never started with the buffer.
      this.pool.release(into);
      throw e;
    }
    reading.then(
      (data) => this.replyRead(req, data, into),
      (e) => {
        this.pool.release(into);
        this.replyFailure(req, e);
      },
    );
  }

  /** `lent`: the pool's buffer given to the export for this read, or null. */
  private replyRead(req: NbdRequest, data: Buffer, lent: Buffer | null): void {
    if (lent !== null && data.buffer !== lent.buffer) {
      // The export answered with a buffer of its own: ours was not used.
      this.pool.release(lent);
      lent = null;
    }
    if (data.length !== req.length) {
      if (lent !== null) this.pool.release(lent);
      return this.replyError(req, NBD_EIO, `export returned ${data.length} bytes for a read of ${req.length}`);
    }
    const w = this.writer;
    const at = w.begin(MAX_FRAME_HEADER);
    if (this.mode === ReplyMode.Simple) {
      w.end(writeSimpleReply(w.slab, at, 0, req.cookieHi, req.cookieLo));
    } else if (data.length === 0) {
      w.end(writeChunkHeader(this.mode, w.slab, at, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, req.cookieHi, req.cookieLo, req.offsetHi, req.offsetLo, 0));
    } else {
      // One OFFSET_DATA chunk covers the whole read (so DF always holds).
      let n = writeChunkHeader(this.mode, w.slab, at, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, req.cookieHi, req.cookieLo, req.offsetHi, req.offsetLo, 8 + data.length);
      n += writeOffset(w.slab, at + n, req.offset);
      w.end(n);
    }
    w.payload(data, lent);
    this.completed(req);
  }

  private replyFailure(req: NbdRequest, e: unknown): void {
    const errno = nbdErrnoFromError(e);
    this.log.debug({ type: req.type, offset: req.offset, length: req.length, err: describeError(e) }, 'request failed');
    this.replyError(req, errno, describeError(e));
  }

  private replyError(req: NbdRequest, errno: number, message: string): void {
    const w = this.writer;
    const at = w.begin(MAX_FRAME_HEADER);
    if (this.mode === ReplyMode.Simple) {
      w.end(writeSimpleReply(w.slab, at, errno, req.cookieHi, req.cookieLo));
    } else {
      const msg = errorMessageBytes(message || nbdErrnoName(errno));
      let n = writeChunkHeader(this.mode, w.slab, at, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, req.cookieHi, req.cookieLo, req.offsetHi, req.offsetLo, ERROR_PAYLOAD_FIXED + msg.length);
      n += writeErrorPayload(w.slab, at + n, errno, msg);
      w.end(n);
    }
    this.completed(req);
  }

  private replyBlockStatus(req: NbdRequest, extents: Extent[]): void {
    const { lengths, statuses } = blockStatusDescriptors(
      extents,
      req.offset,
      req.length,
      (req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0,
      NBD_MAX_EXTENTS,
    );
    if (lengths.length === 0) return this.replyError(req, NBD_EIO, 'the export reported no extents for the range');
    const count = lengths.length;
    const extended = this.mode === ReplyMode.Extended;
    const w = this.writer;
    const payload = Buffer.allocUnsafe(blockStatusPayloadSize(extended, count));
    writeBlockStatusPayload(payload, 0, extended, BASE_ALLOCATION_ID, lengths, statuses, count);
    const at = w.begin(MAX_FRAME_HEADER);
    const type = extended ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT : NBD_REPLY_TYPE_BLOCK_STATUS;
    w.end(writeChunkHeader(this.mode, w.slab, at, NBD_REPLY_FLAG_DONE, type, req.cookieHi, req.cookieLo, req.offsetHi, req.offsetLo, payload.length));
    w.payload(payload);
    this.completed(req);
  }

  /** Every reply ends here, its frame complete in the writer. */
  private completed(req: NbdRequest): void {
    this.inFlight--;
    this.bytesInFlight -= weightOf(req);
    // Other requests in flight will answer soon: let their replies share a writev.
    this.writer.frameDone(this.inFlight > 0);
    if (this.draining !== null) this.maybeFinishDrain();
    else if (this.paused) this.updateFlow();
  }

  /** When draining and nothing is in flight: send what is queued, then close. */
  private stopAwaitingRead(): void {
    if (this.awaitingRead === null) return;
    clearTimeout(this.awaitingRead);
    this.awaitingRead = null;
  }

  private maybeFinishDrain(): void {
    // While pumping, more received requests may still be answered: pump ends with this call.
    if (this.draining === null || this.inFlight > 0 || this.pumping || this.ending || !this.open || this.awaitingRead !== null) return;
    this.ending = true;
    this.writer.flush();
    this.host.endAfterWrites();
  }
}

const EMPTY = Buffer.alloc(0);

/** Overflow-safe range check: offsets beyond 2^53 are never in range. */
function outOfRange(offset: number, length: number, size: number): boolean {
  return offset > MAX_SAFE_BYTES || offset > size || length > size - offset;
}

/** Bytes a request holds in memory while in flight (READ data or WRITE payload). */
function weightOf(req: NbdRequest): number {
  if (req.type === NBD_CMD_READ) return req.length <= MAX_BYTES_IN_FLIGHT ? req.length : 0;
  if (req.payload !== null) return req.payload.length;
  return req.parts !== null ? req.length : 0;
}
