/**
 * Fuzz target: the activity log transaction reader
 * (src/meta/al-transaction.ts, decodeAlTransaction), which recovery runs
 * over every block of the ring after a crash: torn, stale and foreign blocks
 * are normal input there.
 *
 * Valid transactions (every slot count from 1 to 65536, up to 64 updates,
 * context slices at the edges of the table) are mutated field by field and
 * byte by byte, and usually get a fresh crc32c so the mutation reaches the
 * field checks. Oracles:
 * - a 4 KiB block never makes it throw; it returns ok or a known reason;
 * - what it accepts is possible (updates name real slots, the context fits
 *   the table), encodeAlTransaction takes it, writes back the same header,
 *   updates and context bytes, and that decodes to the same transaction.
 */
import CRC32C from 'crc-32/crc32c.js';
import {
  AL_CONTEXT_SLOTS,
  AL_EMPTY,
  AL_MAX_UPDATES,
  AL_TX_BYTES,
  AL_TX_FIELDS,
  decodeAlTransaction,
  encodeAlTransaction,
  type AlTransaction,
} from '../../src/meta/al-transaction.js';
import { MAX_AL_EXTENTS } from '../../src/meta/superblock.js';
import { InvariantError, check, interestingU32, mutateBytes, runInputs, sameData, show, showBytes, type FuzzBudget, type FuzzCounts, type Rng } from './fuzz-kit.js';

const F = AL_TX_FIELDS;

function validTransaction(rng: Rng): AlTransaction {
  const slotCount = rng.pick([1, 7, AL_CONTEXT_SLOTS, AL_CONTEXT_SLOTS + 1, 1237, MAX_AL_EXTENTS, rng.range(1, MAX_AL_EXTENTS)]);
  const updates = Array.from({ length: rng.chance(0.1) ? AL_MAX_UPDATES : rng.length(AL_MAX_UPDATES) }, () => ({
    slot: rng.int(slotCount),
    extent: rng.chance(0.2) ? AL_EMPTY : rng.chance(0.5) ? rng.int(1000) : rng.u32(),
  }));
  const contextCount = Math.min(slotCount, rng.chance(0.3) ? AL_CONTEXT_SLOTS : rng.int(AL_CONTEXT_SLOTS + 1));
  const contextStart = rng.chance(0.3) ? slotCount - contextCount : rng.int(slotCount - contextCount + 1);
  const context = new Uint32Array(contextCount);
  for (let i = 0; i < contextCount; i++) context[i] = rng.chance(0.3) ? AL_EMPTY : rng.u32();
  return { number: rng.chance(0.2) ? 0xffffffff : rng.u32(), type: rng.chance(0.2) ? 'reset' : 'update', slotCount, updates, contextStart, context };
}

/** crc32c over the block with the crc field taken as zero (the format's rule). */
function fixCrc(b: Buffer): void {
  b.writeUInt32BE(0, F.crc);
  b.writeUInt32BE(CRC32C.buf(b) >>> 0, F.crc);
}

function mutate(rng: Rng, block: Buffer): Buffer {
  let b = Buffer.from(block);
  const edits = 1 + rng.int(3);
  for (let e = 0; e < edits; e++) {
    switch (rng.int(5)) {
      case 0:
        b.writeUInt16BE(interestingU32(rng) & 0xffff, rng.pick([F.type, F.updateCount, F.contextCount]));
        break;
      case 1:
        b.writeUInt32BE(interestingU32(rng), rng.pick([F.number, F.slotCount, F.contextStart]));
        break;
      case 2:
        b.writeUInt32BE(interestingU32(rng), F.updates + 8 * rng.int(AL_MAX_UPDATES) + rng.pick([0, 4]));
        break;
      case 3:
        b[rng.pick([F.reserved, F.reserved + 5, rng.int(AL_TX_BYTES)])] ^= 1 << rng.int(8);
        break;
      default: {
        const m = mutateBytes(rng, b, 2);
        b = Buffer.alloc(AL_TX_BYTES);
        m.copy(b, 0, 0, Math.min(m.length, AL_TX_BYTES));
      }
    }
  }
  if (rng.chance(0.85)) fixCrc(b);
  return b;
}

export function fuzzAlTransaction(seed: number, budget: FuzzBudget): FuzzCounts {
  return runInputs('meta-al-transaction', seed, budget, (rng, _i, record) => {
    const tx = validTransaction(rng);
    const image = encodeAlTransaction(tx);
    const r = rng.int(20);
    const input = r === 0 ? Buffer.alloc(AL_TX_BYTES) : r === 1 ? rng.bytes(AL_TX_BYTES) : r === 2 ? image : mutate(rng, image);
    // Recovery reads blocks out of a larger ring buffer: decode a view at an odd offset sometimes.
    const shift = rng.chance(0.3) ? 1 + rng.int(7) : 0;
    const holder = Buffer.alloc(AL_TX_BYTES + shift);
    input.copy(holder, shift);
    const block = holder.subarray(shift);
    record(() => `block (at +${shift}) ${showBytes(input, 80)}`);
    const got = decodeAlTransaction(block);
    if (r === 2) check(got.ok && sameData(got.tx, tx), () => `a freshly encoded transaction does not decode: ${show(got)}`);
    if (!got.ok) {
      check(['no-magic', 'crc', 'bad-field'].includes(got.reason), `unknown reason ${got.reason}`);
      return 'rejected';
    }
    const t = got.tx;
    check(t.updates.length <= AL_MAX_UPDATES && t.updates.every((u) => u.slot < t.slotCount), 'an update names a slot beyond the table');
    check(t.contextStart + t.context.length <= t.slotCount && t.context.length <= AL_CONTEXT_SLOTS, 'the context runs past the table');
    let again: Buffer;
    try {
      again = encodeAlTransaction(t);
    } catch (e) {
      throw new InvariantError(`an accepted transaction does not encode: ${e instanceof Error ? e.message : String(e)}`);
    }
    const same = (a: number, b: number): boolean => again.subarray(a, b).equals(input.subarray(a, b));
    check(same(0, F.crc) && same(F.crc + 4, F.updates + 8 * t.updates.length) && same(F.context, F.context + 4 * t.context.length), 'an accepted transaction re-encodes differently');
    const back = decodeAlTransaction(again);
    check(back.ok && sameData(back.tx, t), 'a re-encoded transaction decodes differently');
    return 'accepted';
  });
}
