/**
 * Which packets one received stream may carry, and when. The decoder asks
 * the gate about every header before it buffers the body, so a peer that has
 * not authenticated cannot make us hold or parse anything but the handshake.
 *
 * Each of the two connections of a peer session runs the same opening, and
 * the peer's stream must show it in this order:
 *
 *   HELLO -> AUTH_CHALLENGE -> AUTH_RESPONSE -> AUTH_OK -> established
 *
 * (the peer's AUTH_OK says it verified our response; we verify its
 * AUTH_RESPONSE as soon as it arrives, before pulling the next packet).
 * Once established, a packet is accepted only on the connection that carries
 * it (PACKET_SPECS[].channel). DISCONNECT is accepted at any point and ends
 * the stream: nothing may follow it.
 */
import type { Channel, PacketKind, PacketSpec } from './packets.js';

export type StreamPhase = 'unchecked' | 'hello' | 'auth-challenge' | 'auth-response' | 'auth-ok' | 'established' | 'closed';

/** The handshake packet each opening phase waits for, and the phase after it. */
const OPENING: Partial<Record<StreamPhase, { expect: PacketKind; then: StreamPhase }>> = {
  hello: { expect: 'hello', then: 'auth-challenge' },
  'auth-challenge': { expect: 'auth-challenge', then: 'auth-response' },
  'auth-response': { expect: 'auth-response', then: 'auth-ok' },
  'auth-ok': { expect: 'auth-ok', then: 'established' },
};

const HANDSHAKE_ONLY: ReadonlySet<PacketKind> = new Set(['hello', 'auth-challenge', 'auth-response', 'auth-ok']);

export class StreamGate {
  private current: StreamPhase;
  private channel: Channel | 'any' | 'from-hello';

  /**
   * @param channel the connection this stream arrives on; 'from-hello' for
   *   an accepted connection, which learns it from the peer's HELLO; 'any'
   *   skips the channel check (tools and codec tests).
   * @param phase where the stream starts; 'established' skips the opening,
   *   'unchecked' admits everything (codec tests and tools only: a link
   *   always starts at 'hello').
   */
  constructor(channel: Channel | 'any' | 'from-hello', phase: 'hello' | 'established' | 'unchecked' = 'hello') {
    this.channel = channel;
    this.current = phase;
  }

  get phase(): StreamPhase {
    return this.current;
  }

  /**
   * Null when the packet may come now (and the phase moves on), else the
   * reason it may not.
   */
  admit(spec: PacketSpec): string | null {
    const kind = spec.kind;
    if (this.current === 'unchecked') return null;
    if (this.current === 'closed') return `${kind} after DISCONNECT`;
    if (kind === 'disconnect') {
      this.current = 'closed';
      return null;
    }
    const opening = OPENING[this.current];
    if (opening !== undefined) {
      if (kind !== opening.expect) {
        return `${kind} before authentication completed (expected ${opening.expect})`;
      }
      this.current = opening.then;
      return null;
    }
    if (HANDSHAKE_ONLY.has(kind)) return `${kind} after authentication completed`;
    if (this.channel !== 'any' && spec.channel !== 'both' && spec.channel !== this.channel) {
      return `${kind} belongs on the ${spec.channel} connection, not the ${this.channel} connection`;
    }
    return null;
  }

  /** The channel the peer's HELLO names: adopted, or checked against the one we opened. */
  onHello(channel: Channel): string | null {
    if (this.channel === 'from-hello') {
      this.channel = channel;
      return null;
    }
    if (this.channel !== 'any' && this.channel !== channel) {
      return `hello for the ${channel} connection arrived on the ${this.channel} connection`;
    }
    return null;
  }

  /** The connection this stream belongs to, once known. */
  get boundChannel(): Channel | null {
    return this.channel === 'data' || this.channel === 'meta' ? this.channel : null;
  }
}
