import { describe, expect, it } from 'vitest';
import { STAMP_BLOCK_BYTES, STAMP_MAGIC, decodeStamp, encodeStamp, type StampFields } from '../../src/check/stamp.js';
import { seededRandom } from '../helpers/seeded-random.js';

const base: StampFields = { logId: '0123456789abcdef', writer: 7, block: 4711, sequence: 42 };

describe('stamp codec', () => {
  it('decodes what it encodes, up to the largest exact numbers', () => {
    for (const f of [
      base,
      { logId: '0000000000000000', writer: 0, block: 0, sequence: 1 },
      { logId: 'ffffffffffffffff', writer: 0xffff_ffff, block: Number.MAX_SAFE_INTEGER, sequence: Number.MAX_SAFE_INTEGER },
      { ...base, block: 2 ** 40 + 3, sequence: 2 ** 33 + 5 },
    ]) {
      const b = encodeStamp(f);
      expect(b.length).toBe(STAMP_BLOCK_BYTES);
      expect(decodeStamp(b)).toEqual({ kind: 'stamp', ...f });
    }
  });

  it('writes into a caller buffer and gives two writes different bodies', () => {
    const out = Buffer.alloc(STAMP_BLOCK_BYTES);
    expect(encodeStamp(base, out)).toBe(out);
    const next = encodeStamp({ ...base, sequence: 43 });
    // Beyond the header (44 bytes) nearly every byte differs.
    let same = 0;
    for (let i = 44; i < STAMP_BLOCK_BYTES; i++) if (out[i] === next[i]) same++;
    expect(same).toBeLessThan(100);
  });

  it('refuses fields it cannot write exactly', () => {
    expect(() => encodeStamp({ ...base, logId: 'xyz' })).toThrow(RangeError);
    expect(() => encodeStamp({ ...base, writer: -1 })).toThrow(RangeError);
    expect(() => encodeStamp({ ...base, block: 1.5 })).toThrow(RangeError);
    expect(() => encodeStamp({ ...base, sequence: 2 ** 53 })).toThrow(RangeError);
    expect(() => encodeStamp(base, Buffer.alloc(512))).toThrow(RangeError);
  });

  it('an all-zero block was never written', () => {
    expect(decodeStamp(Buffer.alloc(STAMP_BLOCK_BYTES))).toEqual({ kind: 'zero' });
  });

  it('bytes without the magic are foreign, whatever they are', () => {
    const random = seededRandom(1);
    const junk = Buffer.alloc(STAMP_BLOCK_BYTES);
    for (let i = 0; i < junk.length; i++) junk[i] = Math.floor(random() * 256);
    expect(decodeStamp(junk)).toMatchObject({ kind: 'foreign', reason: expect.stringMatching(/no stamp/) });

    const oneByte = Buffer.alloc(STAMP_BLOCK_BYTES);
    oneByte[4095] = 1;
    expect(decodeStamp(oneByte).kind).toBe('foreign');

    const almostMagic = encodeStamp(base);
    almostMagic[7] ^= 0x20; // "MBDCHECk"
    expect(decodeStamp(almostMagic).kind).toBe('foreign');
  });

  it('a stamp of another format version is foreign', () => {
    const b = encodeStamp(base);
    b.writeUInt16BE(2, 8);
    expect(decodeStamp(b)).toMatchObject({ kind: 'foreign', reason: expect.stringMatching(/version 2/) });
  });

  it('any single flipped bit after the magic tears the stamp', () => {
    const good = encodeStamp(base);
    for (let byte = STAMP_MAGIC.length + 2; byte < STAMP_BLOCK_BYTES; byte += 97) {
      const b = Buffer.from(good);
      b[byte] ^= 0x10;
      const d = decodeStamp(b);
      expect(d.kind, `byte ${byte}`).toBe('torn');
    }
  });

  it('a damaged header field is torn, and says what it claims', () => {
    const b = encodeStamp(base);
    b.writeBigUInt64BE(4712n, 24); // the block number
    const d = decodeStamp(b);
    expect(d).toMatchObject({ kind: 'torn', claimed: { ...base, block: 4712 } });
    if (d.kind === 'torn') expect(d.reason).toMatch(/crc/);
  });

  it('half of one write and half of the next is torn, at every sector boundary', () => {
    const older = encodeStamp({ ...base, sequence: 10 });
    const newer = encodeStamp({ ...base, sequence: 11 });
    for (let cut = 512; cut < STAMP_BLOCK_BYTES; cut += 512) {
      const mixed = Buffer.concat([newer.subarray(0, cut), older.subarray(cut)]);
      expect(decodeStamp(mixed).kind, `cut at ${cut}`).toBe('torn');
      const reversed = Buffer.concat([older.subarray(0, cut), newer.subarray(cut)]);
      expect(decodeStamp(reversed).kind, `cut at ${cut}`).toBe('torn');
    }
  });

  it('a block cut short by zeros is torn', () => {
    const b = encodeStamp(base);
    b.fill(0, 2048);
    expect(decodeStamp(b).kind).toBe('torn');
  });

  it('refuses a buffer that is not one block', () => {
    expect(() => decodeStamp(Buffer.alloc(4095))).toThrow(RangeError);
  });
});
