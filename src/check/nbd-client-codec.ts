/**
 * The client's half of NBD that the checker needs and src/nbd does not
 * already provide: reading the server's greeting and GO replies, and a
 * pull-based decoder of simple replies. Options and requests are encoded
 * with src/nbd's own encoders. Pure: no sockets, no timers.
 *
 *   greeting      "NBDMAGIC" "IHAVEOPT" u16 handshake-flags              (18)
 *   INFO_EXPORT   u16 0, u64 size, u16 transmission flags               (12)
 *   BLOCK_SIZE    u16 3, u32 minimum, u32 preferred, u32 maximum        (14)
 *   simple reply  u32 0x67446698, u32 error, u64 cookie [, READ data]   (16+n)
 */
import { ByteQueue } from '../nbd/byte-queue.js';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_INIT_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
} from '../nbd/constants.js';

export const GREETING_BYTES = 18;
export const OPTION_REPLY_HEADER_BYTES = 20;
/** "IHAVEOPT" is newstyle; this 8-byte magic after NBDMAGIC is the old style. */
const OLDSTYLE_MAGIC = Buffer.from('0000420281861253', 'hex');

export type GreetingResult = { ok: true; clientFlags: number } | { ok: false; reason: string };

/** Checks the 18-byte greeting and picks the client flags to answer with. */
export function parseGreeting(b: Buffer): GreetingResult {
  if (!b.subarray(0, 8).equals(NBD_INIT_MAGIC)) return { ok: false, reason: 'not an NBD server (no NBDMAGIC greeting)' };
  if (b.subarray(8, 16).equals(OLDSTYLE_MAGIC)) return { ok: false, reason: 'an oldstyle NBD server; the checker needs fixed newstyle' };
  if (!b.subarray(8, 16).equals(NBD_OPTS_MAGIC)) return { ok: false, reason: 'not an NBD server (unknown greeting)' };
  const flags = b.readUInt16BE(16);
  if ((flags & NBD_FLAG_FIXED_NEWSTYLE) === 0) return { ok: false, reason: 'the server is not fixed newstyle' };
  return { ok: true, clientFlags: NBD_FLAG_C_FIXED_NEWSTYLE | ((flags & NBD_FLAG_NO_ZEROES) !== 0 ? NBD_FLAG_C_NO_ZEROES : 0) };
}

export interface ExportInfo {
  sizeBytes: number;
  transmissionFlags: number;
  /** From NBD_INFO_BLOCK_SIZE when the server sent it. */
  blockSize?: { minimum: number; preferred: number; maximum: number };
}

/**
 * Folds one NBD_REP_INFO payload into `into`. Returns a reason when the
 * payload is malformed; unknown info types are ignored, as the spec asks.
 */
export function applyInfo(data: Buffer, into: Partial<ExportInfo>): string | null {
  if (data.length < 2) return 'NBD_REP_INFO shorter than its type';
  const type = data.readUInt16BE(0);
  if (type === NBD_INFO_EXPORT) {
    if (data.length !== 12) return `NBD_INFO_EXPORT of ${data.length} bytes, not 12`;
    const size = data.readBigUInt64BE(2);
    if (size > BigInt(Number.MAX_SAFE_INTEGER)) return `export size ${size} is beyond what this checker handles`;
    into.sizeBytes = Number(size);
    into.transmissionFlags = data.readUInt16BE(10);
  } else if (type === NBD_INFO_BLOCK_SIZE) {
    if (data.length !== 14) return `NBD_INFO_BLOCK_SIZE of ${data.length} bytes, not 14`;
    into.blockSize = { minimum: data.readUInt32BE(2), preferred: data.readUInt32BE(6), maximum: data.readUInt32BE(10) };
  }
  return null;
}

// --- transmission ------------------------------------------------------------------

export interface SimpleReply {
  cookie: number;
  /** NBD error number; 0 is success. */
  error: number;
  /** READ data (successful READs only): a view of a received chunk, or a copy when it straddled chunks. */
  data: Buffer | null;
}

const enum ReplyState {
  Header,
  Data,
  Failed,
}

/**
 * Decodes simple replies from whatever pieces TCP delivers. A simple reply
 * does not say how long its data is, so the decoder asks `readLength` for
 * the cookie: the READ's length, 0 for other commands, undefined for a
 * cookie the client never sent (a protocol violation).
 */
export class SimpleReplyDecoder {
  private readonly bytes = new ByteQueue();
  private state = ReplyState.Header;
  private cookie = 0;
  private error = 0;
  private dataLength = 0;
  violation: string | null = null;

  constructor(private readonly readLength: (cookie: number) => number | undefined) {}

  push(chunk: Buffer): void {
    if (chunk.length === 0 || this.state === ReplyState.Failed) return;
    this.bytes.push(chunk);
  }

  next(): SimpleReply | null {
    switch (this.state) {
      case ReplyState.Failed:
        return null;
      case ReplyState.Header: {
        if (this.bytes.length < NBD_SIMPLE_REPLY_SIZE) return null;
        const h = this.bytes.take(NBD_SIMPLE_REPLY_SIZE);
        const magic = h.readUInt32BE(0);
        if (magic !== NBD_SIMPLE_REPLY_MAGIC) return this.fail(`reply magic 0x${magic.toString(16)} (structured replies were not negotiated)`);
        this.error = h.readUInt32BE(4);
        if (h.readUInt32BE(8) !== 0) return this.fail('reply to a cookie this client never sent');
        this.cookie = h.readUInt32BE(12);
        const length = this.readLength(this.cookie);
        if (length === undefined) return this.fail(`reply to cookie ${this.cookie}, which is not in flight`);
        // Only a successful READ carries data.
        this.dataLength = this.error === 0 ? length : 0;
        this.state = ReplyState.Data;
        return this.next();
      }
      case ReplyState.Data: {
        if (this.bytes.length < this.dataLength) return null;
        const data = this.dataLength === 0 ? null : this.bytes.take(this.dataLength);
        this.state = ReplyState.Header;
        return { cookie: this.cookie, error: this.error, data };
      }
    }
  }

  private fail(reason: string): null {
    this.state = ReplyState.Failed;
    this.violation = reason;
    this.bytes.clear();
    return null;
  }

}
