import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { processAlive } from '../../src/daemon/run-dir.js';

describe('processAlive', () => {
  it('a live process is alive; a zombie (killed, not reaped) is not: its pid file is stale', async () => {
    // sh starts a short child, prints its pid and becomes `sleep`, which
    // never reaps it: the child stays a zombie while sleep runs.
    const parent = spawn('/bin/sh', ['-c', 'sleep 0 & echo $!; exec sleep 5'], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      const zombie = await new Promise<number>((resolve) => parent.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
      expect(processAlive(parent.pid!)).toBe(true);
      const deadline = Date.now() + 5000;
      while (processAlive(zombie) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(processAlive(zombie)).toBe(false);
      // it still exists for kill(0): only its state says it is gone
      expect(() => process.kill(zombie, 0)).not.toThrow();
    } finally {
      parent.kill('SIGKILL');
    }
  });

  it('a pid nobody has is not alive', () => {
    expect(processAlive(2 ** 22 + 12345)).toBe(false);
  });
});
