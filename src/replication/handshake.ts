/**
 * The connect-time exchange on a fresh, authenticated session: PARAMS,
 * SIZES, UUIDS and STATE both ways, then (when the decision needs it) the
 * bitmaps. Both sides compute the sync decision from the same facts with the
 * same pure function, so they agree on the direction without another round.
 */
import type { Bitmap } from '../meta/index.js';
import { BITMAP_BLOCK_BYTES, Bitmap as BitmapImpl, decodeBitmapRleChunk, encodeBitmapRle } from '../meta/index.js';
import type { PeerChannel } from './channel.js';
import type {
  BitmapPacket,
  Packet,
  ParamsPacket,
  SizesPacket,
  StatePacket,
  UuidsPacket,
} from './wire/index.js';

export interface HandshakeFacts {
  params: ParamsPacket;
  sizes: SizesPacket;
  uuids: UuidsPacket;
  state: StatePacket;
}

/** Waits for packets on a channel one at a time, with a deadline. */
export class PacketWaiter {
  private readonly queue: Packet[] = [];
  private waiting: ((p: Packet) => void) | null = null;
  private failure: Error | null = null;
  private failWaiting: ((e: Error) => void) | null = null;

  constructor(ch: PeerChannel) {
    ch.onPacket((p) => {
      if (this.waiting) {
        const w = this.waiting;
        this.waiting = null;
        this.failWaiting = null;
        w(p);
      } else {
        this.queue.push(p);
      }
    });
    ch.onClose((reason) => this.fail(new Error(`connection lost during the handshake: ${reason}`)));
  }

  fail(e: Error): void {
    this.failure = e;
    const f = this.failWaiting;
    this.waiting = null;
    this.failWaiting = null;
    f?.(e);
  }

  next(timeoutMs: number): Promise<Packet> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = null;
        this.failWaiting = null;
        reject(new Error(`the peer did not continue the handshake within ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref();
      this.waiting = (p) => {
        clearTimeout(timer);
        resolve(p);
      };
      this.failWaiting = (e) => {
        clearTimeout(timer);
        reject(e);
      };
    });
  }

  /** Packets that arrived but were not taken (they belong to whoever comes next). */
  rest(): Packet[] {
    return this.queue.splice(0);
  }
}

/** Send ours, collect theirs (in the order the protocol sends them). */
export async function exchangeFacts(data: PeerChannel, waiter: PacketWaiter, own: HandshakeFacts, timeoutMs: number): Promise<HandshakeFacts> {
  data.send(own.params);
  data.send(own.sizes);
  data.send(own.uuids);
  data.send(own.state);
  const params = await expect(waiter, 'params', timeoutMs);
  const sizes = await expect(waiter, 'sizes', timeoutMs);
  const uuids = await expect(waiter, 'uuids', timeoutMs);
  const state = await expect(waiter, 'state', timeoutMs);
  return { params, sizes, uuids, state };
}

/**
 * Send our bitmap for the peer and receive the peer's for us, both limited
 * to the agreed data size (the smaller disk). Returns the peer's bitmap in
 * our geometry.
 */
export async function exchangeBitmaps(data: PeerChannel, waiter: PacketWaiter, own: Bitmap, agreedBytes: number, timeoutMs: number): Promise<Bitmap> {
  let startBit = 0;
  const toBlock = Math.min(own.blocks, Math.ceil(agreedBytes / BITMAP_BLOCK_BYTES));
  const chunks = [...encodeBitmapRle(own, { toBlock })];
  chunks.forEach((payload, i) => {
    data.send({ kind: 'bitmap', last: i === chunks.length - 1, startBit, payload });
    startBit = 0;
  });
  if (chunks.length === 0) data.send({ kind: 'bitmap', last: true, startBit: 0, payload: Buffer.alloc(0) });
  const theirs = new BitmapImpl(own.dataSizeBytes);
  for (;;) {
    const p: BitmapPacket = await expect(waiter, 'bitmap', timeoutMs);
    if (p.payload.length > 0) decodeBitmapRleChunk(p.payload, theirs);
    if (p.last) return theirs;
  }
}

async function expect<K extends Packet['kind']>(waiter: PacketWaiter, kind: K, timeoutMs: number): Promise<Extract<Packet, { kind: K }>> {
  const p = await waiter.next(timeoutMs);
  if (p.kind !== kind) throw new Error(`handshake: expected ${kind.toUpperCase()}, got ${p.kind.toUpperCase()}`);
  return p as Extract<Packet, { kind: K }>;
}
