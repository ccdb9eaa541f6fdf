/**
 * fio's nbd engine: random 4 KiB writes 16 deep and sequential 1 MiB writes,
 * each verified by fio (crc32c) after the write phase. A run where a block
 * was changed behind fio's back shows that the verification does look.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { missingTools } from '../helpers/tools.js';
import { startNode, type StartedNode } from './node.js';
import { explain, run, type RunResult } from './proc.js';

const missing = missingTools('fio', 'nbdsh');

interface FioJob {
  jobname: string;
  error: number;
  write: { io_bytes: number; total_ios: number };
  read: { io_bytes: number; total_ios: number };
}

function fio(uri: string, args: string[]): Promise<RunResult> {
  return run(
    'fio',
    ['--name=interop', '--ioengine=nbd', `--uri=${uri}`, '--output-format=json', '--size=32M', '--verify=crc32c', '--do_verify=1', '--verify_state_save=0', ...args],
    { timeoutMs: 60_000 },
  );
}

/** fio's JSON report; fio may print warnings before it. */
function jobs(r: RunResult): FioJob[] {
  const start = r.stdout.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON\n${explain(r)}`);
  return (JSON.parse(r.stdout.slice(start)) as { jobs: FioJob[] }).jobs;
}

describe.skipIf(missing.length > 0)('fio (nbd engine) against a Primary', () => {
  let node: StartedNode;

  beforeAll(async () => {
    node = await startNode({ sizeBytes: 40 * 1024 * 1024 });
  });
  afterAll(async () => {
    await node?.stop();
  });

  it('random 4 KiB writes at iodepth 16 verify without errors', async () => {
    const r = await fio(node.uri, ['--rw=randwrite', '--bs=4k', '--iodepth=16']);
    expect(r.code, explain(r)).toBe(0);
    const [job] = jobs(r);
    expect(job!.error, explain(r)).toBe(0);
    expect(job!.write.io_bytes).toBe(32 * 1024 * 1024);
    // The verify phase read everything back.
    expect(job!.read.io_bytes).toBe(32 * 1024 * 1024);
    expect(r.stderr).not.toMatch(/verify|bad magic|crc32c/i);
  });

  it('sequential 1 MiB writes verify without errors', async () => {
    const r = await fio(node.uri, ['--rw=write', '--bs=1M', '--iodepth=4']);
    expect(r.code, explain(r)).toBe(0);
    const [job] = jobs(r);
    expect(job!.error, explain(r)).toBe(0);
    expect(job!.write.io_bytes).toBe(32 * 1024 * 1024);
    expect(job!.read.io_bytes).toBe(32 * 1024 * 1024);
  });

  it('fio verification catches a block changed behind its back', async () => {
    const args = ['--rw=write', '--bs=64k', '--iodepth=4'];
    const w = await fio(node.uri, [...args, '--do_verify=0']);
    expect(w.code, explain(w)).toBe(0);
    const clean = await fio(node.uri, [...args, '--verify_only=1']);
    expect(clean.code, explain(clean)).toBe(0);
    const poke = await run('nbdsh', ['-u', node.uri, '-c', 'h.pwrite(b"\\x00" * 512, 5 * 1024 * 1024 + 4096)'], { timeoutMs: 15_000 });
    expect(poke.code, explain(poke)).toBe(0);
    const bad = await fio(node.uri, [...args, '--verify_only=1']);
    expect(bad.code, explain(bad)).not.toBe(0);
    expect(bad.stderr).toMatch(/verify/i);
  });
});
