/**
 * The activity log ring on the metadata device: the AlJournal that writes
 * transactions (each write followed by fdatasync), and recovery, which reads
 * the ring and replays it.
 */
import { AL_TX_BYTES, alRingBlocks } from './al-transaction.js';
import { replayAlRing, type AlRecovery } from './al-replay.js';
import type { AlJournal } from './activity-log.js';
import type { MdLayout } from './layout.js';
import type { MetaIo } from './meta-io.js';

/** The journal writing into the activity log area of `layout`. */
export function metaAlJournal(io: MetaIo, layout: Pick<MdLayout, 'alOffset' | 'alSizeBytes'>): AlJournal {
  const ringBlocks = alRingBlocks(layout.alSizeBytes);
  return {
    ringBlocks,
    async writeBlock(position, block) {
      if (!Number.isInteger(position) || position < 0 || position >= ringBlocks) throw new RangeError(`ring position ${position} is not 0..${ringBlocks - 1}`);
      if (block.length !== AL_TX_BYTES) throw new RangeError(`a transaction is ${AL_TX_BYTES} bytes, got ${block.length}`);
      await io.write(layout.alOffset + position * AL_TX_BYTES, block);
      await io.sync();
    },
  };
}

/** The ring's blocks, in position order. */
export async function readAlRing(io: MetaIo, layout: Pick<MdLayout, 'alOffset' | 'alSizeBytes'>): Promise<Buffer[]> {
  const ringBlocks = alRingBlocks(layout.alSizeBytes);
  const all = await io.read(layout.alOffset, ringBlocks * AL_TX_BYTES);
  const blocks: Buffer[] = [];
  for (let i = 0; i < ringBlocks; i++) blocks.push(all.subarray(i * AL_TX_BYTES, (i + 1) * AL_TX_BYTES));
  return blocks;
}

/**
 * The extents that were active when the log was last written (after a crash:
 * every extent that may differ from the peers). Reads only.
 */
export async function recoverActivityLog(io: MetaIo, layout: Pick<MdLayout, 'alOffset' | 'alSizeBytes'>): Promise<AlRecovery> {
  return replayAlRing(await readAlRing(io, layout));
}
