/**
 * Overlapping writes must land in the same order on every node (DESIGN, the
 * write path, step 4), and a resync block must never overwrite newer data.
 * Both come down to one rule: operations on overlapping byte ranges run one
 * after another, in the order they were queued; operations on disjoint
 * ranges run concurrently.
 *
 * `acquire` queues a range and resolves when every earlier overlapping entry
 * has released; the caller releases when its operation is done. The number
 * of entries is bounded by the I/O in flight (a few hundred), so a linear
 * scan per acquire is cheaper than an interval tree.
 */
import assert from 'node:assert/strict';

interface Entry {
  start: number;
  end: number;
  /** Earlier overlapping entries not yet released. */
  blockers: number;
  /** Later entries waiting for this one. */
  dependents: Entry[];
  grant: (() => void) | null;
  released: boolean;
}

export type Release = () => void;

/** The entry and [start, end) share at least one byte. */
function overlap(e: Entry, start: number, end: number): boolean {
  return e.start < end && start < e.end;
}

export class RangeLock {
  private readonly entries = new Set<Entry>();

  /** Entries held or waiting. */
  get size(): number {
    return this.entries.size;
  }

  /**
   * Nothing overlapping [offset, offset+length) is held or waiting: an
   * operation that completes before the caller returns (a synchronous
   * write) may run now without an entry, in order with every other.
   */
  isFree(offset: number, length: number): boolean {
    const end = offset + length;
    if (length > 0) for (const other of this.entries) if (overlap(other, offset, end)) return false;
    return true;
  }

  /**
   * Queue [offset, offset+length). A zero-length range conflicts with
   * nothing. The promise resolves with the release function.
   */
  acquire(offset: number, length: number): Promise<Release> {
    const entry: Entry = { start: offset, end: offset + length, blockers: 0, dependents: [], grant: null, released: false };
    if (length > 0) {
      for (const other of this.entries) {
        if (overlap(other, entry.start, entry.end)) {
          other.dependents.push(entry);
          entry.blockers++;
        }
      }
    }
    this.entries.add(entry);
    const release = (): void => this.release(entry);
    if (entry.blockers === 0) return Promise.resolve(release);
    return new Promise((resolve) => {
      entry.grant = () => resolve(release);
    });
  }

  private release(entry: Entry): void {
    if (entry.released) return;
    assert.equal(entry.blockers, 0, 'a range was released before it was granted');
    entry.released = true;
    this.entries.delete(entry);
    for (const d of entry.dependents) {
      d.blockers--;
      assert.ok(d.blockers >= 0);
      if (d.blockers === 0 && d.grant !== null) {
        const grant = d.grant;
        d.grant = null;
        grant();
      }
    }
    entry.dependents = [];
  }
}
