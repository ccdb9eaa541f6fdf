/**
 * Transmission-phase request framing as an explicit, pull-based state machine.
 * Pure: bytes in (push), decoded requests out (next). TCP may cut anywhere, so
 * every field may arrive split; the decoder copies only when a header
 * straddles chunks, and a payload that straddles chunks either is copied into
 * one buffer or (with `gather`) is handed out as the list of its pieces.
 *
 * Compact request (28 bytes):  u32 magic 0x25609513, u16 flags, u16 type,
 *                              u64 cookie, u64 offset, u32 length
 * Extended request (32 bytes): u32 magic 0x21e41c71, u16 flags, u16 type,
 *                              u64 cookie, u64 offset, u64 length
 * A compact WRITE is followed by `length` payload bytes; an extended request
 * carries a payload exactly when it sets NBD_CMD_FLAG_PAYLOAD_LEN.
 *
 * 64-bit fields are read as two 32-bit halves: a JS number is exact below
 * 2^53, which covers every export this server can hold. A larger value is
 * kept as an inexact (huge) number, which every range check then refuses;
 * the raw halves of the offset are kept because extended replies echo it.
 */
import {
  NBD_CMD_FLAG_PAYLOAD_LEN,
  NBD_CMD_WRITE,
  NBD_EXTENDED_REQUEST_MAGIC,
  NBD_EXTENDED_REQUEST_SIZE,
  NBD_MAX_DISCARD_BYTES,
  NBD_REQUEST_MAGIC,
  NBD_REQUEST_SIZE,
} from './constants.js';

const TWO_POW_32 = 0x1_0000_0000;

/** Why a payload was read and dropped instead of delivered. */
export const enum PayloadProblem {
  None = 0,
  /** Longer than the negotiated maximum payload (but short enough to skip). */
  TooLarge = 1,
  /** The command takes no payload but the client sent one (extended PAYLOAD_LEN). */
  Unexpected = 2,
}

/** One decoded request. The decoder allocates one per request and never reuses it. */
export interface NbdRequest {
  flags: number;
  type: number;
  /** The cookie, echoed verbatim in the reply, as two 32-bit halves. */
  cookieHi: number;
  cookieLo: number;
  offsetHi: number;
  offsetLo: number;
  /** hi * 2^32 + lo; exact when below 2^53, otherwise only known to be huge. */
  offset: number;
  /** Effect length (for a WRITE, the payload length); exact below 2^53. */
  length: number;
  /**
   * WRITE data: a view of a received chunk or a fresh copy. Null for a
   * gathered payload (see `parts`). Received chunks are never written to
   * again, so whoever holds the request may keep the view as long as it likes.
   */
  payload: Buffer | null;
  /**
   * With `gather`, a WRITE payload that straddles received chunks: views of
   * its consecutive pieces, in order, adding up to the payload length (no
   * copy). Null otherwise. Owned like `payload`.
   */
  parts: Buffer[] | null;
  payloadProblem: PayloadProblem;
}

export interface RequestDecoderOptions {
  /** 32-byte requests (NBD_OPT_EXTENDED_HEADERS was agreed). */
  extended: boolean;
  /** Largest WRITE payload delivered; longer ones are skipped and flagged. */
  maxPayload: number;
  /** Longest payload skipped rather than ending the connection. */
  maxDiscard?: number;
  /** Payload allocator (tests spy on it to prove the limits hold). */
  allocate?: (size: number) => Buffer;
  /**
   * Deliver a payload that straddles chunks as `parts` (views of the received
   * chunks) instead of copying it into one buffer: for a consumer that can
   * write a list of buffers (positional writev).
   */
  gather?: boolean;
}

const enum DecoderState {
  /** Collecting a request header. */
  Header,
  /** Copying a WRITE payload that straddles chunks into `payload` (or gathering its `parts`). */
  Payload,
  /** Skipping `remaining` payload bytes that will not be used. */
  Discard,
  /** A protocol violation was found; nothing more is decoded. */
  Failed,
}

export class RequestDecoder {
  private readonly chunks: Buffer[] = [];
  /** Bytes consumed from chunks[0]. */
  private head = 0;
  private total = 0;
  private state = DecoderState.Header;
  /** Header bytes that straddle chunks are gathered here (no allocation per request). */
  private readonly scratch = Buffer.alloc(NBD_EXTENDED_REQUEST_SIZE);
  private current: NbdRequest | null = null;
  private filled = 0;
  private remaining = 0;
  private readonly headerSize: number;
  private readonly extended: boolean;
  private readonly maxPayload: number;
  private readonly maxDiscard: number;
  private readonly allocate: (size: number) => Buffer;
  private readonly gather: boolean;
  /** Non-null once the stream broke the protocol (the connection must close). */
  violation: string | null = null;

  constructor(options: RequestDecoderOptions) {
    this.extended = options.extended;
    this.headerSize = options.extended ? NBD_EXTENDED_REQUEST_SIZE : NBD_REQUEST_SIZE;
    this.maxPayload = options.maxPayload;
    this.maxDiscard = Math.max(options.maxDiscard ?? NBD_MAX_DISCARD_BYTES, options.maxPayload);
    this.allocate = options.allocate ?? Buffer.allocUnsafe;
    this.gather = options.gather ?? false;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0 || this.state === DecoderState.Failed) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Bytes received but not yet decoded. */
  buffered(): number {
    return this.total;
  }

  /** The next complete request, or null (then check `violation`). */
  next(): NbdRequest | null {
    for (;;) {
      switch (this.state) {
        case DecoderState.Failed:
          return null;
        case DecoderState.Header: {
          if (this.total < this.headerSize) return null;
          const req = this.decodeHeader();
          if (req === null) return null;
          if (this.state === DecoderState.Header) return req;
          continue;
        }
        case DecoderState.Payload: {
          if (!this.fillPayload()) return null;
          this.state = DecoderState.Header;
          const done = this.current!;
          this.current = null;
          return done;
        }
        case DecoderState.Discard: {
          if (!this.skip()) return null;
          this.state = DecoderState.Header;
          const done = this.current!;
          this.current = null;
          return done;
        }
      }
    }
  }

  /** Decodes a header; may move to Payload/Discard; returns null on violation. */
  private decodeHeader(): NbdRequest | null {
    const n = this.headerSize;
    let h: Buffer;
    let at: number;
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      // Common case: the whole header is in one chunk; read it in place.
      h = first;
      at = this.head;
    } else {
      this.copyOut(this.scratch, 0, n);
      h = this.scratch;
      at = 0;
    }
    const magic = h.readUInt32BE(at);
    const expected = this.extended ? NBD_EXTENDED_REQUEST_MAGIC : NBD_REQUEST_MAGIC;
    if (magic !== expected) {
      return this.fail(`bad request magic 0x${magic.toString(16).padStart(8, '0')}`);
    }
    const flags = h.readUInt16BE(at + 4);
    const type = h.readUInt16BE(at + 6);
    const cookieHi = h.readUInt32BE(at + 8);
    const cookieLo = h.readUInt32BE(at + 12);
    const offsetHi = h.readUInt32BE(at + 16);
    const offsetLo = h.readUInt32BE(at + 20);
    const length = this.extended
      ? h.readUInt32BE(at + 24) * TWO_POW_32 + h.readUInt32BE(at + 28)
      : h.readUInt32BE(at + 24);
    if (h === first) this.consume(n);

    const req: NbdRequest = {
      flags,
      type,
      cookieHi,
      cookieLo,
      offsetHi,
      offsetLo,
      offset: offsetHi * TWO_POW_32 + offsetLo,
      length,
      payload: null,
      parts: null,
      payloadProblem: PayloadProblem.None,
    };

    let payloadLength = 0;
    if (this.extended) {
      if (flags & NBD_CMD_FLAG_PAYLOAD_LEN) {
        payloadLength = length;
        if (type !== NBD_CMD_WRITE) req.payloadProblem = PayloadProblem.Unexpected;
      } else if (type === NBD_CMD_WRITE) {
        // Without PAYLOAD_LEN we cannot know where the next request starts.
        return this.fail('extended WRITE without NBD_CMD_FLAG_PAYLOAD_LEN');
      }
    } else if (type === NBD_CMD_WRITE) {
      payloadLength = length;
    }
    if (payloadLength === 0) {
      if (type === NBD_CMD_WRITE) req.payload = EMPTY;
      return req;
    }
    // Limits before any buffering or allocation.
    if (req.payloadProblem === PayloadProblem.None && payloadLength > this.maxPayload) {
      req.payloadProblem = PayloadProblem.TooLarge;
    }
    if (req.payloadProblem !== PayloadProblem.None) {
      if (payloadLength > this.maxDiscard) {
        return this.fail(`request payload of ${payloadLength} bytes is beyond the limit of ${this.maxDiscard}`);
      }
      this.current = req;
      this.remaining = payloadLength;
      this.state = DecoderState.Discard;
      return req;
    }
    const c = this.chunks[0];
    if (c !== undefined && c.length - this.head >= payloadLength) {
      // The payload is inside one received chunk: hand out a view, no copy.
      req.payload = c.subarray(this.head, this.head + payloadLength);
      this.consume(payloadLength);
      return req;
    }
    if (this.gather) {
      req.parts = [];
      this.remaining = payloadLength;
    } else {
      req.payload = this.allocate(payloadLength);
      this.filled = 0;
    }
    this.current = req;
    this.state = DecoderState.Payload;
    return req;
  }

  /** Copies (or gathers) what has arrived into the current payload; true when complete. */
  private fillPayload(): boolean {
    const parts = this.current!.parts;
    if (parts !== null) {
      while (this.remaining > 0 && this.chunks.length > 0) {
        const c = this.chunks[0]!;
        const n = Math.min(c.length - this.head, this.remaining);
        parts.push(this.head === 0 && n === c.length ? c : c.subarray(this.head, this.head + n));
        this.remaining -= n;
        this.consume(n);
      }
      return this.remaining === 0;
    }
    const dst = this.current!.payload!;
    while (this.filled < dst.length && this.chunks.length > 0) {
      const c = this.chunks[0]!;
      const want = dst.length - this.filled;
      const copied = c.copy(dst, this.filled, this.head, Math.min(c.length, this.head + want));
      this.filled += copied;
      this.consume(copied);
    }
    return this.filled === dst.length;
  }

  /** Drops up to `remaining` bytes; true when all of them are gone. */
  private skip(): boolean {
    while (this.remaining > 0 && this.chunks.length > 0) {
      const c = this.chunks[0]!;
      const n = Math.min(c.length - this.head, this.remaining);
      this.remaining -= n;
      this.consume(n);
    }
    return this.remaining === 0;
  }

  /** Copies n buffered bytes into dst at `at` and consumes them (caller checked they are there). */
  private copyOut(dst: Buffer, at: number, n: number): void {
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const copied = c.copy(dst, at + filled, this.head, Math.min(c.length, this.head + (n - filled)));
      filled += copied;
      this.consume(copied);
    }
  }

  /** Consumes n bytes of chunks[0] (n never exceeds what it holds). */
  private consume(n: number): void {
    this.head += n;
    this.total -= n;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }

  private fail(reason: string): null {
    this.state = DecoderState.Failed;
    this.violation = reason;
    this.chunks.length = 0;
    this.total = 0;
    this.head = 0;
    this.current = null;
    return null;
  }
}

const EMPTY = Buffer.alloc(0);

// --- the client's side (for tests and tools) --------------------------------------

export interface RequestFields {
  flags?: number;
  type: number;
  cookie: bigint;
  offset: bigint | number;
  length: bigint | number;
}

/** Encodes a request header (without payload), compact or extended. */
export function encodeRequest(r: RequestFields, extended = false): Buffer {
  const b = Buffer.alloc(extended ? NBD_EXTENDED_REQUEST_SIZE : NBD_REQUEST_SIZE);
  b.writeUInt32BE(extended ? NBD_EXTENDED_REQUEST_MAGIC : NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags ?? 0, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeBigUInt64BE(BigInt(r.offset), 16);
  if (extended) b.writeBigUInt64BE(BigInt(r.length), 24);
  else b.writeUInt32BE(Number(r.length), 24);
  return b;
}
