/**
 * qemu's NBD client: qemu-io pattern writes and reads at aligned and
 * unaligned offsets, qemu-img convert/compare/info.
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { missingTools } from '../helpers/tools.js';
import { startNode, type StartedNode } from './node.js';
import { explain, run, tempDir, type RunResult } from './proc.js';

const missing = missingTools('qemu-io', 'qemu-img');
const KIB = 1024;
const MIB = 1024 * 1024;

function qemuIo(uri: string, ...commands: string[]): Promise<RunResult> {
  return run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri], { timeoutMs: 30_000 });
}

const VERIFY_FAILED = /Pattern verification failed/;

describe.skipIf(missing.length > 0)('qemu-io and qemu-img against a Primary', () => {
  let node: StartedNode;
  let tmp: { path: string; remove(): Promise<void> };

  beforeAll(async () => {
    tmp = await tempDir('qemu');
    node = await startNode({ sizeBytes: 16 * MIB });
  });
  afterAll(async () => {
    await node?.stop();
    await tmp?.remove();
  });

  // [offset, length, pattern]: aligned, 512-aligned, odd, crossing a 1 MiB
  // boundary, and the last sector.
  const writes = (): Array<[number, number, number]> => [
    [0, 64 * KIB, 0xab],
    [1 * MIB + 512, 4 * KIB, 0xcd],
    [2 * MIB + 1, 1000, 0x11],
    [3 * MIB - 100, 300, 0x22],
    [5 * MIB + 4095, 8 * KIB + 3, 0x44],
    [node.sizeBytes - 512, 512, 0x33],
  ];

  it('pattern writes read back on a fresh connection, at aligned and unaligned offsets', async () => {
    const w = await qemuIo(node.uri, ...writes().map(([o, l, p]) => `write -P 0x${p.toString(16)} ${o} ${l}`), 'flush');
    expect(w.code, explain(w)).toBe(0);
    const r = await qemuIo(
      node.uri,
      ...writes().map(([o, l, p]) => `read -P 0x${p.toString(16)} ${o} ${l}`),
      // Neighbours of the odd writes are untouched (still zero).
      `read -P 0 ${2 * MIB} 1`,
      `read -P 0 ${2 * MIB + 1001} 1023`,
      `read -P 0 ${3 * MIB - 612} 512`,
      `read -P 0 ${3 * MIB + 200} 312`,
    );
    expect(r.code, explain(r)).toBe(0);
    expect(r.stdout + r.stderr).not.toMatch(VERIFY_FAILED);
  });

  it('a read with the wrong pattern fails', async () => {
    const r = await qemuIo(node.uri, `read -P 0xac 0 ${64 * KIB}`);
    expect(r.code, explain(r)).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(VERIFY_FAILED);
    const odd = await qemuIo(node.uri, `read -P 0x11 ${2 * MIB} 1000`);
    expect(odd.code, explain(odd)).not.toBe(0);
  });

  it('write -z zeroes exactly the range, and overwrites read back', async () => {
    const r = await qemuIo(
      node.uri,
      `write -P 0x5e ${6 * MIB} ${192 * KIB}`,
      `write -z ${6 * MIB + 64 * KIB} ${64 * KIB}`,
      `write -z ${6 * MIB + 4 * KIB + 7} 1000`,
      `write -P 0x6f ${6 * MIB + 96 * KIB} ${4 * KIB}`,
      `read -P 0x5e ${6 * MIB} ${4 * KIB + 7}`,
      `read -P 0 ${6 * MIB + 4 * KIB + 7} 1000`,
      `read -P 0x5e ${6 * MIB + 4 * KIB + 1007} ${60 * KIB - 1007}`,
      `read -P 0 ${6 * MIB + 64 * KIB} ${32 * KIB}`,
      `read -P 0x6f ${6 * MIB + 96 * KIB} ${4 * KIB}`,
      `read -P 0 ${6 * MIB + 100 * KIB} ${28 * KIB}`,
      `read -P 0x5e ${6 * MIB + 128 * KIB} ${64 * KIB}`,
    );
    expect(r.code, explain(r)).toBe(0);
    expect(r.stdout + r.stderr).not.toMatch(VERIFY_FAILED);
  });

  it('qemu-img info reports the size', async () => {
    const r = await run('qemu-img', ['info', '-f', 'raw', '--output=json', node.uri], { timeoutMs: 30_000 });
    expect(r.code, explain(r)).toBe(0);
    const info = JSON.parse(r.stdout) as { 'virtual-size': number; format: string };
    expect(info.format).toBe('raw');
    expect(info['virtual-size']).toBe(node.sizeBytes);
  });

  it('qemu-img convert copies a file in and qemu-img compare finds it identical; one changed byte is found', async () => {
    const src = join(tmp.path, 'src.img');
    const data = randomBytes(node.sizeBytes);
    await writeFile(src, data);
    const conv = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, node.uri], { timeoutMs: 60_000 });
    expect(conv.code, explain(conv)).toBe(0);
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, node.uri], { timeoutMs: 60_000 });
    expect(cmp.code, explain(cmp)).toBe(0);
    expect(cmp.stdout).toMatch(/Images are identical/);

    // One byte, changed for sure; compare reports the 512-byte sector.
    const flipped = (data[7 * MIB + 3]! ^ 0xff).toString(16);
    const poke = await qemuIo(node.uri, `write -P 0x${flipped} ${7 * MIB + 3} 1`);
    expect(poke.code, explain(poke)).toBe(0);
    const differ = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, node.uri], { timeoutMs: 60_000 });
    expect(differ.code, explain(differ)).toBe(1);
    expect(differ.stdout).toMatch(/Content mismatch at offset 7340032\b/);
  });
});
