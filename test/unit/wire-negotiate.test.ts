import { describe, expect, it } from 'vitest';
import { FEATURES, PARAMS_FLAGS } from '../../src/replication/wire/constants.js';
import { agreeSizes, negotiateFeatures, negotiateVersion, paramsMismatch } from '../../src/replication/wire/negotiate.js';

describe('peer negotiation', () => {
  it('settles on the highest common version, or none', () => {
    expect(negotiateVersion({ protocolMin: 1, protocolMax: 3 }, { protocolMin: 2, protocolMax: 5 })).toBe(3);
    expect(negotiateVersion({ protocolMin: 1, protocolMax: 1 }, { protocolMin: 1, protocolMax: 1 })).toBe(1);
    expect(negotiateVersion({ protocolMin: 1, protocolMax: 2 }, { protocolMin: 3, protocolMax: 4 })).toBeNull();
  });

  it('features are the intersection; unknown bits drop out', () => {
    const ours = FEATURES.INTEGRITY_CRC32C | FEATURES.TRIM | FEATURES.ZEROES;
    const theirs = (FEATURES.TRIM | FEATURES.CSUM_RESYNC | 0x8000_0000) >>> 0;
    expect(negotiateFeatures(ours, theirs)).toBe(FEATURES.TRIM);
    expect(negotiateFeatures(0xffff_ffff, 0xffff_ffff)).toBe(0xffff_ffff);
  });

  it('PARAMS must agree', () => {
    const p = { protocol: 'C' as const, flags: 0, csumsAlg: 'sha256', verifyAlg: 'crc32c' };
    expect(paramsMismatch(p, { ...p })).toBeNull();
    expect(paramsMismatch(p, { ...p, flags: PARAMS_FLAGS.DISCARD_MY_DATA })).toBeNull();
    expect(paramsMismatch(p, { ...p, protocol: 'A' })).toMatch(/protocol differs/);
    expect(paramsMismatch(p, { ...p, csumsAlg: '' })).toMatch(/csums-alg differs/);
    expect(paramsMismatch(p, { ...p, verifyAlg: 'sha1' })).toMatch(/verify-alg differs/);
    const discard = { ...p, flags: PARAMS_FLAGS.DISCARD_MY_DATA };
    expect(paramsMismatch(discard, discard)).toMatch(/both sides/);
  });

  it('sizes: the smaller disk, ignoring a diskless side, and the smaller payload limit', () => {
    expect(agreeSizes({ dataSizeBytes: 1 << 30, maxPayloadBytes: 1 << 20 }, { dataSizeBytes: 1 << 29, maxPayloadBytes: 1 << 26 })).toEqual({ dataSizeBytes: 1 << 29, maxPayloadBytes: 1 << 20 });
    expect(agreeSizes({ dataSizeBytes: 1 << 30, maxPayloadBytes: 4096 }, { dataSizeBytes: 0, maxPayloadBytes: 8192 })).toEqual({ dataSizeBytes: 1 << 30, maxPayloadBytes: 4096 });
    expect(agreeSizes({ dataSizeBytes: 0, maxPayloadBytes: 4096 }, { dataSizeBytes: 0, maxPayloadBytes: 4096 }).dataSizeBytes).toBe(0);
  });
});
