import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { deviceNumbers, diskCounterFor, scatteredCopyCost, sectorsWritten } from '../../bench/disk-stats.js';

describe('bench disk statistics', () => {
  it('splits a Linux dev_t into major and minor as glibc does, small and large numbers', () => {
    // makedev(254, 1) and makedev(259, 65536 + 3): the large form spreads both over the high bits
    expect(deviceNumbers((254 << 8) | 1)).toEqual({ major: 254, minor: 1 });
    const big = (BigInt(259 & 0xfff) << 8n) | (BigInt(259 & ~0xfff) << 32n) | BigInt((65539 & 0xff) | 0) | (BigInt(65539 & ~0xff) << 12n);
    expect(deviceNumbers(Number(big))).toEqual({ major: 259, minor: 65539 });
  });

  it('reads sectors written from a block stat line, and refuses a line without it', () => {
    const line = '   45730     8131  3893620    21346   203110   119433 24653912   345612        0   172456   367584        0        0        0        0';
    expect(sectorsWritten(line)).toBe(24653912);
    expect(() => sectorsWritten('1 2 3')).toThrow(/sectors-written/);
  });

  it('finds the counter of the device under a real directory (or says there is none) and it never goes down', async () => {
    const counter = await diskCounterFor(tmpdir());
    if (counter === undefined) {
      // tmpfs or overlay: no block device to read; nothing more to check
      expect(statSync(tmpdir()).isDirectory()).toBe(true);
      return;
    }
    expect(counter.device).toMatch(/^\d+:\d+$/);
    const a = await counter.written();
    const b = await counter.written();
    expect(b).toBeGreaterThanOrEqual(a);
    expect(a % 512).toBe(0);
  });

  it('copies exactly the named blocks from one file to the other and times each step', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mirrorbd-disk-stats-'));
    try {
      const block = 4096;
      const source = Buffer.alloc(16 * block);
      for (let i = 0; i < 16; i++) source.fill(i + 1, i * block, (i + 1) * block);
      writeFileSync(join(dir, 'a'), source);
      writeFileSync(join(dir, 'b'), Buffer.alloc(16 * block));
      const cost = scatteredCopyCost(join(dir, 'a'), join(dir, 'b'), [3 * block, 7 * block, 15 * block], block);
      const target = readFileSync(join(dir, 'b'));
      for (let i = 0; i < 16; i++) {
        const want = [3, 7, 15].includes(i) ? i + 1 : 0;
        expect(target.subarray(i * block, (i + 1) * block).every((b) => b === want)).toBe(true);
      }
      for (const ms of [cost.readMs, cost.writeMs, cost.flushMs]) expect(ms).toBeGreaterThanOrEqual(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
