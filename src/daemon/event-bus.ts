/**
 * The daemon's ordered stream of state changes (`mirrorbd events`). Every
 * event gets the next sequence number and a timestamp; subscribers receive
 * events in that order. A subscriber that cannot keep up is dropped rather
 * than letting its backlog grow without bound.
 */
export interface MirrorEvent {
  seq: number;
  timeMs: number;
  resource: string;
  /** e.g. 'role', 'disk', 'connection', 'replication', 'sync-decision', 'resync-done', 'verify-done'. */
  type: string;
  [field: string]: unknown;
}

export interface EventInput {
  resource: string;
  type: string;
  [field: string]: unknown;
}

export interface Subscriber {
  /** Deliver one event; false when the subscriber's buffer is full. */
  deliver(e: MirrorEvent): boolean;
  drop(reason: string): void;
  /** Only this resource's events (null: all). */
  resource: string | null;
}

export class EventBus {
  private seq = 0;
  private readonly subscribers = new Set<Subscriber>();

  emit(input: EventInput): MirrorEvent {
    const e: MirrorEvent = { ...input, seq: ++this.seq, timeMs: Date.now() };
    for (const s of this.subscribers) {
      if (s.resource !== null && s.resource !== e.resource) continue;
      if (!s.deliver(e)) {
        this.subscribers.delete(s);
        s.drop('event subscriber too slow; dropped');
      }
    }
    return e;
  }

  subscribe(s: Subscriber): () => void {
    this.subscribers.add(s);
    return () => this.subscribers.delete(s);
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }
}
