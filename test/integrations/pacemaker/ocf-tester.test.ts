/**
 * ocf-tester (Debian package resource-agents) against the agent and a real
 * single-node resource: meta-data against the OCF DTD (with xmllint),
 * meta-data as nobody, validate-all, probes, start, stop, monitor, notify,
 * promote and demote, each also repeated (every action must be idempotent).
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNode, type StartedNode } from '../../helpers/single-node.js';
import { missingTools } from '../../helpers/tools.js';
import { clientEnv, explain, run } from '../../interop/proc.js';
import { AGENT_PATH, MIRRORBD_COMMAND } from './netns-cluster.js';

const missing = missingTools('ocf-tester', 'xmllint');

describe.skipIf(missing.length > 0)('ocf-tester', () => {
  let node: StartedNode;
  let dir: string;

  beforeAll(async () => {
    node = await startNode({ secondary: true });
    // UpToDate data (promote needs it), and down: ocf-tester starts it.
    for (const args of [['primary', 'r0', '--force'], ['secondary', 'r0'], ['down', 'r0']]) {
      const r = await node.cli(...args);
      if (r.code !== 0) throw new Error(`mirrorbd ${args.join(' ')}: ${r.stderr}`);
    }
    // ocf-tester runs meta-data as nobody: the agent's copy must sit where
    // nobody can reach it, whatever the permissions of the checkout.
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-ocf-tester-'));
    await fsp.chmod(dir, 0o755);
    await fsp.copyFile(AGENT_PATH, path.join(dir, 'mirrorbd'));
    await fsp.chmod(path.join(dir, 'mirrorbd'), 0o755);
  });

  afterAll(async () => {
    await node?.stop();
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
  });

  it('passes every test, with no failure reported', async () => {
    const r = await run(
      'ocf-tester',
      ['-n', 'mbd', '-o', 'resource=r0', '-o', `config=${node.configFile}`, '-o', 'node=alpha', '-o', `mirrorbd=${MIRRORBD_COMMAND}`, path.join(dir, 'mirrorbd')],
      { timeoutMs: 240_000, env: { ...clientEnv, TMPDIR: dir } },
    );
    expect(r.code, explain(r)).toBe(0);
    const output = r.stdout + r.stderr;
    expect(output).toContain('passed all tests');
    // A failed check prints "* rc=N: what", and a summary "Tests failed".
    expect(output).not.toMatch(/^\* rc=/m);
    expect(output).not.toContain('Tests failed');
    expect(output).not.toContain('partially supports');
    // Left down, as the last stop did.
    expect((await node.cli('status', 'r0', '--json')).code).not.toBe(0);
  }, 300_000);
});
