import { describe, expect, it } from 'vitest';
import { BACKOFF_FACTOR, RateController } from '../../src/replication/rate-controller.js';

const MiB = 1024 * 1024;
const dynamic = { kind: 'dynamic' as const, planAheadMs: 1000, delayTargetMs: 100, minBytesPerSec: 4 * MiB, maxBytesPerSec: 104 * MiB };

describe('resync rate controller', () => {
  it('fixed: the configured rate, whatever the answers', () => {
    const c = new RateController({ kind: 'fixed', bytesPerSec: 50 * MiB });
    c.sample(5000);
    expect(c.tick(100)).toBe(50 * MiB);
  });

  it('dynamic: starts at the minimum and climbs to the maximum over the plan-ahead span while answers are fast', () => {
    const c = new RateController(dynamic);
    expect(c.bytesPerSec).toBe(4 * MiB);
    let rate = 0;
    for (let t = 0; t < 10; t++) {
      c.sample(20);
      rate = c.tick(100);
    }
    expect(rate).toBe(104 * MiB);
  });

  it('dynamic: backs off when answers come late (application I/O competes), never below the minimum', () => {
    const c = new RateController(dynamic);
    for (let t = 0; t < 10; t++) {
      c.sample(20);
      c.tick(100);
    }
    c.sample(300);
    expect(c.tick(100)).toBeCloseTo(104 * MiB * BACKOFF_FACTOR);
    for (let t = 0; t < 50; t++) {
      c.sample(300);
      c.tick(100);
    }
    expect(c.bytesPerSec).toBe(4 * MiB);
  });

  it('dynamic: no answers in a tick leaves the rate alone', () => {
    const c = new RateController(dynamic);
    c.sample(10);
    const r = c.tick(100);
    expect(c.tick(100)).toBe(r);
  });
});
