/**
 * Fuzz target: the metadata superblock reader (src/meta/superblock.ts,
 * decodeSuperblock).
 *
 * Valid superblocks (internal and external, device sizes from the smallest
 * to 2^50, 1..31 bitmap slots, peer slots in use) are mutated field by field
 * (boundary u32 and u64 values, 2^53 and 2^64 - 1 in the u64 fields, peer
 * slots, reserved bytes) and byte by byte, and usually get a fresh crc so the
 * mutation reaches the field checks. Oracles:
 * - decodeSuperblock returns a Superblock or throws MirrorError with code
 *   ERR_MD_MISSING or ERR_MD_CORRUPT; a corrupt error names a byte inside
 *   the superblock;
 * - whatever it accepts, encodeSuperblock writes back byte for byte, and its
 *   layout is one the metadata can hold (areas in order, within the device).
 */
import CRC32 from 'crc-32';
import { MirrorError } from '../../src/errors.js';
import { KNOWN_MD_FLAGS, KNOWN_PEER_FLAGS } from '../../src/meta/flags.js';
import { MAX_PEERS, SUPERBLOCK_BYTES, alignDown, computeLayout } from '../../src/meta/layout.js';
import {
  MAX_AL_EXTENTS,
  MIN_AL_EXTENTS,
  PEER_SLOT_BYTES,
  SB_FIELDS,
  decodeSuperblock,
  encodeSuperblock,
  freshSuperblock,
  layoutOf,
  type Superblock,
} from '../../src/meta/superblock.js';
import { InvariantError, check, interestingU32, mutateBytes, runInputs, show, showBytes, type FuzzBudget, type FuzzCounts, type Rng } from './fuzz-kit.js';

const U64_FIELDS = ['dataSizeBytes', 'deviceSizeBytes', 'mdSizeBytes', 'alOffset', 'bitmapOffset', 'currentUuid', 'historyUuid0', 'historyUuid1', 'generation', 'bitmapBytesPerPeer'] as const;
const U32_FIELDS = ['version', 'nodeId', 'flags', 'maxPeers', 'alSizeBytes', 'alExtents', 'bitmapBytesPerBit', 'placement', 'peerCount'] as const;
const INTERESTING_U64 = [0n, 1n, 4095n, 4096n, 2n ** 32n, 2n ** 53n - 4096n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n];

function validSuperblock(rng: Rng): { sb: Superblock; offset: number } {
  const internal = rng.chance(0.6);
  const maxPeers = rng.chance(0.7) ? rng.range(1, 3) : rng.range(1, MAX_PEERS);
  const deviceSizeBytes = rng.pick([64 * 1024 * 1024, 2 ** 40, 2 ** 50, 8 * 1024 * 1024 + rng.int(2 ** 30)]);
  const layout = computeLayout({ deviceSizeBytes, internal, maxPeers, metaDeviceSizeBytes: internal ? undefined : 2 ** 52 });
  const nodeId = rng.int(32);
  const sb = freshSuperblock({ layout, internal, deviceSizeBytes: internal ? deviceSizeBytes : rng.pick([deviceSizeBytes, deviceSizeBytes + 4096 * rng.int(1000)]), nodeId, maxPeers, alExtents: rng.range(MIN_AL_EXTENTS, MAX_AL_EXTENTS) });
  sb.flags = rng.int(KNOWN_MD_FLAGS + 1);
  sb.currentUuid = (BigInt(rng.u32()) << 32n) | BigInt(rng.u32());
  sb.historyUuids = [BigInt(rng.u32()), 2n ** 64n - 1n];
  sb.generation = rng.pick([1, 2 ** 32, 2 ** 53 - 1]);
  const others = Array.from({ length: 32 }, (_, i) => i).filter((i) => i !== nodeId);
  const count = rng.int(maxPeers + 1);
  for (let i = 0; i < count; i++) {
    const id = others.splice(rng.int(others.length), 1)[0]!;
    sb.peers.push({ nodeId: id, flags: rng.int(KNOWN_PEER_FLAGS + 1), bitmapUuid: BigInt(rng.u32()) });
  }
  return { sb, offset: internal ? alignDown(deviceSizeBytes) - SUPERBLOCK_BYTES : 0 };
}

function fixCrc(b: Buffer): void {
  b.writeUInt32BE(CRC32.buf(b.subarray(0, SB_FIELDS.crc)) >>> 0, SB_FIELDS.crc);
}

function mutate(rng: Rng, image: Buffer): Buffer {
  let b = Buffer.from(image);
  const edits = 1 + rng.int(3);
  for (let e = 0; e < edits; e++) {
    switch (rng.int(6)) {
      case 0:
        b.writeBigUInt64BE(rng.pick(INTERESTING_U64), SB_FIELDS[rng.pick(U64_FIELDS)]);
        break;
      case 1:
        b.writeUInt32BE(interestingU32(rng), SB_FIELDS[rng.pick(U32_FIELDS)]);
        break;
      case 2: {
        // A field nudged by a little: the off-by-one checks.
        const f = SB_FIELDS[rng.pick(U64_FIELDS)];
        const v = b.readBigUInt64BE(f) + BigInt(rng.pick([-4096, -1, 1, 4096]));
        if (v >= 0n && v < 2n ** 64n) b.writeBigUInt64BE(v, f);
        break;
      }
      case 3: {
        // A peer slot: node id, flags or reserved bytes.
        const slot = SB_FIELDS.peers + rng.int(MAX_PEERS) * PEER_SLOT_BYTES;
        b.writeUInt32BE(rng.chance(0.5) ? rng.int(40) : interestingU32(rng), slot + rng.pick([0, 4, 16, 20, 28]));
        break;
      }
      case 4:
        b[rng.int(SUPERBLOCK_BYTES)] ^= 1 << rng.int(8);
        break;
      default: {
        const m = mutateBytes(rng, b, 2);
        b = Buffer.alloc(SUPERBLOCK_BYTES);
        m.copy(b, 0, 0, Math.min(m.length, SUPERBLOCK_BYTES));
      }
    }
  }
  if (rng.chance(0.85)) fixCrc(b);
  return b;
}

export function fuzzSuperblock(seed: number, budget: FuzzBudget): FuzzCounts {
  return runInputs('meta-superblock', seed, budget, (rng, _i, record) => {
    const { sb, offset: realOffset } = validSuperblock(rng);
    const image = encodeSuperblock(sb, realOffset);
    const r = rng.int(20);
    const input = r === 0 ? Buffer.alloc(SUPERBLOCK_BYTES) : r === 1 ? rng.bytes(SUPERBLOCK_BYTES) : r === 2 ? image : mutate(rng, image);
    const offset = rng.chance(0.9) ? realOffset : rng.pick([0, realOffset + 4096, realOffset - 4096, 2 ** 53 - 4096]);
    record(() => `superblock at ${offset}, ${showBytes(input, 160)}`);
    let got: Superblock;
    try {
      got = decodeSuperblock(input, offset);
    } catch (e) {
      check(e instanceof MirrorError && (e.code === 'ERR_MD_MISSING' || e.code === 'ERR_MD_CORRUPT'), () => `threw ${e instanceof Error ? `${e.name} ${(e as { code?: string }).code ?? ''}: ${e.message}` : String(e)}`);
      if (e.code === 'ERR_MD_CORRUPT') {
        const at = e.details.offset as number;
        check(at >= offset && at < offset + SUPERBLOCK_BYTES, `corrupt error names byte ${at}, outside the superblock at ${offset}`);
      }
      return 'rejected';
    }
    let again: Buffer;
    try {
      again = encodeSuperblock(got, offset);
    } catch (e) {
      throw new InvariantError(`an accepted superblock does not encode: ${e instanceof Error ? e.message : String(e)}; decoded ${show(got)}`);
    }
    check(again.equals(input), () => `accepted superblock re-encodes differently; decoded ${show(got)}`);
    const layout = layoutOf(got);
    check(layout.alOffset + layout.alSizeBytes === layout.bitmapOffset, 'activity log does not end where the bitmap starts');
    check(got.peers.length <= got.maxPeers && new Set(got.peers.map((p) => p.nodeId)).size === got.peers.length, 'peer slots beyond maxPeers or repeated');
    check(got.peers.every((p) => p.nodeId !== got.nodeId), 'a peer slot names this node');
    if (got.internal) check(layout.bitmapOffset + layout.bitmapBytes === layout.superblockOffset && layout.alOffset === got.dataSizeBytes, `internal layout out of order ${show(layout)}`);
    else check(got.dataSizeBytes <= got.deviceSizeBytes, 'data beyond the device');
    return 'accepted';
  });
}
