import { describe, expect, it } from 'vitest';
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
} from '../../src/nbd/constants.js';
import type { ExportFeatures } from '../../src/nbd/export.js';
import { transmissionFlags } from '../../src/nbd/transmission-flags.js';

const none: ExportFeatures = {
  readOnly: false, canFlush: false, canFua: false, canTrim: false, canWriteZeroes: false,
  canFastZero: false, canCache: false, canMultiConn: false, rotational: false,
};

describe('transmissionFlags', () => {
  it('advertises HAS_FLAGS alone for an export that can do nothing extra', () => {
    expect(transmissionFlags(none, false)).toBe(NBD_FLAG_HAS_FLAGS);
  });

  it('DF only with structured replies', () => {
    expect(transmissionFlags(none, true) & NBD_FLAG_SEND_DF).toBe(NBD_FLAG_SEND_DF);
  });

  it('FAST_ZERO only with WRITE_ZEROES; no write-type commands on a read-only export', () => {
    expect(transmissionFlags({ ...none, canFastZero: true }, false) & NBD_FLAG_SEND_FAST_ZERO).toBe(0);
    const rw = transmissionFlags({ ...none, canWriteZeroes: true, canFastZero: true, canTrim: true }, false);
    expect(rw & (NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO | NBD_FLAG_SEND_TRIM)).toBe(NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO | NBD_FLAG_SEND_TRIM);
    const ro = transmissionFlags({ ...none, readOnly: true, canWriteZeroes: true, canFastZero: true, canTrim: true, canFlush: true }, false);
    expect(ro & (NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO | NBD_FLAG_SEND_TRIM)).toBe(0);
    expect(ro & (NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH)).toBe(NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH);
  });

  it('CAN_MULTI_CONN follows the export', () => {
    expect(transmissionFlags({ ...none, canMultiConn: true }, false) & NBD_FLAG_CAN_MULTI_CONN).toBe(NBD_FLAG_CAN_MULTI_CONN);
  });
});
