/**
 * The one ordered writer of a connection's transmission replies.
 *
 * Frames are appended synchronously (header bytes into a slab, then the
 * payload, if any), so the frames of concurrent requests never interleave.
 * Appended frames are held in a cork and go out together as one writev: the
 * header bytes of consecutive frames are contiguous in the slab and leave as
 * one view, payload buffers leave as they are (never copied).
 *
 * When the cork is lifted (see frameDone):
 * - `more` false (no other request of the connection is in flight): at the
 *   end of the current tick, so a lone request's reply is not delayed;
 * - `more` true: in the check phase of this event-loop iteration
 *   (setImmediate), after every file-system completion and socket read that
 *   libuv delivered in this iteration's poll phase, so all the replies they
 *   produced leave in one system call instead of one write(2) each.
 * A lone frame later in the same iteration still lifts the cork at the end
 * of its tick; the pending setImmediate then finds nothing to do.
 *
 * Slab ownership: bytes handed to socket.write() are never written again.
 * The slab is append-only; when it is full a new one is started and the old
 * one is freed by the GC once the socket has sent it.
 *
 * Lent payloads (payload(data, lent)): the writer gives `lent` back through
 * `release` once the socket is done with it, i.e. when the socket calls the
 * write's callback. Node calls write callbacks in the order of the writes
 * (also for corked batches, and with an error for writes dropped by a
 * destroyed socket), so one shared callback and a FIFO of lent buffers say
 * which buffer each call is about; no closure is made per write.
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
  private tickScheduled = false;
  private immediateScheduled = false;
  /** The socket refused more (write() returned false) and has not drained yet. */
  blocked = false;
  /** Lent buffers whose writes the socket has not called back yet, oldest at `lentHead`. */
  private lent: Buffer[] = [];
  private lentHead = 0;
  private readonly flushTick = (): void => {
    this.tickScheduled = false;
    this.flush();
  };
  private readonly flushImmediate = (): void => {
    this.immediateScheduled = false;
    this.flush();
  };
  private readonly drained = (): void => {
    this.blocked = false;
    this.events.onDrained();
  };
  private readonly sentLent = (): void => {
    const buf = this.lent[this.lentHead];
    if (buf === undefined) return;
    this.lent[this.lentHead] = EMPTY;
    this.lentHead++;
    if (this.lentHead === this.lent.length) {
      this.lent.length = 0;
      this.lentHead = 0;
    } else if (this.lentHead >= 1024 && this.lentHead * 2 >= this.lent.length) {
      // Under steady load the queue may never empty: compact now and then.
      this.lent = this.lent.slice(this.lentHead);
      this.lentHead = 0;
    }
    this.release(buf);
  };

  constructor(
    private readonly socket: Socket,
    private readonly events: ReplyWriterEvents,
    /** Takes back a buffer lent with payload(); never called twice for one loan. */
    private readonly release: (buf: Buffer) => void = () => undefined,
  ) {}

  /**
   * Makes room for up to `maxBytes` of header and returns the position in
   * `slab` to write at; finish with end(bytesWritten), then frameDone().
   */
  begin(maxBytes: number): number {
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
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

  /**
   * Queues a payload right after the header bytes written so far. With
   * `lent`, the writer hands `lent` (the buffer `data` is a view of) to
   * `release` once the socket no longer needs it.
   */
  payload(data: Buffer, lent: Buffer | null = null): void {
    if (data.length === 0) {
      if (lent !== null) this.release(lent);
      return;
    }
    this.sendPending();
    this.send(data, lent);
  }

  /**
   * One frame is complete; `more` says whether further replies are expected
   * soon (other requests in flight), which lets them share the system call.
   */
  frameDone(more: boolean): void {
    if (!more) {
      if (!this.tickScheduled) {
        this.tickScheduled = true;
        process.nextTick(this.flushTick);
      }
    } else if (!this.immediateScheduled && !this.tickScheduled) {
      this.immediateScheduled = true;
      setImmediate(this.flushImmediate);
    }
  }

  /** Hands everything queued to the socket now (before end(), say). */
  flush(): void {
    this.sendPending();
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
  }

  /** Lent buffers the socket still holds. */
  get lentOutstanding(): number {
    return this.lent.length - this.lentHead;
  }

  private sendPending(): void {
    if (this.pos > this.pendingStart) {
      this.send(this.slab.subarray(this.pendingStart, this.pos), null);
      this.pendingStart = this.pos;
    }
  }

  private send(data: Buffer, lent: Buffer | null): void {
    const s = this.socket;
    if (s.destroyed || s.writableEnded) {
      // Never written: nothing holds it.
      if (lent !== null) this.release(lent);
      return;
    }
    let ok: boolean;
    if (lent !== null) {
      this.lent.push(lent);
      ok = s.write(data, this.sentLent);
    } else {
      ok = s.write(data);
    }
    if (!ok && !this.blocked) {
      this.blocked = true;
      s.once('drain', this.drained);
      this.events.onBlocked();
    }
  }
}

const EMPTY = Buffer.alloc(0);
