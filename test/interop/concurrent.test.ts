/**
 * Several clients at once: nbdcopy and qemu-io writing different regions
 * together; and raw connections sending garbage while a well-behaved client
 * keeps reading and writing. Every region is checked afterwards.
 */
import { randomBytes } from 'node:crypto';
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { missingTools } from '../helpers/tools.js';
import { startNode, type StartedNode } from './node.js';
import { explain, nbdsh, run, tempDir } from './proc.js';
import { CMD, IHAVEOPT, RawClient, handshake, openExport, option, request } from './raw-nbd.js';

const missing = missingTools('nbdcopy', 'qemu-io', 'nbdsh');
const MIB = 1024 * 1024;

describe.skipIf(missing.length > 0)('concurrent clients against a Primary', () => {
  let node: StartedNode;
  let tmp: { path: string; remove(): Promise<void> };
  const raw: RawClient[] = [];

  beforeAll(async () => {
    tmp = await tempDir('concurrent');
    node = await startNode({ sizeBytes: 48 * MIB });
  });
  afterAll(async () => {
    for (const c of raw) c.destroy();
    await node?.stop();
    await tmp?.remove();
  });

  it('nbdcopy writes region A while qemu-io writes and reads region B; both are intact afterwards', async () => {
    // Region A: [0, 16 MiB) from nbdcopy. Region B: [24 MiB, 40 MiB) from qemu-io.
    const a = randomBytes(16 * MIB);
    const src = join(tmp.path, 'a.src');
    await writeFile(src, a);
    const patterns = Array.from({ length: 16 }, (_, i) => [24 * MIB + i * MIB, 0x10 + i] as const);
    const qemuCmds = [
      ...patterns.map(([off, p]) => `write -P 0x${p.toString(16)} ${off} ${MIB}`),
      ...patterns.map(([off, p]) => `read -P 0x${p.toString(16)} ${off} ${MIB}`),
    ];
    const [copy, qio] = await Promise.all([
      run('nbdcopy', ['--connections=2', src, node.uri], { timeoutMs: 60_000 }),
      run('qemu-io', ['-f', 'raw', ...qemuCmds.flatMap((c) => ['-c', c]), node.uri], { timeoutMs: 60_000 }),
    ]);
    expect(copy.code, explain(copy)).toBe(0);
    expect(qio.code, explain(qio)).toBe(0);
    expect(qio.stdout).not.toMatch(/Pattern verification failed/);

    const out = join(tmp.path, 'all.dst');
    const back = await run('nbdcopy', [node.uri, out], { timeoutMs: 60_000 });
    expect(back.code, explain(back)).toBe(0);
    const fh = await open(out, 'r');
    try {
      const got = Buffer.alloc(16 * MIB);
      await fh.read(got, 0, got.length, 0);
      expect(got.equals(a), 'region A differs from what nbdcopy wrote').toBe(true);
      for (const [off, p] of patterns) {
        const blk = Buffer.alloc(MIB);
        await fh.read(blk, 0, MIB, off);
        expect(blk.equals(Buffer.alloc(MIB, p)), `region B at ${off} is not 0x${p.toString(16)}`).toBe(true);
      }
    } finally {
      await fh.close();
    }
  });

  it('garbage on other connections does not disturb a client reading and writing, and the server goes on accepting', async () => {
    const busy = nbdsh('busy', { URI: node.uri, SECONDS: 4, OFFSET: 44 * MIB, LENGTH: 2 * MIB }, { timeoutMs: 30_000 });

    const closedWithin = async (c: RawClient): Promise<boolean> => c.closedWithin(5000);
    const connect = async (): Promise<RawClient> => {
      const c = await RawClient.connect(node.host, node.port);
      raw.push(c);
      return c;
    };
    const verdicts: Record<string, boolean> = {};

    // Garbage instead of client flags: unknown flags, the server must hang up.
    {
      const c = await connect();
      await c.read(18);
      c.write(Buffer.from('GARBAGE!'.repeat(512)));
      verdicts['garbage after the greeting closes'] = await closedWithin(c);
    }
    // Valid flags, then an option without the IHAVEOPT magic.
    {
      const c = await connect();
      await handshake(c);
      c.write(Buffer.from('NOTANOPTIONAT ALL, JUST BYTES....'));
      verdicts['bad option magic closes'] = await closedWithin(c);
    }
    // Transmission, then a request with a bad magic.
    {
      const c = await openExport(node.host, node.port, node.resource, false);
      raw.push(c);
      const req = request(CMD.READ, 0, 1n, 0n, 512);
      req.writeUInt32BE(0xdeadbeef, 0);
      c.write(req);
      verdicts['bad request magic closes'] = await closedWithin(c);
    }
    // Things that need not close but must not hurt: an option claiming
    // 4 GiB of data, a WRITE claiming more than the maximum payload, a
    // half-sent request, a client that vanishes mid-handshake.
    {
      const c = await connect();
      await handshake(c);
      const h = option(0x1234);
      h.writeUInt32BE(0xffffffff, 12);
      c.write(Buffer.concat([h, Buffer.alloc(4096, 0x61)]));
      const w = await openExport(node.host, node.port, node.resource, true);
      raw.push(w);
      w.write(Buffer.concat([request(CMD.WRITE, 0, 2n, 0n, 0xfffffff0), Buffer.alloc(8192, 0x62)]));
      const half = await openExport(node.host, node.port, node.resource, false);
      raw.push(half);
      half.write(request(CMD.WRITE, 0, 3n, 0n, 4096).subarray(0, 20));
      const gone = await connect();
      gone.write(IHAVEOPT.subarray(0, 3));
      gone.destroy();
      await new Promise((r) => setTimeout(r, 500));
      for (const x of [c, w, half]) x.destroy();
    }

    const b = await busy;
    expect(b.code, explain(b)).toBe(0);
    expect(Number(b.stdout.trim())).toBeGreaterThan(10);
    expect(verdicts).toEqual({
      'garbage after the greeting closes': true,
      'bad option magic closes': true,
      'bad request magic closes': true,
    });

    // New clients still get in and see the data.
    const after = await nbdsh('busy', { URI: node.uri, SECONDS: 0.5, OFFSET: 44 * MIB, LENGTH: 2 * MIB });
    expect(after.code, explain(after)).toBe(0);
  });
});
