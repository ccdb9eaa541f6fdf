import { describe, expect, it } from 'vitest';
import { encodeRecord, parseAckLog, type AckLogHeader, type AckLogRecord } from '../../src/check/ack-log-format.js';
import type { BlockSource } from '../../src/check/block-source.js';
import { buildHistory, type LogHistory } from '../../src/check/history.js';
import { STAMP_BLOCK_BYTES, decodeStamp, encodeStamp } from '../../src/check/stamp.js';
import { judgeBlock, readSpans, verifyLog, type JudgeContext, type VerifyMode } from '../../src/check/verify.js';

const LOG_ID = 'aaaabbbbccccdddd';
const WRITER = 1;
const header: AckLogHeader = { t: 'log', version: 1, logId: LOG_ID, writer: WRITER, blockSize: 4096, firstBlock: 0, blocks: 64, created: 'c' };
const run = (n: number, firstSeq: number): AckLogRecord => ({ t: 'run', run: n, target: 't', seed: 1, queueDepth: 8, firstSeq, started: 's' });
const end = (n: number): AckLogRecord => ({ t: 'end', run: n, reason: 'done', ended: 'e' });
const w = (seq: number, block: number, fua = false): AckLogRecord => (fua ? { t: 'write', seq, block, fua: true } : { t: 'write', seq, block });
const f = (seq: number): AckLogRecord => ({ t: 'flush', seq });
const a = (seq: number): AckLogRecord => ({ t: 'ack', seq });

function history(...records: AckLogRecord[]): LogHistory {
  const r = parseAckLog(Buffer.from([header, ...records].map(encodeRecord).join('')));
  if (!r.ok) throw new Error(`bad test log: line ${r.line}: ${r.reason}`);
  return buildHistory(r.log);
}

const stamp = (block: number, sequence: number, logId = LOG_ID): Buffer => encodeStamp({ logId, writer: WRITER, block, sequence });
const zero = (): Buffer => Buffer.alloc(STAMP_BLOCK_BYTES);

function judge(h: LogHistory, block: number, content: Buffer, mode: VerifyMode = 'acknowledged'): ReturnType<typeof judgeBlock> {
  const ctx: JudgeContext = { logId: LOG_ID, writer: WRITER, lastSeq: h.lastSeq, complete: h.complete, mode };
  return judgeBlock(block, decodeStamp(content), h.blocks.get(block), ctx);
}

describe('history of a log', () => {
  it('knows, per block, the writes sent, the latest acknowledged and the latest durable', () => {
    const h = history(run(1, 1), w(1, 5), w(2, 6, true), a(1), a(2), w(3, 5), f(4), a(3), a(4), w(5, 5), a(5), end(1));
    expect(h.blocks.get(5)).toEqual({ sent: [1, 3, 5], latestAcked: 5, latestDurable: 1 });
    expect(h.blocks.get(6)).toEqual({ sent: [2], latestAcked: 2, latestDurable: 2 });
    expect(h).toMatchObject({ writesSent: 4, writesAcked: 4, writesDurable: 2, flushesSent: 1, flushesAcked: 1, complete: true, lastSeq: 5 });
  });

  it('a FLUSH covers only writes acknowledged before it was sent', () => {
    // seq 2 is acknowledged after the FLUSH went out: not covered by it.
    const h = history(run(1, 1), w(1, 1), w(2, 2), a(1), f(3), a(2), a(3), end(1));
    expect(h.blocks.get(1)!.latestDurable).toBe(1);
    expect(h.blocks.get(2)!.latestDurable).toBeNull();
  });

  it('a FLUSH that failed or was never answered makes nothing durable', () => {
    const h = history(run(1, 1), w(1, 1), a(1), f(2), { t: 'fail', seq: 2, error: 'EIO' }, w(3, 2), a(3), f(4));
    expect(h.blocks.get(1)!.latestDurable).toBeNull();
    expect(h.blocks.get(2)!.latestDurable).toBeNull();
    expect(h.complete).toBe(false);
    expect(h.writesFailed).toBe(0);
  });
});

describe('judging a block', () => {
  // Block 7: writes 1 (acknowledged), 3 (acknowledged), 5 (sent, never answered).
  // Block 8: write 2, never answered. Block 9: nothing.
  const h = history(run(1, 1), w(1, 7), w(2, 8), a(1), w(3, 7), a(3), w(5, 7));

  it('the latest acknowledged write is present', () => {
    expect(judge(h, 7, stamp(7, 3))).toEqual({ outcome: 'present' });
  });

  it('a later write that was sent but not acknowledged supersedes it', () => {
    expect(judge(h, 7, stamp(7, 5))).toEqual({ outcome: 'superseded' });
  });

  it('an older write where a later one was acknowledged is lost', () => {
    expect(judge(h, 7, stamp(7, 1))).toEqual({ outcome: 'lost', detail: 'holds the older write 1; write 3 was acknowledged' });
  });

  it('zeros where a write was acknowledged are lost; where none was, unwritten', () => {
    expect(judge(h, 7, zero())).toMatchObject({ outcome: 'lost', detail: expect.stringMatching(/holds zeros; write 3 was acknowledged/) });
    expect(judge(h, 8, zero())).toEqual({ outcome: 'unwritten' });
    expect(judge(h, 9, zero())).toEqual({ outcome: 'unwritten' });
  });

  it('a write that was only sent may or may not have landed', () => {
    expect(judge(h, 8, stamp(8, 2))).toEqual({ outcome: 'unacknowledged' });
  });

  it('a torn block is a violation, unless a later write was in flight', () => {
    const torn = Buffer.concat([stamp(7, 5).subarray(0, 2048), stamp(7, 3).subarray(2048)]);
    expect(judge(h, 7, torn)).toEqual({ outcome: 'tornInFlight' });
    const settled = history(run(1, 1), w(1, 7), a(1), w(3, 7), a(3));
    const bad = stamp(7, 3);
    bad[3000] ^= 1;
    expect(judge(settled, 7, bad)).toMatchObject({ outcome: 'torn', detail: expect.stringMatching(/crc .*; write 3 was acknowledged and no later write was sent/) });
    // A torn stamp of this log where nothing was ever sent.
    const stray = stamp(9, 1);
    stray[100] ^= 1;
    expect(judge(settled, 9, stray)).toMatchObject({ outcome: 'torn', detail: expect.stringMatching(/no write was sent to this block/) });
  });

  it('bytes that are no stamp, where a write was acknowledged, are foreign', () => {
    const junk = Buffer.alloc(STAMP_BLOCK_BYTES, 0xab);
    expect(judge(h, 7, junk)).toMatchObject({ outcome: 'foreign', detail: expect.stringMatching(/no stamp .*; write 3 was acknowledged/) });
    // Where nothing was acknowledged they may be what was there before the run.
    expect(judge(h, 8, junk)).toEqual({ outcome: 'unacknowledged' });
    expect(judge(h, 9, junk)).toEqual({ outcome: 'unacknowledged' });
  });

  it('a stamp of another log is foreign where a write was acknowledged', () => {
    expect(judge(h, 7, stamp(7, 3, '1111111111111111'))).toMatchObject({ outcome: 'foreign', detail: expect.stringMatching(/another check log/) });
    expect(judge(h, 9, stamp(9, 3, '1111111111111111'))).toEqual({ outcome: 'unacknowledged' });
  });

  it("another block's stamp is a misdirected write, wherever it lands", () => {
    expect(judge(h, 7, stamp(8, 2))).toMatchObject({ outcome: 'foreign', detail: 'holds write 2 of block 8: a misdirected write' });
    expect(judge(h, 9, stamp(7, 3))).toMatchObject({ outcome: 'foreign', detail: expect.stringMatching(/misdirected/) });
  });

  it('a sequence never sent to the block is foreign', () => {
    expect(judge(h, 7, stamp(7, 4))).toMatchObject({ outcome: 'foreign', detail: 'holds write 4, which was never sent to this block' });
    expect(judge(h, 9, stamp(9, 2))).toMatchObject({ outcome: 'foreign' });
  });

  it('a write past the end of a log that was cut short is newer than anything logged', () => {
    // h has no end record: the checker may have died after sending write 6.
    expect(judge(h, 7, stamp(7, 6))).toEqual({ outcome: 'superseded' });
    const ended = history(run(1, 1), w(1, 7), a(1), end(1));
    expect(judge(ended, 7, stamp(7, 6))).toMatchObject({ outcome: 'foreign' });
  });

  describe('after a crash of every node', () => {
    // Block 1: write 1 acknowledged and flushed, write 3 acknowledged after the flush was sent.
    // Block 2: write 4 acknowledged with FUA. Block 3: write 5 acknowledged, never flushed.
    const c = history(run(1, 1), w(1, 1), a(1), f(2), w(3, 1), a(3), a(2), w(4, 2, true), a(4), w(5, 3), a(5));

    it('a block may fall back to its last durable write, not before it', () => {
      expect(judge(c, 1, stamp(1, 3), 'crash')).toEqual({ outcome: 'present' });
      expect(judge(c, 1, stamp(1, 1), 'crash')).toEqual({ outcome: 'rolledBack' });
      expect(judge(c, 1, zero(), 'crash')).toMatchObject({ outcome: 'lost', detail: expect.stringMatching(/write 1 was made durable/) });
      // Without --crash the acknowledged write 3 is required.
      expect(judge(c, 1, stamp(1, 1))).toMatchObject({ outcome: 'lost' });
    });

    it('a FUA write is durable on its own', () => {
      expect(judge(c, 2, zero(), 'crash')).toMatchObject({ outcome: 'lost' });
    });

    it('an acknowledged write no FLUSH covered may be gone', () => {
      expect(judge(c, 3, zero(), 'crash')).toEqual({ outcome: 'rolledBack' });
      expect(judge(c, 3, stamp(3, 5), 'crash')).toEqual({ outcome: 'present' });
      expect(judge(c, 3, zero())).toMatchObject({ outcome: 'lost' });
    });
  });
});

function memorySource(bytes: Buffer, maxReadBytes = 64 * 1024): BlockSource & { reads: number } {
  const s = {
    name: 'memory',
    sizeBytes: bytes.length,
    maxReadBytes,
    reads: 0,
    read: async (offset: number, length: number) => {
      s.reads++;
      return Buffer.from(bytes.subarray(offset, offset + length));
    },
    close: async () => undefined,
  };
  return s;
}

describe('verifying a target', () => {
  const h = history(run(1, 1), w(1, 0), w(2, 1), w(3, 2), w(4, 3), w(5, 40), a(1), a(2), a(3), a(4), w(6, 3), end(1));

  function disk(): Buffer {
    const d = Buffer.alloc(64 * STAMP_BLOCK_BYTES);
    stamp(0, 1).copy(d, 0);
    stamp(1, 2).copy(d, 1 * STAMP_BLOCK_BYTES);
    stamp(2, 3).copy(d, 2 * STAMP_BLOCK_BYTES);
    stamp(3, 6).copy(d, 3 * STAMP_BLOCK_BYTES);
    return d;
  }

  it('passes when every acknowledged write is there or superseded', async () => {
    const r = await verifyLog({ history: h, source: memorySource(disk()) });
    expect(r).toMatchObject({ ok: true, checkedWrites: 4, checkedBlocks: 4, blocksRead: 5, violations: [] });
    expect(r.counts).toMatchObject({ present: 3, superseded: 1, unwritten: 1, lost: 0, torn: 0, foreign: 0 });
  });

  it('lists each violation with its block and offset, in block order', async () => {
    const d = disk();
    d.fill(0, 1 * STAMP_BLOCK_BYTES, 2 * STAMP_BLOCK_BYTES); // block 1 lost
    d[2 * STAMP_BLOCK_BYTES + 500] ^= 0xff; // block 2 torn
    stamp(3, 6, 'eeeeeeeeeeeeeeee').copy(d, 3 * STAMP_BLOCK_BYTES); // block 3 foreign
    const r = await verifyLog({ history: h, source: memorySource(d, 8192) });
    expect(r.ok).toBe(false);
    expect(r.counts).toMatchObject({ lost: 1, torn: 1, foreign: 1, present: 1 });
    expect(r.violations.map((v) => [v.kind, v.block, v.offset])).toEqual([
      ['lost', 1, 4096],
      ['torn', 2, 8192],
      ['foreign', 3, 12288],
    ]);
    const capped = await verifyLog({ history: h, source: memorySource(d), maxListed: 2 });
    expect(capped.violations).toHaveLength(2);
    expect(capped.counts.foreign).toBe(1);
  });

  it('with the full range, finds a stamp where nothing was written', async () => {
    const d = disk();
    stamp(2, 3).copy(d, 50 * STAMP_BLOCK_BYTES); // block 2's write, also at block 50
    expect((await verifyLog({ history: h, source: memorySource(d) })).ok).toBe(true);
    const full = await verifyLog({ history: h, source: memorySource(d), fullRange: true });
    expect(full.blocksRead).toBe(64);
    expect(full.violations).toEqual([{ kind: 'foreign', block: 50, offset: 50 * 4096, detail: 'holds write 3 of block 2: a misdirected write' }]);
  });

  it('reads runs of neighbouring blocks together', async () => {
    const src = memorySource(disk());
    await verifyLog({ history: h, source: src });
    expect(src.reads).toBe(2); // blocks 0..3, then 40
    expect(readSpans([1, 2, 3, 7, 8, 20], 0, 64, 2)).toEqual([
      [1, 2],
      [3, 1],
      [7, 2],
      [20, 1],
    ]);
    expect(readSpans(null, 10, 15, 2)).toEqual([
      [10, 2],
      [12, 2],
      [14, 1],
    ]);
  });

  it('refuses a target smaller than the log range', async () => {
    await expect(verifyLog({ history: h, source: memorySource(Buffer.alloc(4096 * 10)) })).rejects.toThrow(/memory has 40960 bytes; the log's blocks 0..63 need 262144/);
  });

  it('reports a read that fails', async () => {
    const src = memorySource(disk());
    src.read = async () => {
      throw new Error('EIO');
    };
    await expect(verifyLog({ history: h, source: src })).rejects.toThrow(/EIO/);
  });
});
