/**
 * One TCP (or TLS) connection to a peer: the wire codec on a socket. It owns
 * the socket; everything above sees typed packets in and out.
 *
 * A peer session has two channels, as DRBD has: 'data' carries writes and
 * resync data, 'meta' carries acknowledgements and pings, so a data stream
 * that fills the socket buffers cannot delay a ping or an ack behind it.
 *
 * Packets queued during one turn of the event loop leave in one socket
 * write, in the order they were queued: a resync moves thousands of small
 * requests and acknowledgements, and on loopback each `write(2)` of its own
 * (with the TCP work it triggers in the peer) cost more than the packet.
 * The queue is flushed in the loop's check phase (setImmediate), right after
 * the I/O callbacks that produced the packets, so an idle link adds no
 * delay worth measuring; a flush is also forced once the queue holds
 * FLUSH_BYTES.
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { PacketDecoder, encodePacket, type Channel, type Packet } from './wire/index.js';

export type PacketHandler = (p: Packet) => void;

/** DISCONNECT carries at most 255 bytes of reason. */
const MAX_REASON_BYTES = 255;
/** Queued bytes that force a flush before the end of the loop turn. */
export const FLUSH_BYTES = 4 * 1024 * 1024;
/**
 * Buffers shorter than this are copied together into one buffer at flush
 * (headers, acks, requests); longer ones (payloads) go to the socket as
 * they are, never copied.
 */
const GATHER_BELOW_BYTES = 2048;

/** Runs `fn` once the I/O callbacks of this loop turn are done (injectable for tests). */
export type FlushScheduler = (fn: () => void) => void;
const checkPhase: FlushScheduler = (fn) => {
  setImmediate(fn);
};

/** The longest prefix of `s` whose UTF-8 form fits `maxBytes`, never splitting a character. */
export function truncateUtf8(s: string, maxBytes: number): string {
  if (Buffer.byteLength(s, 'utf8') <= maxBytes) return s;
  let out = '';
  let bytes = 0;
  for (const ch of s) {
    const n = Buffer.byteLength(ch, 'utf8');
    if (bytes + n > maxBytes) break;
    out += ch;
    bytes += n;
  }
  return out;
}

export class PeerChannel {
  private readonly decoder: PacketDecoder;
  private integrity = false;
  private closed = false;
  private closeReason = '';
  /** Null while packets are held for the next handler (between two owners). */
  private onPacketFn: PacketHandler | null = null;
  private held: Packet[] = [];
  private readonly closeHandlers: Array<(reason: string) => void> = [];
  private readonly drainWaiters: Array<() => void> = [];
  /** Encoded packets waiting for the flush, in send order. */
  private queue: Buffer[] = [];
  /** queue index -> callback for when the socket has written that buffer. */
  private written: Array<{ at: number; fn: () => void }> = [];
  private queuedBytes = 0;
  private flushScheduled = false;
  private readonly flushNow = (): void => this.flush();
  /** Bytes queued for the socket (counted when queued). */
  bytesSent = 0;
  bytesReceived = 0;

  constructor(
    readonly socket: Socket,
    /** The channel when known (we dialed); null for an accepted socket until HELLO says. */
    channel: Channel | null,
    private readonly log: Logger,
    maxPacketBytes?: number,
    private readonly schedule: FlushScheduler = checkPhase,
  ) {
    // Resync data is written as the pieces it arrived in (no copy, no buffer per request).
    this.decoder = new PacketDecoder({ channel: channel ?? 'from-hello', maxLength: maxPacketBytes, gatherPayloads: true });
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.received(chunk));
    socket.on('drain', () => {
      for (const w of this.drainWaiters.splice(0)) w();
    });
    socket.on('error', (e) => this.close(`socket error: ${e.message}`, false));
    socket.on('close', () => this.close(this.closeReason || 'connection closed by peer', false));
  }

  get channel(): Channel | null {
    return this.decoder.channel;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get reason(): string {
    return this.closeReason;
  }

  /**
   * Who receives packets from now on; null holds them until the next
   * handler is set, so nothing is lost while ownership passes from the
   * opening to the peer session.
   */
  onPacket(handler: PacketHandler | null): void {
    this.onPacketFn = handler;
    while (handler !== null && this.onPacketFn === handler && this.held.length > 0 && !this.closed) {
      handler(this.held.shift()!);
    }
  }

  onClose(handler: (reason: string) => void): void {
    if (this.closed) handler(this.closeReason);
    else this.closeHandlers.push(handler);
  }

  /** After HELLO: block-data packets carry (and must carry) a crc32c digest. */
  setIntegrity(on: boolean): void {
    this.integrity = on;
    this.decoder.setIntegrity(on);
  }

  /**
   * Queue one packet; it leaves with the others queued in this loop turn,
   * header and payload together. Returns false when the socket's buffer is
   * full (wait for `drained()`). `whenWritten` (optional) runs once the
   * socket is done with the packet's buffers (a pooled payload may be
   * reused then), or at once when the channel is closed.
   */
  send(p: Packet, whenWritten: (() => void) | undefined = p.kind === 'rs-data-reply' ? p.whenWritten : undefined): boolean {
    if (this.closed) {
      whenWritten?.();
      return false;
    }
    const parts = encodePacket(p, { integrity: this.integrity });
    for (const b of parts) {
      this.queue.push(b);
      this.queuedBytes += b.length;
      this.bytesSent += b.length;
    }
    if (whenWritten) this.written.push({ at: this.queue.length - 1, fn: whenWritten });
    if (this.queuedBytes >= FLUSH_BYTES) this.flush();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      this.schedule(this.flushNow);
    }
    return !this.socket.writableNeedDrain;
  }

  /**
   * Hands everything queued to the socket in one corked write: runs of small
   * buffers are gathered into one, payloads go as they are.
   */
  flush(): void {
    this.flushScheduled = false;
    const queue = this.queue;
    const written = this.written;
    if (queue.length === 0) return;
    this.queue = [];
    this.written = [];
    this.queuedBytes = 0;
    if (this.closed || this.socket.destroyed) {
      for (const w of written) w.fn();
      return;
    }
    let w = 0;
    this.socket.cork();
    let i = 0;
    while (i < queue.length) {
      // Gather a run of small buffers; a buffer with a callback ends its run.
      let j = i;
      let n = 0;
      while (j < queue.length && queue[j]!.length < GATHER_BELOW_BYTES && (w >= written.length || written[w]!.at !== j)) {
        n += queue[j]!.length;
        j++;
      }
      if (j - i > 1) {
        this.socket.write(Buffer.concat(queue.slice(i, j), n));
        i = j;
        continue;
      }
      const b = queue[i]!;
      if (w < written.length && written[w]!.at === i) {
        const fns: Array<() => void> = [];
        while (w < written.length && written[w]!.at === i) fns.push(written[w++]!.fn);
        this.socket.write(b, () => {
          for (const fn of fns) fn();
        });
      } else {
        this.socket.write(b);
      }
      i++;
    }
    this.socket.uncork();
  }
  /** Resolves when the socket can take more (at once if it can now). */
  drained(): Promise<void> {
    if (this.closed || !this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Stop reading (backpressure) / read again. */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  /**
   * Close with a reason. `tellPeer` sends a DISCONNECT first so the peer
   * logs why rather than a bare reset.
   */
  close(reason: string, tellPeer = true): void {
    if (this.closed) return;
    // What was queued before the close still goes out (ahead of DISCONNECT).
    this.flush();
    this.closed = true;
    this.closeReason = reason;
    if (tellPeer && !this.socket.destroyed && this.decoder.phase !== 'closed') {
      try {
        this.socket.end(Buffer.concat(encodePacket({ kind: 'disconnect', reason: truncateUtf8(reason, MAX_REASON_BYTES) })));
      } catch {
        // the socket is already gone
      }
      setTimeout(() => this.socket.destroy(), 1000).unref();
    } else {
      this.socket.destroy();
    }
    for (const w of this.drainWaiters.splice(0)) w();
    for (const h of this.closeHandlers.splice(0)) h(reason);
  }

  private received(chunk: Buffer): void {
    if (this.closed) return;
    this.bytesReceived += chunk.length;
    this.decoder.push(chunk);
    for (;;) {
      const p = this.decoder.next();
      if (p === null) break;
      if (p.kind === 'disconnect') {
        this.log.info({ reason: p.reason }, 'peer disconnected');
        this.close(`peer said: ${p.reason}`, false);
        return;
      }
      if (this.onPacketFn === null) this.held.push(p);
      else this.onPacketFn(p);
      if (this.closed) return;
    }
    if (this.decoder.violation !== null) {
      this.log.warn({ violation: this.decoder.violation }, 'peer broke the protocol; dropping the connection');
      this.close(`protocol violation: ${this.decoder.violation}`);
    }
  }
}
