import { describe, expect, it } from 'vitest';
import { blockStatusDescriptors } from '../../src/nbd/block-status.js';
import type { Extent } from '../../src/nbd/export.js';

const data = (offset: number, length: number): Extent => ({ offset, length, hole: false, zero: false });
const hole = (offset: number, length: number): Extent => ({ offset, length, hole: true, zero: true });

describe('blockStatusDescriptors', () => {
  it('clips to the request at both ends and maps hole/zero to status bits', () => {
    const r = blockStatusDescriptors([hole(0, 8192), data(8192, 8192)], 4096, 8192, false, 100);
    expect(r).toEqual({ lengths: [4096, 4096], statuses: [3, 0] });
  });

  it('merges neighbours with the same status', () => {
    expect(blockStatusDescriptors([data(0, 512), data(512, 512), hole(1024, 512)], 0, 1536, false, 100)).toEqual({ lengths: [1024, 512], statuses: [0, 3] });
  });

  it('REQ_ONE keeps only the first (merged) descriptor', () => {
    expect(blockStatusDescriptors([data(0, 512), data(512, 512), hole(1024, 512)], 0, 1536, true, 100)).toEqual({ lengths: [1024], statuses: [0] });
  });

  it('stops at a gap and at the descriptor limit', () => {
    expect(blockStatusDescriptors([data(0, 512), hole(1024, 512)], 0, 1536, false, 100)).toEqual({ lengths: [512], statuses: [0] });
    const alternating = Array.from({ length: 10 }, (_, i) => (i % 2 ? hole(i * 512, 512) : data(i * 512, 512)));
    expect(blockStatusDescriptors(alternating, 0, 5120, false, 4).lengths).toHaveLength(4);
  });

  it('nothing usable: empty (the caller answers EIO)', () => {
    expect(blockStatusDescriptors([], 0, 512, false, 100).lengths).toHaveLength(0);
    expect(blockStatusDescriptors([data(512, 512)], 0, 1024, false, 100).lengths).toHaveLength(0);
  });
});
