import { describe, expect, it } from 'vitest';
import { FlushCoalescer } from '../../src/resource/flush-coalescer.js';

/** A flush we complete by hand, to see which callers share which flush. */
function manualFlushes(): { coalescer: FlushCoalescer; started: Array<() => void> } {
  const started: Array<() => void> = [];
  const coalescer = new FlushCoalescer(
    () =>
      new Promise<void>((resolve) => {
        started.push(resolve);
      }),
  );
  return { coalescer, started };
}

describe('flush coalescing', () => {
  it('a lone flush runs at once', async () => {
    const { coalescer, started } = manualFlushes();
    const p = coalescer.flush();
    expect(started).toHaveLength(1);
    started[0]();
    await p;
  });

  it('callers arriving during a flush share one later flush, never the running one', async () => {
    const { coalescer, started } = manualFlushes();
    const first = coalescer.flush();
    let laterDone = 0;
    const later = [coalescer.flush(), coalescer.flush(), coalescer.flush()].map((p) => p.then(() => laterDone++));
    expect(started).toHaveLength(1);
    started[0]();
    await first;
    await new Promise((r) => setImmediate(r));
    // the first flush finishing must not complete the later callers
    expect(laterDone).toBe(0);
    expect(started).toHaveLength(2);
    started[1]();
    await Promise.all(later);
    expect(laterDone).toBe(3);
    expect(started).toHaveLength(2);
  });

  it('a failing flush fails its callers and the next one still runs', async () => {
    let n = 0;
    const coalescer = new FlushCoalescer(async () => {
      n++;
      if (n === 1) throw Object.assign(new Error('EIO'), { errno: 'EIO' });
    });
    const a = coalescer.flush();
    const b = coalescer.flush();
    await expect(a).rejects.toThrow('EIO');
    await expect(b).resolves.toBeUndefined();
    expect(n).toBe(2);
  });
});
