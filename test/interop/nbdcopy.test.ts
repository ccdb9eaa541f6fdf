/**
 * nbdcopy: 32 MiB of random data copied in from a file and back out to
 * another file, compared byte for byte; with --flush; with four connections
 * (which nbdcopy uses only when the export advertises multi-conn).
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { missingTools } from '../helpers/tools.js';
import { startNode, type StartedNode } from './node.js';
import { explain, run, tempDir } from './proc.js';

const missing = missingTools('nbdcopy');
const DATA_BYTES = 32 * 1024 * 1024;

/** Offset of the first differing byte, or -1. */
function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

describe.skipIf(missing.length > 0)('nbdcopy against a Primary', () => {
  let node: StartedNode;
  let tmp: { path: string; remove(): Promise<void> };

  beforeAll(async () => {
    tmp = await tempDir('nbdcopy');
    node = await startNode({ sizeBytes: 40 * 1024 * 1024 });
  });
  afterAll(async () => {
    await node?.stop();
    await tmp?.remove();
  });

  async function roundTrip(name: string, extra: string[]): Promise<{ inLog: string; outLog: string }> {
    expect(node.sizeBytes).toBeGreaterThanOrEqual(DATA_BYTES);
    const src = join(tmp.path, `${name}.src`);
    const dst = join(tmp.path, `${name}.dst`);
    const data = randomBytes(DATA_BYTES);
    await writeFile(src, data);
    const cin = await run('nbdcopy', [...extra, src, node.uri], { timeoutMs: 60_000 });
    expect(cin.code, explain(cin)).toBe(0);
    const cout = await run('nbdcopy', [...extra, node.uri, dst], { timeoutMs: 60_000 });
    expect(cout.code, explain(cout)).toBe(0);
    expect((await stat(dst)).size).toBe(node.sizeBytes);
    const fh = await open(dst, 'r');
    const back = Buffer.alloc(DATA_BYTES);
    try {
      await fh.read(back, 0, DATA_BYTES, 0);
    } finally {
      await fh.close();
    }
    expect(firstDifference(back, data), 'first differing byte of the copy').toBe(-1);
    return { inLog: cin.stderr, outLog: cout.stderr };
  }

  it('copies 32 MiB in and out unchanged', async () => {
    await roundTrip('plain', []);
  });

  it('copies in and out unchanged with --flush', async () => {
    await roundTrip('flush', ['--flush']);
  });

  it('uses four connections (multi-conn) and copies unchanged', async () => {
    const { inLog, outLog } = await roundTrip('multi', ['--connections=4', '--threads=4', '--verbose']);
    expect(inLog).toMatch(/connections=4 /);
    expect(outLog).toMatch(/connections=4 /);
  });

  it('a copy of a file with holes reads back zeroes where the file had none written', async () => {
    // nbdcopy skips zero runs on the source and writes zeroes (or holes) on
    // the destination: old data under them must not survive.
    const src = join(tmp.path, 'sparse.src');
    const data = Buffer.alloc(8 * 1024 * 1024);
    randomBytes(1024 * 1024).copy(data, 0);
    randomBytes(1024 * 1024).copy(data, 6 * 1024 * 1024);
    await writeFile(src, data);
    const cin = await run('nbdcopy', [src, node.uri], { timeoutMs: 60_000 });
    expect(cin.code, explain(cin)).toBe(0);
    const dst = join(tmp.path, 'sparse.dst');
    const cout = await run('nbdcopy', [node.uri, dst], { timeoutMs: 60_000 });
    expect(cout.code, explain(cout)).toBe(0);
    const back = (await readFile(dst)).subarray(0, data.length);
    expect(firstDifference(back, data), 'first differing byte of the copy').toBe(-1);
  });
});
