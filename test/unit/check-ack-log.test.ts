import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeRecord, parseAckLog, type AckLogHeader, type AckLogRecord, type ParseResult } from '../../src/check/ack-log-format.js';
import { AckLogWriter, readAckLog } from '../../src/check/ack-log.js';
import { MirrorError } from '../../src/errors.js';

const header: AckLogHeader = {
  t: 'log',
  version: 1,
  logId: '00112233445566ff',
  writer: 3,
  blockSize: 4096,
  firstBlock: 100,
  blocks: 50,
  created: '2024-01-01T00:00:00.000Z',
};

const run: AckLogRecord = { t: 'run', run: 1, target: 'nbd://127.0.0.1:10809/r0', seed: 9, queueDepth: 4, firstSeq: 1, started: '2024-01-01T00:00:01.000Z' };

const records: AckLogRecord[] = [
  run,
  { t: 'write', seq: 1, block: 100 },
  { t: 'write', seq: 2, block: 149, fua: true },
  { t: 'ack', seq: 2 },
  { t: 'flush', seq: 3 },
  { t: 'fail', seq: 1, error: 'EIO' },
  { t: 'ack', seq: 3 },
  { t: 'write', seq: 4, block: 120 },
  { t: 'end', run: 1, reason: 'connection lost: ünïcode reason', ended: '2024-01-01T00:00:02.000Z' },
];

function text(...lines: Array<AckLogHeader | AckLogRecord | string>): Buffer {
  return Buffer.from(lines.map((l) => (typeof l === 'string' ? l : encodeRecord(l))).join(''), 'utf8');
}

function failure(r: ParseResult): { line: number; reason: string } {
  if (r.ok) throw new Error('expected the log to be refused');
  return r;
}

describe('ack log format', () => {
  it('parses what it encodes, and sums it up', () => {
    const r = parseAckLog(text(header, ...records));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.log.header).toEqual(header);
    expect(r.log.records).toEqual(records);
    expect(r.log).toMatchObject({ lastSeq: 4, runs: 1, lastRunEnded: true, ignoredTailBytes: 0 });
    expect(r.log.validBytes).toBe(text(header, ...records).length);
  });

  it('ignores a last record cut at any byte, and says where whole records end', () => {
    const whole = text(header, ...records.slice(0, -1));
    const last = text(records[records.length - 1]!);
    for (let cut = 0; cut < last.length; cut++) {
      const r = parseAckLog(Buffer.concat([whole, last.subarray(0, cut)]));
      expect(r.ok, `cut at ${cut}`).toBe(true);
      if (!r.ok) continue;
      expect(r.log.records).toEqual(records.slice(0, -1));
      expect(r.log.validBytes).toBe(whole.length);
      expect(r.log.ignoredTailBytes).toBe(cut);
      expect(r.log.lastRunEnded).toBe(false);
    }
  });

  it('ignores a tail of NUL bytes (a file extended by a crash before its data)', () => {
    const whole = text(header, ...records.slice(0, 3));
    const r = parseAckLog(Buffer.concat([whole, Buffer.from('{"t":"ack"'), Buffer.alloc(300)]));
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.log).toMatchObject({ validBytes: whole.length, ignoredTailBytes: 310 });
  });

  it('refuses a log without a whole header', () => {
    expect(failure(parseAckLog(Buffer.alloc(0))).reason).toMatch(/no header/);
    expect(failure(parseAckLog(Buffer.from('{"t":"log","vers'))).reason).toMatch(/no header/);
    expect(failure(parseAckLog(Buffer.from('hello\n'))).reason).toMatch(/header/);
    expect(failure(parseAckLog(text({ ...run }))).reason).toMatch(/not a mirrorbd check log/);
    expect(failure(parseAckLog(text({ ...header, version: 2 }))).reason).toMatch(/version 2/);
    expect(failure(parseAckLog(text({ ...header, logId: 'XYZ' }))).reason).toMatch(/logId/);
    expect(failure(parseAckLog(text({ ...header, blockSize: 512 }))).reason).toMatch(/blockSize/);
    expect(failure(parseAckLog(text({ ...header, blocks: 0 }))).reason).toMatch(/blocks/);
  });

  it('refuses a damaged record in the middle, naming its line', () => {
    const r = failure(parseAckLog(text(header, run, { t: 'write', seq: 1, block: 100 }, '{"t":"ack","se\n', { t: 'ack', seq: 1 })));
    expect(r).toMatchObject({ line: 4, reason: 'not a JSON object' });
  });

  it('refuses records that do not make sense where they are', () => {
    const cases: Array<[Array<AckLogRecord | string>, RegExp]> = [
      [[{ t: 'write', seq: 1, block: 100 }], /write outside a run/],
      [[run, { t: 'write', seq: 2, block: 100 }, { t: 'write', seq: 2, block: 101 }], /sequence 2 does not follow 2/],
      [[run, { t: 'write', seq: 1, block: 150 }], /block 150 is outside the log's range 100..149/],
      [[run, { t: 'write', seq: 1, block: 99 }], /outside the log's range/],
      [[run, { t: 'ack', seq: 1 }], /ack of sequence 1, which is not awaiting an answer/],
      [[run, { t: 'write', seq: 1, block: 100 }, { t: 'ack', seq: 1 }, { t: 'fail', seq: 1, error: 'EIO' }], /fail of sequence 1/],
      [[run, { ...run, run: 3 } as AckLogRecord], /run 3 follows run 1/],
      [[run, { t: 'write', seq: 5, block: 100 }, { ...run, run: 2, firstSeq: 5 } as AckLogRecord], /starts at sequence 5, not after 5/],
      [[run, { t: 'end', run: 1, reason: 'x', ended: 'y' }, { t: 'write', seq: 1, block: 100 }], /write outside a run/],
      [[run, { t: 'end', run: 2, reason: 'x', ended: 'y' }], /end of run 2/],
      [[run, '{"t":"log"}\n'], /a second header/],
      [[run, '{"t":"trim","seq":1}\n'], /unknown record type "trim"/],
      [[run, '{"t":"write","seq":0,"block":100}\n'], /positive seq/],
      [[run, '{"t":"write","seq":1,"block":100,"fua":"yes"}\n'], /fua/],
      [[run, '[1,2]\n'], /not a JSON object/],
    ];
    for (const [rs, reason] of cases) {
      const r = failure(parseAckLog(text(header, ...rs)));
      expect(r.reason, JSON.stringify(rs)).toMatch(reason);
      expect(r.line).toBe(rs.length + 1);
    }
  });

  it('takes a second run after one that never ended (the checker was killed)', () => {
    const r = parseAckLog(text(header, run, { t: 'write', seq: 1, block: 100 }, { ...run, run: 2, firstSeq: 2 } as AckLogRecord, { t: 'write', seq: 2, block: 100 }));
    expect(r.ok && r.log.runs).toBe(2);
  });
});

describe('ack log file', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-check-log-'));
  });
  afterEach(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('records what happens and reads it back', async () => {
    const file = path.join(dir, 'a.log');
    const w = await AckLogWriter.create(file, { writer: 3, firstBlock: 100, blocks: 50, logId: header.logId });
    w.startRun({ target: 'nbd://x/r0', seed: 1, queueDepth: 2 });
    const s1 = w.nextSequence();
    const s2 = w.nextSequence();
    w.write(s1, 100, false);
    w.write(s2, 101, true);
    w.commit();
    // Committed records are in the file at once, before any sync.
    expect((await fsp.readFile(file, 'utf8')).split('\n')).toHaveLength(5);
    w.ack(s2);
    w.fail(s1, 'EIO');
    w.endRun('done');
    await w.close();
    const log = await readAckLog(file);
    expect(log.header).toMatchObject({ logId: header.logId, writer: 3, firstBlock: 100, blocks: 50 });
    expect(log.records.map((r) => r.t)).toEqual(['run', 'write', 'write', 'ack', 'fail', 'end']);
    expect(log.records[0]).toMatchObject({ t: 'run', run: 1, firstSeq: 1, target: 'nbd://x/r0' });
    expect(log).toMatchObject({ lastSeq: 2, lastRunEnded: true });
  });

  it('never overwrites a log', async () => {
    const file = path.join(dir, 'a.log');
    await fsp.writeFile(file, 'precious');
    const e = await AckLogWriter.create(file, { writer: 1, firstBlock: 0, blocks: 1 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(MirrorError);
    expect((e as MirrorError).message).toMatch(/exists: continue it with --append/);
    expect(await fsp.readFile(file, 'utf8')).toBe('precious');
  });

  it('appends after a killed checker: the cut record is dropped, sequences go on', async () => {
    const file = path.join(dir, 'a.log');
    const w = await AckLogWriter.create(file, { writer: 1, firstBlock: 0, blocks: 10 });
    w.startRun({ target: 't', seed: 1, queueDepth: 1 });
    w.write(w.nextSequence(), 3, false);
    w.write(w.nextSequence(), 4, false);
    await w.close();
    await fsp.appendFile(file, '{"t":"ack","se'); // what a kill -9 in the middle of a write leaves

    const { writer, previous } = await AckLogWriter.append(file);
    expect(previous).toMatchObject({ lastSeq: 2, runs: 1, lastRunEnded: false });
    expect(previous.ignoredTailBytes).toBe(14);
    expect(writer.startRun({ target: 't', seed: 2, queueDepth: 1 })).toBe(2);
    const seq = writer.nextSequence();
    expect(seq).toBe(3);
    writer.write(seq, 5, false);
    writer.ack(seq);
    writer.endRun('done');
    await writer.close();

    const log = await readAckLog(file);
    expect(log.ignoredTailBytes).toBe(0);
    expect(log.records.map((r) => r.t)).toEqual(['run', 'write', 'write', 'run', 'write', 'ack', 'end']);
    expect(log.records[3]).toMatchObject({ run: 2, firstSeq: 3 });
  });

  it('says which file and line is wrong', async () => {
    const file = path.join(dir, 'bad.log');
    await fsp.writeFile(file, text(header, run, '{"t":"ack","seq":9}\n'));
    await expect(readAckLog(file)).rejects.toThrow(/bad\.log:3: not a usable check log: ack of sequence 9/);
    await expect(readAckLog(path.join(dir, 'missing.log'))).rejects.toThrow(/missing\.log: cannot read the check log: ENOENT/);
  });
});
