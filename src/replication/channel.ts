/**
 * One TCP (or TLS) connection to a peer: the wire codec on a socket. It owns
 * the socket; everything above sees typed packets in and out.
 *
 * A peer session has two channels, as DRBD has: 'data' carries writes and
 * resync data, 'meta' carries acknowledgements and pings, so a data stream
 * that fills the socket buffers cannot delay a ping or an ack behind it.
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { PacketDecoder, encodePacket, type Channel, type Packet } from './wire/index.js';

export type PacketHandler = (p: Packet) => void;

/** DISCONNECT carries at most 255 bytes of reason. */
const MAX_REASON_BYTES = 255;

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
  /** Bytes handed to the socket and not yet flushed by it. */
  bytesSent = 0;
  bytesReceived = 0;

  constructor(
    readonly socket: Socket,
    /** The channel when known (we dialed); null for an accepted socket until HELLO says. */
    channel: Channel | null,
    private readonly log: Logger,
    maxPacketBytes?: number,
  ) {
    this.decoder = new PacketDecoder({ channel: channel ?? 'from-hello', maxLength: maxPacketBytes });
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
   * Queue one packet: header and payload go to the socket together. Returns
   * false when the socket's buffer is full (wait for `drained()`).
   */
  send(p: Packet): boolean {
    if (this.closed) return false;
    const parts = encodePacket(p, { integrity: this.integrity });
    let ok = true;
    if (parts.length === 1) {
      ok = this.socket.write(parts[0]!);
      this.bytesSent += parts[0]!.length;
    } else {
      this.socket.cork();
      for (const b of parts) {
        ok = this.socket.write(b);
        this.bytesSent += b.length;
      }
      this.socket.uncork();
    }
    return ok;
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
