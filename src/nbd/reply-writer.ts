/**
 * The one ordered writer of a connection's transmission replies.
 *
 * Frames are appended synchronously (header bytes into a slab, then the
 * payload, if any), so the frames of concurrent requests never interleave.
 * Everything appended within one tick goes out as one corked writev: the
 * header bytes of consecutive frames are contiguous in the slab and leave as
 * one view, payload buffers leave as they are (never copied).
 *
 * Slab ownership: bytes handed to socket.write() are never written again.
 * The slab is append-only; when it is full a new one is started and the old
 * one is freed by the GC once the socket has sent it.
 */
import type { Socket } from 'node:net';

const SLAB_BYTES = 64 * 1024;

export interface ReplyWriterEvents {
  /** write() returned false: stop reading requests until drained. */
  onBlocked(): void;
  /** The socket drained: reading may resume. */
  onDrained(): void;
}

export class ReplyWriter {
  /** Header bytes are written here, at `pos` (see begin()). */
  slab: Buffer = Buffer.allocUnsafe(SLAB_BYTES);
  private pos = 0;
  /** Start of the header bytes not yet handed to the socket. */
  private pendingStart = 0;
  private corked = false;
  /** The socket refused more (write() returned false) and has not drained yet. */
  blocked = false;
  private readonly flushTick = (): void => this.flush();
  private readonly drained = (): void => {
    this.blocked = false;
    this.events.onDrained();
  };

  constructor(
    private readonly socket: Socket,
    private readonly events: ReplyWriterEvents,
  ) {}

  /**
   * Makes room for up to `maxBytes` of header and returns the position in
   * `slab` to write at; finish with end(bytesWritten).
   */
  begin(maxBytes: number): number {
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.flushTick);
    }
    if (this.pos + maxBytes > this.slab.length) {
      this.sendPending();
      this.slab = Buffer.allocUnsafe(Math.max(SLAB_BYTES, maxBytes));
      this.pos = 0;
      this.pendingStart = 0;
    }
    return this.pos;
  }

  end(bytesWritten: number): void {
    this.pos += bytesWritten;
  }

  /** Queues a payload right after the header bytes written so far. */
  payload(data: Buffer): void {
    if (data.length === 0) return;
    this.sendPending();
    this.send(data);
  }

  /** Hands everything queued to the socket now (before end(), say). */
  flush(): void {
    this.sendPending();
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
  }

  private sendPending(): void {
    if (this.pos > this.pendingStart) {
      this.send(this.slab.subarray(this.pendingStart, this.pos));
      this.pendingStart = this.pos;
    }
  }

  private send(data: Buffer): void {
    const s = this.socket;
    if (s.destroyed || s.writableEnded) return;
    if (!s.write(data) && !this.blocked) {
      this.blocked = true;
      s.once('drain', this.drained);
      this.events.onBlocked();
    }
  }
}
