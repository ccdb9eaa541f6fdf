/**
 * nbdsh (libnbd's Python shell) drives every command, the error paths with
 * libnbd's own checks off, and option haggling one option at a time. The
 * scripts live in nbdsh/ and fail with a non-zero exit on any assertion.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { missingTools } from '../helpers/tools.js';
import { reference, startNode, type StartedNode } from './node.js';
import { explain, nbdsh } from './proc.js';

const missing = missingTools('nbdsh');

describe.skipIf(missing.length > 0)('nbdsh against a Primary', () => {
  let node: StartedNode;

  beforeAll(async () => {
    node = await startNode({ sizeBytes: 64 * 1024 * 1024 });
  });
  afterAll(async () => {
    await node?.stop();
  });

  it('every command works and the data reads back (pread, pwrite, FUA, flush, zero, trim, cache, DF, block status)', async () => {
    const r = await nbdsh('commands', { URI: node.uri, SIZE: node.sizeBytes });
    expect(r.code, explain(r)).toBe(0);
    expect(r.stdout).toContain('ok');
  });

  it('errors: EINVAL/ENOSPC past the end, EINVAL for unknown flags, zero-length requests, and the connection survives each', async () => {
    const r = await nbdsh('errors', { URI: node.uri, SIZE: node.sizeBytes });
    expect(r.code, explain(r)).toBe(0);
    expect(r.stdout).toContain('ok');
  });

  it.skipIf(reference)('status --json counts what the scripts above did', async () => {
    const r = await node.cli('status', node.resource, '--json');
    expect(r.code, r.stderr).toBe(0);
    const [st] = JSON.parse(r.stdout) as Array<{ sizeBytes: number; io: Record<string, number> }>;
    expect(st!.sizeBytes).toBe(node.sizeBytes);
    // commands.py alone writes more than 4 MiB, flushes, zeroes and reads.
    expect(st!.io.bytesWritten).toBeGreaterThan(4 * 1024 * 1024);
    expect(st!.io.bytesRead).toBeGreaterThan(4 * 1024 * 1024);
    for (const k of ['reads', 'writes', 'flushes', 'zeroes']) expect({ [k]: st!.io[k]! > 0 }).toEqual({ [k]: true });
  });

  it('option mode: list, info, list meta context, an unknown export, go, abort', async () => {
    const r = await nbdsh('options', {
      URI: node.uri,
      BASE: `nbd://${node.host}:${node.port}`,
      EXPORT: node.resource,
      SIZE: node.sizeBytes,
    });
    expect(r.code, explain(r)).toBe(0);
    expect(r.stdout).toContain('ok');
  });
});
