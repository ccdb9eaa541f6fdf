/**
 * nbdinfo: what a file-backed Primary advertises. nbdinfo exits 0 even on
 * some broken replies, so every check here reads the JSON it printed, and
 * what it reports is cross-checked with other clients elsewhere.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { missingTools } from '../helpers/tools.js';
import { startNode, type StartedNode } from './node.js';
import { explain, nbdsh, run } from './proc.js';

const missing = missingTools('nbdinfo', 'nbdsh');

interface ExportInfo {
  'export-name': string;
  'export-size': number;
  contexts?: string[];
  [flag: string]: unknown;
}

interface NbdinfoJson {
  protocol: string;
  TLS: boolean;
  structured: boolean;
  exports: ExportInfo[];
}

async function nbdinfoJson(...args: string[]): Promise<NbdinfoJson> {
  const r = await run('nbdinfo', ['--json', ...args], { timeoutMs: 15_000 });
  expect(r.code, explain(r)).toBe(0);
  // nbdinfo can exit 0 on a broken reply: an unparsable document fails here.
  try {
    return JSON.parse(r.stdout) as NbdinfoJson;
  } catch {
    throw new Error(`nbdinfo printed no valid JSON\n${explain(r)}`);
  }
}

describe.skipIf(missing.length > 0)('nbdinfo against a Primary', () => {
  let node: StartedNode;
  let base: string;

  beforeAll(async () => {
    node = await startNode({ sizeBytes: 64 * 1024 * 1024 });
    base = `nbd://${node.host}:${node.port}`;
  });
  afterAll(async () => {
    await node?.stop();
  });

  it('reports the export size and fixed newstyle with structured replies', async () => {
    const info = await nbdinfoJson(node.uri);
    expect(info.protocol).toBe('newstyle-fixed');
    expect(info.TLS).toBe(false);
    expect(info.structured).toBe(true);
    expect(info.exports).toHaveLength(1);
    expect(info.exports[0]!['export-size']).toBe(node.sizeBytes);
    // qemu rounds sizes down to 512 and the kernel's block size is up to
    // 4096: an unaligned tail would be unreachable for them.
    expect(node.sizeBytes % 4096).toBe(0);
  });

  it('advertises the flags of a writable file-backed export', async () => {
    const e = (await nbdinfoJson(node.uri)).exports[0]!;
    const expected: Record<string, boolean> = {
      can_flush: true,
      can_fua: true,
      can_zero: true,
      // FAST_ZERO is understood; on a file store it fails at once with
      // ENOTSUP, which is the answer the flag exists to give.
      can_fast_zero: true,
      can_cache: true,
      can_df: true,
      can_multi_conn: true,
      is_read_only: false,
      is_rotational: false,
      // TRIM is a hint: honoured (as a no-op on a file store, like qemu-nbd
      // without --discard=unmap), so fstrim and mkfs discards succeed.
      can_trim: true,
    };
    const seen = Object.fromEntries(Object.keys(expected).map((k) => [k, e[k]]));
    expect(seen).toEqual(expected);
  });

  it('advertises what libnbd itself sees on the same export (can_trim, can_fast_zero, ...)', async () => {
    // A second client's view of the flags, so nbdinfo's printing is not the only witness.
    const e = (await nbdinfoJson(node.uri)).exports[0]!;
    const r = await run('nbdsh', [
      '-u', node.uri, '-c',
      'import json; print(json.dumps({k: bool(getattr(h, k)()) for k in ' +
        '["can_flush","can_fua","can_trim","can_zero","can_fast_zero","can_cache","can_df","can_multi_conn","is_read_only","is_rotational"]}))',
    ], { timeoutMs: 15_000 });
    expect(r.code, explain(r)).toBe(0);
    const fromLibnbd = JSON.parse(r.stdout) as Record<string, boolean>;
    for (const [k, v] of Object.entries(fromLibnbd)) expect({ [k]: e[k] }).toEqual({ [k]: v });
  });

  it('advertises block sizes: minimum 1 or 512, preferred 4096, maximum 32 MiB', async () => {
    const e = (await nbdinfoJson(node.uri)).exports[0]!;
    expect([1, 512]).toContain(e.block_size_minimum);
    expect(e.block_size_preferred).toBe(4096);
    expect(e.block_size_maximum).toBe(33554432);
  });

  it('offers the base:allocation meta context, and --map covers the whole export', async () => {
    const e = (await nbdinfoJson(node.uri)).exports[0]!;
    expect(e.contexts).toContain('base:allocation');
    const r = await run('nbdinfo', ['--map', '--json', node.uri], { timeoutMs: 15_000 });
    expect(r.code, explain(r)).toBe(0);
    const map = JSON.parse(r.stdout) as { offset: number; length: number; type: number }[];
    let next = 0;
    for (const ext of map) {
      expect(ext.offset).toBe(next);
      expect(ext.length).toBeGreaterThan(0);
      next += ext.length;
    }
    expect(next).toBe(node.sizeBytes);
  });

  it('--list names r0', async () => {
    const list = await nbdinfoJson('--list', base);
    const names = list.exports.map((x) => x['export-name']);
    expect(names).toContain(node.resource);
    const r0 = list.exports.find((x) => x['export-name'] === node.resource)!;
    expect(r0['export-size']).toBe(node.sizeBytes);
  });

  it('an empty export name reaches r0', async () => {
    const info = await nbdinfoJson(base);
    expect(info.exports[0]!['export-size']).toBe(node.sizeBytes);
    // Same data, not merely the same size: write through "" and read it through r0.
    const marker = `empty-name-${process.pid}-${Date.now()}`;
    const w = await run('nbdsh', ['-u', base, '-c', `h.pwrite(${JSON.stringify(marker)}.encode(), 12345)`], { timeoutMs: 15_000 });
    expect(w.code, explain(w)).toBe(0);
    const r = await nbdsh('read-bytes', { URI: node.uri, OFFSET: 12345, LENGTH: marker.length });
    expect(r.code, explain(r)).toBe(0);
    expect(Buffer.from(r.stdout.trim(), 'hex').toString()).toBe(marker);
  });

  it('an unknown export name fails with a non-zero exit and a message', async () => {
    const r = await run('nbdinfo', [`${base}/no-such-export`], { timeoutMs: 15_000 });
    expect(r.code, explain(r)).not.toBe(0);
    expect(r.stderr).toMatch(/no-such-export/);
  });
});
