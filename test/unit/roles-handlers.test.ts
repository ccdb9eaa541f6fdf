import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, test } from 'vitest';
import {
  FENCE_PEER_EXIT,
  HANDLER_OUTPUT_BYTES,
  HandlerRunner,
  fencePeerOutcome,
  type HandlerEvent,
  type HandlerRan,
  type HandlerRunnerOptions,
} from '../../src/roles/handlers.js';

let dir: string;
beforeEach(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'mirrorbd-handlers-'));
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

function runner(handlers: Record<string, string>, over: Partial<HandlerRunnerOptions> = {}): HandlerRunner {
  return new HandlerRunner({ resource: 'r0', node: 'alpha', nodeId: 0, handlers, timeoutMs: 10_000, ...over });
}

const CTX = { role: 'Primary', disk: 'UpToDate' };

function ran(r: unknown): HandlerRan {
  expect(r).toMatchObject({ ran: true });
  return r as HandlerRan;
}

test('the environment names the resource, node, handler, state and peer, with DRBD aliases', async () => {
  const print = 'env | grep -E "^(MIRRORBD|DRBD)_" | sort';
  const r = runner({ 'fence-peer': print, 'after-promote': print }, { baseEnv: { PATH: process.env.PATH, MIRRORBD_PEER: 'stale', DRBD_PEER: 'stale', KEEP: '1' } });
  const fence = ran(await r.run('fence-peer', { ...CTX, peer: { name: 'beta', nodeId: 1 } }));
  expect(fence.output.trim().split('\n')).toEqual([
    'DRBD_PEER=beta',
    'DRBD_RESOURCE=r0',
    'MIRRORBD_DISK=UpToDate',
    'MIRRORBD_HANDLER=fence-peer',
    'MIRRORBD_NODE=alpha',
    'MIRRORBD_NODE_ID=0',
    'MIRRORBD_PEER=beta',
    'MIRRORBD_PEER_ID=1',
    'MIRRORBD_RESOURCE=r0',
    'MIRRORBD_ROLE=Primary',
  ]);
  expect(fence).toMatchObject({ handler: 'fence-peer', peer: 'beta', exitCode: 0, signal: null, timedOut: false });
  // Without a peer, no peer variables, not even inherited ones.
  const promote = ran(await r.run('after-promote', { role: 'Secondary', disk: 'Outdated' }));
  expect(promote.output).not.toContain('PEER');
  expect(promote.output).toContain('MIRRORBD_ROLE=Secondary');
  expect(promote.output).toContain('MIRRORBD_DISK=Outdated');
  expect(promote.peer).toBeNull();
});

test('the rest of the environment is inherited', async () => {
  const r = runner({ 'split-brain': 'echo "$KEEP"' }, { baseEnv: { KEEP: 'kept' } });
  expect(ran(await r.run('split-brain', CTX)).output).toBe('kept\n');
});

test('exit codes and signals are reported', async () => {
  const r = runner({ 'fence-peer': 'exit 7', 'split-brain': 'true', 'quorum-lost': 'kill -USR1 $$' });
  expect(await r.run('fence-peer', CTX)).toMatchObject({ exitCode: 7, signal: null, timedOut: false });
  expect(await r.run('split-brain', CTX)).toMatchObject({ exitCode: 0, signal: null });
  expect(await r.run('quorum-lost', CTX)).toMatchObject({ exitCode: null, signal: 'SIGUSR1', timedOut: false });
});

test('a command the shell cannot find is exit code 127, with the shell message', async () => {
  const r = runner({ 'out-of-sync': 'no-such-command-mirrorbd-test' });
  const res = ran(await r.run('out-of-sync', CTX));
  expect(res.exitCode).toBe(127);
  expect(res.output).toContain('no-such-command-mirrorbd-test');
});

test('an unconfigured handler does not run and resolves at once', async () => {
  const events: HandlerEvent[] = [];
  const r = runner({ 'fence-peer': 'sleep 0.5' }, { onEvent: (e) => events.push(e) });
  const slow = r.run('fence-peer', CTX);
  const t0 = Date.now();
  expect(await r.run('split-brain', CTX)).toEqual({ ran: false, handler: 'split-brain' });
  expect(Date.now() - t0).toBeLessThan(300);
  expect(r.has('split-brain')).toBe(false);
  expect(r.has('fence-peer')).toBe(true);
  await slow;
  expect(events.map((e) => e.handler)).toEqual(['fence-peer']);
});

test('a timeout kills the whole process group and is reported', async () => {
  const pidFile = join(dir, 'child.pid');
  // The shell starts a sleep in the background and waits: both must die.
  const r = runner({ 'before-promote': `sleep 30 & echo $! > ${pidFile}; echo started; wait` }, { timeoutMs: 300 });
  const t0 = Date.now();
  const res = ran(await r.run('before-promote', CTX));
  expect(Date.now() - t0).toBeLessThan(5000);
  expect(res.timedOut).toBe(true);
  expect(res.exitCode).toBeNull();
  expect(res.signal).toBe('SIGTERM');
  expect(res.output).toBe('started\n');
  expect(res.ms).toBeGreaterThanOrEqual(250);
  const pid = Number(await fsp.readFile(pidFile, 'utf8'));
  await expect.poll(() => alive(pid), { timeout: 2000 }).toBe(false);
});

test('a handler that ignores SIGTERM is killed after the grace period', async () => {
  const r = runner({ 'after-demote': "trap '' TERM; echo ready; while :; do sleep 0.05; done" }, { timeoutMs: 200 });
  const res = ran(await r.run('after-demote', CTX));
  expect(res).toMatchObject({ timedOut: true, exitCode: null, signal: 'SIGKILL' });
});

test('runs are serialized in the order asked, never concurrent', async () => {
  const log = join(dir, 'log');
  const step = (name: string, ms: number) => `echo start-${name} >> ${log}; sleep ${ms / 1000}; echo end-${name} >> ${log}`;
  const r = runner({
    'after-demote': step('demote', 300),
    'after-promote': step('promote', 10),
    'fence-peer': step('fence', 100),
  });
  const results = await Promise.all([r.run('after-demote', CTX), r.run('after-promote', CTX), r.run('fence-peer', CTX), r.run('after-promote', CTX)]);
  expect(results.map((x) => x.handler)).toEqual(['after-demote', 'after-promote', 'fence-peer', 'after-promote']);
  expect((await fsp.readFile(log, 'utf8')).trim().split('\n')).toEqual([
    'start-demote',
    'end-demote',
    'start-promote',
    'end-promote',
    'start-fence',
    'end-fence',
    'start-promote',
    'end-promote',
  ]);
});

test('a timed-out handler does not hold up the ones behind it', async () => {
  const r = runner({ 'before-promote': 'sleep 30', 'after-promote': 'echo next' }, { timeoutMs: 200 });
  const first = r.run('before-promote', CTX);
  const second = r.run('after-promote', CTX);
  expect(await first).toMatchObject({ timedOut: true });
  expect(await second).toMatchObject({ timedOut: false, exitCode: 0, output: 'next\n' });
});

test('output keeps the last 4 KiB of stdout and stderr together', async () => {
  const r = runner({
    'split-brain': 'i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done; echo last-err >&2',
    'out-of-sync': 'echo out; echo err >&2',
  });
  const big = ran(await r.run('split-brain', CTX));
  expect(Buffer.byteLength(big.output)).toBe(HANDLER_OUTPUT_BYTES);
  expect(big.output.endsWith('line 1999\nlast-err\n')).toBe(true);
  expect(big.output).not.toContain('line 0\n');
  const small = ran(await r.run('out-of-sync', CTX));
  expect(small.output.split('\n').sort()).toEqual(['', 'err', 'out']);
});

test('a background process that keeps the output open does not hold the result', async () => {
  const pidFile = join(dir, 'bg.pid');
  const r = runner({ 'after-promote': `sleep 5 & echo $! > ${pidFile}; echo done` });
  const t0 = Date.now();
  const res = ran(await r.run('after-promote', CTX));
  expect(Date.now() - t0).toBeLessThan(2000);
  expect(res).toMatchObject({ exitCode: 0, timedOut: false, output: 'done\n' });
  process.kill(Number(await fsp.readFile(pidFile, 'utf8')));
});

test('every run emits one event; idle waits for the queue', async () => {
  const events: HandlerEvent[] = [];
  const r = runner({ 'fence-peer': 'exit 4', 'quorum-lost': 'sleep 0.1' }, { onEvent: (e) => events.push(e) });
  void r.run('fence-peer', { ...CTX, peer: { name: 'beta', nodeId: 1 } });
  void r.run('quorum-lost', CTX);
  await r.idle();
  expect(events).toHaveLength(2);
  expect(events[0]).toMatchObject({ type: 'handler', handler: 'fence-peer', peer: 'beta', exitCode: 4, timedOut: false });
  expect(events[1]).toMatchObject({ type: 'handler', handler: 'quorum-lost', peer: null, exitCode: 0 });
  expect(events[1]!.ms).toBeGreaterThanOrEqual(50);
});

test('a listener that throws does not stop the queue', async () => {
  const r = runner({ 'fence-peer': 'true' }, { onEvent: () => { throw new Error('boom'); } });
  expect(await r.run('fence-peer', CTX)).toMatchObject({ exitCode: 0 });
  expect(await r.run('fence-peer', CTX)).toMatchObject({ exitCode: 0 });
});

test('fence-peer exit codes map to DRBD meanings', () => {
  expect(FENCE_PEER_EXIT).toEqual({ PEER_INCONSISTENT: 3, PEER_OUTDATED: 4, PEER_UNREACHABLE: 5, PEER_PRIMARY: 6, PEER_FENCED: 7 });
  expect([3, 4, 5, 6, 7].map(fencePeerOutcome)).toEqual(['peer-inconsistent', 'peer-outdated', 'unreachable', 'peer-primary', 'peer-fenced']);
  for (const code of [0, 1, 2, 8, 127, null]) expect(fencePeerOutcome(code)).toBe('failed');
});

test('fence-peer through the runner: the exit code decides', async () => {
  const r = runner({ 'fence-peer': 'exit $MIRRORBD_PEER_ID' });
  const res = ran(await r.run('fence-peer', { ...CTX, peer: { name: 'gamma', nodeId: 7 } }));
  expect(fencePeerOutcome(res.exitCode)).toBe('peer-fenced');
});

/** Running, not a zombie waiting for a reaper (containers may have none). */
async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}
