/**
 * ReplyWriter against a recording stand-in for net.Socket: what leaves in
 * which system call (one per uncork), in which order, and when lent buffers
 * come back.
 */
import { setImmediate as immediate } from 'node:timers/promises';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { ReplyWriter } from '../../src/nbd/reply-writer.js';

class FakeSocket {
  destroyed = false;
  writableEnded = false;
  private corks = 0;
  private pending: Array<{ data: Buffer; cb?: () => void }> = [];
  /** One entry per "system call": the bytes of every write that left together. */
  readonly calls: string[] = [];
  /** Write callbacks are held here until complete() (the kernel took the bytes). */
  private unsent: Array<() => void> = [];
  accept = true;
  private drainListeners: Array<() => void> = [];

  cork(): void {
    this.corks++;
  }
  uncork(): void {
    if (this.corks > 0 && --this.corks === 0) this.send();
  }
  write(data: Buffer, cb?: () => void): boolean {
    this.pending.push({ data: Buffer.from(data), cb });
    if (this.corks === 0) this.send();
    return this.accept;
  }
  once(event: string, fn: () => void): this {
    if (event === 'drain') this.drainListeners.push(fn);
    return this;
  }
  drain(): void {
    this.accept = true;
    for (const fn of this.drainListeners.splice(0)) fn();
  }
  /** Calls back every write handed to the "kernel", in order. */
  complete(): void {
    for (const cb of this.unsent.splice(0)) cb();
  }
  private send(): void {
    if (this.pending.length === 0) return;
    this.calls.push(this.pending.map((p) => p.data.toString()).join(''));
    for (const p of this.pending.splice(0)) if (p.cb) this.unsent.push(p.cb);
  }
}

function frame(w: ReplyWriter, text: string, more: boolean, payload?: Buffer, lent?: Buffer): void {
  const at = w.begin(64);
  w.end(w.slab.write(text, at));
  if (payload) w.payload(payload, lent ?? null);
  w.frameDone(more);
}

function setup(): { sock: FakeSocket; w: ReplyWriter; released: Buffer[]; events: string[] } {
  const sock = new FakeSocket();
  const released: Buffer[] = [];
  const events: string[] = [];
  const w = new ReplyWriter(
    sock as unknown as Socket,
    { onBlocked: () => events.push('blocked'), onDrained: () => events.push('drained') },
    (b) => released.push(b),
  );
  return { sock, w, released, events };
}

describe('ReplyWriter', () => {
  it('a lone reply leaves at the end of its tick', async () => {
    const { sock, w } = setup();
    frame(w, '[a]', false);
    expect(sock.calls).toEqual([]);
    await Promise.resolve();
    await new Promise((r) => process.nextTick(r));
    expect(sock.calls).toEqual(['[a]']);
  });

  it('replies made while others are in flight share one write, in the order they were made', async () => {
    const { sock, w } = setup();
    frame(w, '[1]', true, Buffer.from('p1'));
    await new Promise((r) => process.nextTick(r));
    // Another completion of the same loop iteration.
    frame(w, '[2]', true);
    frame(w, '[3]', true, Buffer.from('p3'));
    await new Promise((r) => process.nextTick(r));
    expect(sock.calls).toEqual([]);
    await immediate();
    expect(sock.calls).toEqual(['[1]p1[2][3]p3']);
  });

  it('a lone reply after batched ones flushes them all at the end of its tick, order kept', async () => {
    const { sock, w } = setup();
    frame(w, '[1]', true);
    frame(w, '[2]', false);
    await new Promise((r) => process.nextTick(r));
    expect(sock.calls).toEqual(['[1][2]']);
    await immediate(); // the pending setImmediate finds nothing to send
    expect(sock.calls).toEqual(['[1][2]']);
  });

  it('gives lent buffers back only once the socket has sent them, oldest first', async () => {
    const { sock, w, released } = setup();
    const a = Buffer.from('AAAA');
    const b = Buffer.from('BBBB');
    frame(w, '[1]', true, a.subarray(0, 2), a);
    frame(w, '[2]', false, b, b);
    await new Promise((r) => process.nextTick(r));
    expect(sock.calls).toEqual(['[1]AA[2]BBBB']);
    expect(released).toEqual([]);
    expect(w.lentOutstanding).toBe(2);
    sock.complete();
    expect(released).toEqual([a, b]);
    expect(w.lentOutstanding).toBe(0);
  });

  it('a lent buffer that is never written (empty, or socket gone) comes back at once', () => {
    const { sock, w, released } = setup();
    const a = Buffer.alloc(8);
    frame(w, '[1]', false, a.subarray(0, 0), a);
    expect(released).toEqual([a]);
    sock.destroyed = true;
    const b = Buffer.alloc(8);
    frame(w, '[2]', false, b, b);
    w.flush();
    expect(released).toEqual([a, b]);
  });

  it('reports a refused write once, and the drain', async () => {
    const { sock, w, events } = setup();
    sock.accept = false;
    frame(w, '[1]', false, Buffer.from('x'));
    frame(w, '[2]', false, Buffer.from('y'));
    w.flush();
    expect(w.blocked).toBe(true);
    expect(events).toEqual(['blocked']);
    sock.drain();
    expect(w.blocked).toBe(false);
    expect(events).toEqual(['blocked', 'drained']);
  });
});
