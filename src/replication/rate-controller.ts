/**
 * How fast a SyncTarget asks for data. Fixed: `resync-rate` bytes per
 * second. Dynamic (DRBD's c-plan-ahead idea): the rate follows how long the
 * source takes to answer; while answers come back within the delay target
 * the rate grows, spreading the step to the maximum over the plan-ahead
 * span; when answers come back late (the source's disk or the link is busy,
 * typically with application I/O) the rate is cut, never below the minimum.
 * Application latency stays bounded because resync backs off first.
 * Pure arithmetic: the caller feeds it samples and asks it per tick.
 */
export type RateSettings =
  | { kind: 'fixed'; bytesPerSec: number }
  | { kind: 'dynamic'; planAheadMs: number; delayTargetMs: number; minBytesPerSec: number; maxBytesPerSec: number };

/** Multiplicative cut when answers are late. */
export const BACKOFF_FACTOR = 0.7;

export class RateController {
  private rate: number;
  private latencySumMs = 0;
  private samples = 0;

  constructor(private readonly s: RateSettings) {
    this.rate = s.kind === 'fixed' ? s.bytesPerSec : s.minBytesPerSec;
  }

  /** Bytes per second now; 0 means no limit. */
  get bytesPerSec(): number {
    return this.rate;
  }

  /** The time one resync request took from asking to the answer. */
  sample(latencyMs: number): void {
    this.latencySumMs += latencyMs;
    this.samples++;
  }

  /** Called every tick of `tickMs`: adjust the rate from the samples since the last tick. */
  tick(tickMs: number): number {
    if (this.s.kind === 'fixed') return this.rate;
    const { planAheadMs, delayTargetMs, minBytesPerSec, maxBytesPerSec } = this.s;
    if (this.samples > 0) {
      const avg = this.latencySumMs / this.samples;
      if (avg > delayTargetMs) this.rate = Math.max(minBytesPerSec, this.rate * BACKOFF_FACTOR);
      else this.rate = Math.min(maxBytesPerSec, this.rate + ((maxBytesPerSec - minBytesPerSec) * tickMs) / Math.max(tickMs, planAheadMs));
    }
    this.latencySumMs = 0;
    this.samples = 0;
    return this.rate;
  }
}
