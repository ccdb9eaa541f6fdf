import { describe, expect, it } from 'vitest';
import {
  NBD_EINVAL,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA,
} from '../../src/nbd/constants.js';
import {
  ReplyMode,
  blockStatusPayloadSize,
  chunkHeaderSize,
  errorMessageBytes,
  parseReplyHeader,
  writeBlockStatusPayload,
  writeChunkHeader,
  writeErrorPayload,
  writeOffset,
  writeSimpleReply,
} from '../../src/nbd/reply-codec.js';

describe('reply codec', () => {
  it('simple reply: magic, error, cookie verbatim', () => {
    const b = Buffer.alloc(20, 0xff);
    expect(writeSimpleReply(b, 2, 22, 0xdeadbeef, 0x01020304)).toBe(16);
    expect(b.subarray(2, 18).toString('hex')).toBe('67446698' + '00000016' + 'deadbeef01020304');
    expect(b[0]).toBe(0xff);
    expect(b[18]).toBe(0xff);
    expect(parseReplyHeader(b.subarray(2))).toEqual({ kind: 'simple', size: 16, error: 22, cookie: 0xdeadbeef01020304n });
  });

  it('structured chunk header', () => {
    const b = Buffer.alloc(20);
    expect(writeChunkHeader(ReplyMode.Structured, b, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 1, 2, 99, 99, 4104)).toBe(20);
    expect(b.toString('hex')).toBe('668e33ef' + '0001' + '0001' + '0000000100000002' + '00001008');
    expect(chunkHeaderSize(ReplyMode.Structured)).toBe(20);
  });

  it('extended chunk header echoes the request offset and carries a 64-bit length', () => {
    const b = Buffer.alloc(32);
    expect(writeChunkHeader(ReplyMode.Extended, b, 0, 1, 6, 0, 7, 0x12, 0x34, 2 ** 33 + 1)).toBe(32);
    expect(b.toString('hex')).toBe('6e8a278c' + '0001' + '0006' + '0000000000000007' + '0000001200000034' + '0000000200000001');
    expect(parseReplyHeader(b)).toEqual({ kind: 'extended', size: 32, flags: 1, type: 6, cookie: 7n, offset: 0x1200000034n, length: 2 ** 33 + 1 });
  });

  it('parseReplyHeader waits for the whole header and rejects a bad magic', () => {
    const b = Buffer.alloc(32);
    writeChunkHeader(ReplyMode.Extended, b, 0, 1, 0, 0, 1, 0, 0, 0);
    for (let i = 0; i < 32; i++) expect(parseReplyHeader(b.subarray(0, i))).toBeNull();
    expect(() => parseReplyHeader(Buffer.alloc(32))).toThrow(/magic/);
  });

  it('error payload with and without offset', () => {
    const msg = errorMessageBytes('bad');
    const b = Buffer.alloc(32);
    expect(writeErrorPayload(b, 0, NBD_EINVAL, msg)).toBe(9);
    expect(b.subarray(0, 9).toString('hex')).toBe('00000016' + '0003' + '626164');
    expect(writeErrorPayload(b, 0, NBD_EINVAL, msg, 2 ** 40)).toBe(17);
    expect(b.readBigUInt64BE(9)).toBe(2n ** 40n);
    expect(NBD_REPLY_TYPE_ERROR).toBe(0x8001);
  });

  it('error messages are cut to 4096 bytes on a UTF-8 boundary', () => {
    expect(errorMessageBytes('€'.repeat(2000)).length).toBe(4095);
    expect(errorMessageBytes('€'.repeat(2000)).toString()).toBe('€'.repeat(1365));
  });

  it('OFFSET_DATA offset is a u64', () => {
    const b = Buffer.alloc(8);
    expect(writeOffset(b, 0, 2 ** 52 + 3)).toBe(8);
    expect(b.readBigUInt64BE(0)).toBe(2n ** 52n + 3n);
  });

  it('block status payloads, compact and extended', () => {
    const lengths = [4096, 2 ** 33];
    const statuses = [0, 3];
    const c = Buffer.alloc(blockStatusPayloadSize(false, 1));
    expect(writeBlockStatusPayload(c, 0, false, 1, lengths, statuses, 1)).toBe(12);
    expect(c.toString('hex')).toBe('00000001' + '00001000' + '00000000');
    const e = Buffer.alloc(blockStatusPayloadSize(true, 2));
    expect(writeBlockStatusPayload(e, 0, true, 1, lengths, statuses, 2)).toBe(40);
    expect(e.readUInt32BE(4)).toBe(2);
    expect(e.readBigUInt64BE(8)).toBe(4096n);
    expect(e.readBigUInt64BE(24)).toBe(2n ** 33n);
    expect(e.readBigUInt64BE(32)).toBe(3n);
  });
});
