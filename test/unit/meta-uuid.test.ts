import { expect, test } from 'vitest';
import { clearBitmapUuid, formatUuid, newGeneration, newUuid, parseUuid, rotateHistory } from '../../src/meta/uuid.js';

test('new UUIDs are nonzero 64-bit values and differ', () => {
  const seen = new Set<bigint>();
  for (let i = 0; i < 1000; i++) {
    const u = newUuid();
    expect(u).toBeGreaterThan(0n);
    expect(u).toBeLessThan(1n << 64n);
    seen.add(u);
  }
  expect(seen.size).toBe(1000);
});

test('formatUuid prints 16 hex digits and parseUuid reads them back', () => {
  expect(formatUuid(0n)).toBe('0000000000000000');
  expect(formatUuid(0xabcn)).toBe('0000000000000ABC');
  expect(formatUuid((1n << 64n) - 1n)).toBe('FFFFFFFFFFFFFFFF');
  expect(parseUuid('00000000deadbeef')).toBe(0xdeadbeefn);
  const u = newUuid();
  expect(parseUuid(formatUuid(u))).toBe(u);
  expect(() => formatUuid(1n << 64n)).toThrow(RangeError);
  expect(() => parseUuid('xyz')).toThrow(RangeError);
});

test('rotateHistory pushes the retired UUID to the front and drops the oldest; 0 retires nothing', () => {
  expect(rotateHistory([2n, 1n], 3n)).toEqual([3n, 2n]);
  expect(rotateHistory([2n, 1n], 0n)).toEqual([2n, 1n]);
});

test('a new generation with a peer away: the old current becomes that peer\'s bitmap UUID, and goes to history too', () => {
  const set = { current: 10n, bitmap: [0n, 0n], history: [5n, 4n] as const };
  const next = newGeneration(set, [1], 11n);
  expect(next).toEqual({ current: 11n, bitmap: [0n, 10n], history: [10n, 5n] });
  // Away again before a resync: the bitmap keeps counting from the older generation; 11 goes to history.
  expect(newGeneration(next, [1], 12n)).toEqual({ current: 12n, bitmap: [0n, 10n], history: [11n, 10n] });
  // A second peer lost later counts from the generation in between, which history keeps.
  expect(newGeneration(next, [0], 12n)).toEqual({ current: 12n, bitmap: [11n, 10n], history: [11n, 10n] });
});

test('a new generation with nobody away retires the old current to history; from 0 nothing is retired', () => {
  expect(newGeneration({ current: 10n, bitmap: [0n], history: [5n, 4n] }, [], 11n)).toEqual({ current: 11n, bitmap: [0n], history: [10n, 5n] });
  expect(newGeneration({ current: 0n, bitmap: [0n], history: [0n, 0n] }, [0], 11n)).toEqual({ current: 11n, bitmap: [0n], history: [0n, 0n] });
});

test('a clean bitmap retires its UUID to history', () => {
  expect(clearBitmapUuid({ current: 11n, bitmap: [0n, 10n], history: [5n, 4n] }, 1)).toEqual({ current: 11n, bitmap: [0n, 0n], history: [10n, 5n] });
});
