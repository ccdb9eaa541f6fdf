import { describe, expect, test } from 'vitest';
import { isMirrorError } from '../../src/errors.js';
import { AL_BYTES, MIN_DATA_BYTES, SUPERBLOCK_BYTES, bitmapBytesFor, computeLayout } from '../../src/meta/layout.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

function tooSmall(fn: () => unknown): { needBytes: number; message: string } {
  try {
    fn();
  } catch (e) {
    if (isMirrorError(e) && e.code === 'ERR_MD_TOO_SMALL') return { needBytes: e.details.needBytes as number, message: e.message };
    throw e;
  }
  throw new Error('expected ERR_MD_TOO_SMALL');
}

describe('internal layout', () => {
  test('1 GiB, one peer: [data][al][bitmap][superblock] end to end', () => {
    const l = computeLayout({ deviceSizeBytes: GiB, internal: true, maxPeers: 1 });
    // 1 GiB / 4 KiB = 262144 bits = 32 KiB of bitmap.
    expect(l.bitmapBytesPerPeer).toBe(32 * KiB);
    expect(l.bitmapBytes).toBe(32 * KiB);
    expect(l.superblockOffset).toBe(GiB - 4 * KiB);
    expect(l.bitmapOffset).toBe(l.superblockOffset - 32 * KiB);
    expect(l.alOffset).toBe(l.bitmapOffset - AL_BYTES);
    expect(l.alSizeBytes).toBe(32 * KiB);
    expect(l.dataSizeBytes).toBe(l.alOffset);
    expect(l.dataSizeBytes).toBe(GiB - 68 * KiB);
    expect(l.mdSizeBytes).toBe(68 * KiB);
    expect(l.dataSizeBytes + l.mdSizeBytes).toBe(GiB);
  });

  test('an unaligned device puts the superblock in the last aligned 4 KiB', () => {
    const size = GiB + 4 * KiB + 1234;
    const l = computeLayout({ deviceSizeBytes: size, internal: true, maxPeers: 2 });
    expect(l.superblockOffset).toBe(GiB);
    expect(l.superblockOffset % 4096).toBe(0);
    expect(l.bitmapBytesPerPeer).toBe(bitmapBytesFor(GiB + 4 * KiB));
    expect(l.bitmapBytes).toBe(2 * l.bitmapBytesPerPeer);
    expect(l.dataSizeBytes % 4096).toBe(0);
    expect(l.alOffset + l.alSizeBytes).toBe(l.bitmapOffset);
    expect(l.bitmapOffset + l.bitmapBytes).toBe(l.superblockOffset);
    // the bitmap covers the data
    expect(l.bitmapBytesPerPeer * 8 * 4096).toBeGreaterThanOrEqual(l.dataSizeBytes);
  });

  test('bitmap slots are each rounded up to 4 KiB', () => {
    expect(bitmapBytesFor(4096)).toBe(4096);
    expect(bitmapBytesFor(128 * MiB)).toBe(4096);
    expect(bitmapBytesFor(128 * MiB + 4096)).toBe(8192);
    const l = computeLayout({ deviceSizeBytes: 200 * MiB, internal: true, maxPeers: 31 });
    expect(l.bitmapBytesPerPeer).toBe(8192);
    expect(l.bitmapBytes).toBe(31 * 8192);
  });

  test('the smallest device that fits leaves exactly 1 MiB of data; 4 KiB less is refused', () => {
    for (const maxPeers of [1, 3, 31]) {
      const { needBytes, message } = tooSmall(() => computeLayout({ deviceSizeBytes: 1000, internal: true, maxPeers }));
      expect(message).toContain(`${needBytes} bytes are needed`);
      const l = computeLayout({ deviceSizeBytes: needBytes, internal: true, maxPeers });
      expect(l.dataSizeBytes).toBe(MIN_DATA_BYTES);
      tooSmall(() => computeLayout({ deviceSizeBytes: needBytes - 4096, internal: true, maxPeers }));
      // an unaligned tail does not count
      tooSmall(() => computeLayout({ deviceSizeBytes: needBytes - 1, internal: true, maxPeers }));
    }
    expect(tooSmall(() => computeLayout({ deviceSizeBytes: 0, internal: true, maxPeers: 1 })).needBytes).toBe(
      MIN_DATA_BYTES + SUPERBLOCK_BYTES + AL_BYTES + 4096,
    );
  });
});

describe('external layout', () => {
  test('[superblock][al][bitmap] at 0; data is the whole disk rounded down', () => {
    const l = computeLayout({ deviceSizeBytes: GiB + 1000, metaDeviceSizeBytes: 16 * MiB, internal: false, maxPeers: 2 });
    expect(l.superblockOffset).toBe(0);
    expect(l.alOffset).toBe(4096);
    expect(l.bitmapOffset).toBe(4096 + 32 * KiB);
    expect(l.dataSizeBytes).toBe(GiB);
    expect(l.bitmapBytesPerPeer).toBe(32 * KiB);
    expect(l.mdSizeBytes).toBe(4096 + 32 * KiB + 64 * KiB);
  });

  test('a meta device exactly the metadata size fits; one byte less is refused', () => {
    const need = 4096 + 32 * KiB + 32 * KiB;
    expect(computeLayout({ deviceSizeBytes: GiB, metaDeviceSizeBytes: need, internal: false, maxPeers: 1 }).mdSizeBytes).toBe(need);
    const e = tooSmall(() => computeLayout({ deviceSizeBytes: GiB, metaDeviceSizeBytes: need - 1, internal: false, maxPeers: 1 }));
    expect(e.needBytes).toBe(need);
    expect(e.message).toContain('external meta device');
  });

  test('a data disk under 1 MiB is refused', () => {
    expect(computeLayout({ deviceSizeBytes: MiB, metaDeviceSizeBytes: MiB, internal: false, maxPeers: 1 }).dataSizeBytes).toBe(MiB);
    expect(tooSmall(() => computeLayout({ deviceSizeBytes: MiB - 1, metaDeviceSizeBytes: MiB, internal: false, maxPeers: 1 })).needBytes).toBe(MiB);
  });
});

test('bad arguments are programming errors', () => {
  expect(() => computeLayout({ deviceSizeBytes: GiB, internal: true, maxPeers: 0 })).toThrow(RangeError);
  expect(() => computeLayout({ deviceSizeBytes: GiB, internal: true, maxPeers: 32 })).toThrow(RangeError);
  expect(() => computeLayout({ deviceSizeBytes: -1, internal: true, maxPeers: 1 })).toThrow(RangeError);
  expect(() => computeLayout({ deviceSizeBytes: GiB, internal: false, maxPeers: 1 })).toThrow(RangeError);
});
