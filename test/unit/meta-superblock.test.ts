import CRC32 from 'crc-32';
import { describe, expect, test } from 'vitest';
import { MirrorError } from '../../src/errors.js';
import { MD_FLAGS, PEER_FLAGS } from '../../src/meta/flags.js';
import { computeLayout } from '../../src/meta/layout.js';
import {
  PEER_SLOT_BYTES,
  SB_FIELDS,
  decodeSuperblock,
  encodeSuperblock,
  freshSuperblock,
  layoutOf,
  type Superblock,
} from '../../src/meta/superblock.js';

const GiB = 1024 ** 3;
const DEVICE = 10 * GiB + 12345;

function sample(): { sb: Superblock; offset: number } {
  const layout = computeLayout({ deviceSizeBytes: DEVICE, internal: true, maxPeers: 3 });
  const sb = freshSuperblock({ layout, internal: true, deviceSizeBytes: DEVICE, nodeId: 2, maxPeers: 3, alExtents: 1237 });
  sb.flags = MD_FLAGS.CONSISTENT | MD_FLAGS.WAS_UP_TO_DATE | MD_FLAGS.AL_CLEAN;
  sb.currentUuid = 0xfedcba9876543210n;
  sb.historyUuids = [0x1111222233334444n, 0x5555666677778888n];
  sb.generation = 42;
  sb.peers = [
    { nodeId: 0, flags: PEER_FLAGS.PEER_OUTDATED, bitmapUuid: 0x0123456789abcdefn },
    { nodeId: 5, flags: PEER_FLAGS.PEER_FULL_SYNC | PEER_FLAGS.PEER_DEVICE_SEEN, bitmapUuid: 0n },
  ];
  return { sb, offset: layout.superblockOffset };
}

function refix(buf: Buffer): void {
  buf.writeUInt32BE(CRC32.buf(buf.subarray(0, SB_FIELDS.crc)) >>> 0, SB_FIELDS.crc);
}

function corruptError(buf: Buffer, offset: number): MirrorError {
  try {
    decodeSuperblock(buf, offset);
  } catch (e) {
    expect(e).toBeInstanceOf(MirrorError);
    expect((e as MirrorError).code).toBe('ERR_MD_CORRUPT');
    return e as MirrorError;
  }
  throw new Error('decode accepted a corrupt superblock');
}

test('round trip keeps every field, and the magic is ASCII MIRRORBD', () => {
  const { sb, offset } = sample();
  const buf = encodeSuperblock(sb, offset);
  expect(buf.length).toBe(4096);
  expect(buf.subarray(0, 8).toString('ascii')).toBe('MIRRORBD');
  expect(buf.readUInt32BE(8)).toBe(1);
  expect(decodeSuperblock(buf, offset)).toEqual(sb);
  expect(layoutOf(sb)).toEqual(computeLayout({ deviceSizeBytes: DEVICE, internal: true, maxPeers: 3 }));
});

test('fields are big-endian at their documented offsets', () => {
  const { sb, offset } = sample();
  const buf = encodeSuperblock(sb, offset);
  expect(buf.readUInt32BE(SB_FIELDS.nodeId)).toBe(2);
  expect(buf.readBigUInt64BE(SB_FIELDS.currentUuid)).toBe(0xfedcba9876543210n);
  expect(buf.readBigUInt64BE(SB_FIELDS.deviceSizeBytes)).toBe(BigInt(DEVICE));
  expect(buf.readUInt32BE(SB_FIELDS.peers + PEER_SLOT_BYTES)).toBe(5);
  expect(buf.readBigUInt64BE(SB_FIELDS.peers + 8)).toBe(0x0123456789abcdefn);
});

test('external superblock round trip', () => {
  const layout = computeLayout({ deviceSizeBytes: GiB, metaDeviceSizeBytes: GiB, internal: false, maxPeers: 1 });
  const sb = freshSuperblock({ layout, internal: false, deviceSizeBytes: GiB, nodeId: 0, maxPeers: 1, alExtents: 7 });
  expect(decodeSuperblock(encodeSuperblock(sb, 0), 0)).toEqual(sb);
});

describe('missing metadata', () => {
  test('all zeroes', () => {
    expect(() => decodeSuperblock(Buffer.alloc(4096), 8192)).toThrow(expect.objectContaining({ code: 'ERR_MD_MISSING', details: expect.objectContaining({ offset: 8192, allZero: true }) }));
  });
  test('other data without the magic', () => {
    const buf = Buffer.alloc(4096, 0x5a);
    expect(() => decodeSuperblock(buf, 0)).toThrow(expect.objectContaining({ code: 'ERR_MD_MISSING' }));
    const { sb, offset } = sample();
    const good = encodeSuperblock(sb, offset);
    good[3] ^= 0x20;
    expect(() => decodeSuperblock(good, offset)).toThrow(expect.objectContaining({ code: 'ERR_MD_MISSING' }));
  });
});

describe('corruption', () => {
  test('a flipped byte in any field after the magic is a crc mismatch at the crc field', () => {
    const { sb, offset } = sample();
    const good = encodeSuperblock(sb, offset);
    const fieldOffsets = Object.entries(SB_FIELDS).filter(([name]) => name !== 'magic' && name !== 'crc');
    for (const [name, at] of [...fieldOffsets, ['peer slot 1', SB_FIELDS.peers + PEER_SLOT_BYTES + 9] as const, ['tail', 4000] as const]) {
      const buf = Buffer.from(good);
      buf[at as number]! ^= 0x01;
      const e = corruptError(buf, offset);
      expect(e.details.offset, name).toBe(offset + SB_FIELDS.crc);
      expect(e.message).toContain('crc32 mismatch');
      expect(e.message).toContain(`byte ${offset + SB_FIELDS.crc}`);
    }
    const buf = Buffer.from(good);
    buf[SB_FIELDS.crc + 2]! ^= 0xff;
    expect(corruptError(buf, offset).details.field).toBe('crc');
  });

  // Impossible values with a correct crc: each is named at its own offset.
  const cases: Array<[string, (b: Buffer) => void, number]> = [
    ['unknown version', (b) => b.writeUInt32BE(2, SB_FIELDS.version), SB_FIELDS.version],
    ['node-id 32', (b) => b.writeUInt32BE(32, SB_FIELDS.nodeId), SB_FIELDS.nodeId],
    ['unknown flag', (b) => b.writeUInt32BE(0x100, SB_FIELDS.flags), SB_FIELDS.flags],
    ['max-peers 0', (b) => b.writeUInt32BE(0, SB_FIELDS.maxPeers), SB_FIELDS.maxPeers],
    ['data size not aligned', (b) => b.writeBigUInt64BE(b.readBigUInt64BE(SB_FIELDS.dataSizeBytes) + 1n, SB_FIELDS.dataSizeBytes), SB_FIELDS.dataSizeBytes],
    ['device size elsewhere', (b) => b.writeBigUInt64BE(1n << 40n, SB_FIELDS.deviceSizeBytes), SB_FIELDS.deviceSizeBytes],
    ['md size', (b) => b.writeBigUInt64BE(4096n, SB_FIELDS.mdSizeBytes), SB_FIELDS.mdSizeBytes],
    ['al offset', (b) => b.writeBigUInt64BE(b.readBigUInt64BE(SB_FIELDS.alOffset) + 4096n, SB_FIELDS.alOffset), SB_FIELDS.alOffset],
    ['al size', (b) => b.writeUInt32BE(100, SB_FIELDS.alSizeBytes), SB_FIELDS.alSizeBytes],
    ['al extents', (b) => b.writeUInt32BE(3, SB_FIELDS.alExtents), SB_FIELDS.alExtents],
    ['bitmap offset', (b) => b.writeBigUInt64BE(b.readBigUInt64BE(SB_FIELDS.bitmapOffset) - 4096n, SB_FIELDS.bitmapOffset), SB_FIELDS.bitmapOffset],
    ['bytes per bit', (b) => b.writeUInt32BE(512, SB_FIELDS.bitmapBytesPerBit), SB_FIELDS.bitmapBytesPerBit],
    ['placement', (b) => b.writeUInt32BE(7, SB_FIELDS.placement), SB_FIELDS.placement],
    ['generation beyond 2^53', (b) => b.writeBigUInt64BE(1n << 60n, SB_FIELDS.generation), SB_FIELDS.generation],
    ['bitmap too small', (b) => b.writeBigUInt64BE(4096n, SB_FIELDS.bitmapBytesPerPeer), SB_FIELDS.bitmapBytesPerPeer],
    ['peer count > max peers', (b) => b.writeUInt32BE(4, SB_FIELDS.peerCount), SB_FIELDS.peerCount],
    ['reserved byte', (b) => (b[SB_FIELDS.reserved + 1] = 1), SB_FIELDS.reserved + 1],
    ['peer is this node', (b) => b.writeUInt32BE(2, SB_FIELDS.peers + PEER_SLOT_BYTES), SB_FIELDS.peers + PEER_SLOT_BYTES],
    ['peer repeats a node', (b) => b.writeUInt32BE(0, SB_FIELDS.peers + PEER_SLOT_BYTES), SB_FIELDS.peers + PEER_SLOT_BYTES],
    ['unknown peer flag', (b) => b.writeUInt32BE(0x80, SB_FIELDS.peers + 4), SB_FIELDS.peers + 4],
    ['unused slot not zero', (b) => (b[SB_FIELDS.peers + 2 * PEER_SLOT_BYTES + 9] = 1), SB_FIELDS.peers + 2 * PEER_SLOT_BYTES + 9],
    ['tail not zero', (b) => (b[3000] = 7), 3000],
  ];
  test.each(cases)('%s: named at its offset', (_name, damage, fieldOffset) => {
    const { sb, offset } = sample();
    const buf = encodeSuperblock(sb, offset);
    damage(buf);
    refix(buf);
    const e = corruptError(buf, offset);
    expect(e.details.offset).toBe(offset + fieldOffset);
    expect(e.message).toContain(`corrupt metadata at byte ${offset + fieldOffset}`);
    expect(e.details.superblockOffset).toBe(offset);
  });

  test('unknown version is reported as such (not as a crc problem)', () => {
    const { sb, offset } = sample();
    const buf = encodeSuperblock(sb, offset);
    buf.writeUInt32BE(9, SB_FIELDS.version);
    refix(buf);
    expect(corruptError(buf, offset).message).toContain('unknown metadata version 9');
  });

  test('a superblock read at another offset than its own is refused', () => {
    const { sb, offset } = sample();
    expect(corruptError(encodeSuperblock(sb, offset), offset - 4096).details.field).toBe('deviceSizeBytes');
  });
});

test('the encoder refuses what the decoder would refuse', () => {
  const { sb, offset } = sample();
  expect(() => encodeSuperblock({ ...sb, nodeId: 40 }, offset)).toThrow(RangeError);
  expect(() => encodeSuperblock({ ...sb, peers: [{ nodeId: 2, flags: 0, bitmapUuid: 0n }] }, offset)).toThrow(RangeError);
  expect(() => encodeSuperblock({ ...sb, currentUuid: 1n << 64n }, offset)).toThrow(RangeError);
  expect(() => encodeSuperblock({ ...sb, alExtents: 1 }, offset)).toThrow(RangeError);
});
