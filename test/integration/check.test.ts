/**
 * `mirrorbd check` as users run it: the built CLI as a real process,
 * against a real single-node mirrorbd and against nbdkit's memory plugin.
 * It must pass on a server that keeps its acknowledged writes (also across
 * a kill -9), and name the block when one is damaged or lost.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readAckLog } from '../../src/check/ack-log.js';
import { buildHistory } from '../../src/check/history.js';
import { compareCheck, verifyCheck, writeCheck } from '../../src/check/index.js';
import { cliPath, freePort, mustSucceed, startNode, stopProcess, type CliResult, type StartedNode } from '../helpers/single-node.js';
import { missingTools } from '../helpers/tools.js';

const BLOCK = 4096;

// Everything a test starts, so it is ended (by pid) and removed also when the test fails.
const nodes: StartedNode[] = [];
const children = new Set<ChildProcess>();
const pids = new Set<number>();
const dirs: string[] = [];

afterEach(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  children.clear();
  for (const pid of pids) await stopProcess(pid, 2000);
  pids.clear();
  while (nodes.length > 0) await nodes.pop()!.stop();
  while (dirs.length > 0) await fsp.rm(dirs.pop()!, { recursive: true, force: true });
});

async function node(opts: Parameters<typeof startNode>[0] = {}): Promise<StartedNode> {
  const n = await startNode(opts);
  nodes.push(n);
  return n;
}

async function tempDir(): Promise<string> {
  const d = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-check-'));
  dirs.push(d);
  return d;
}

/** `mirrorbd check ARGS` as a child process; resolves with its exit status and output. */
function startCheck(args: string[]): { child: ChildProcess; done: Promise<CliResult> } {
  const child = spawn(process.execPath, [cliPath, 'check', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<CliResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      children.delete(child);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
  return { child, done };
}

const check = (...args: string[]): Promise<CliResult> => startCheck(args).done;

/** Polls until `test` holds; fails (not a timed assertion: a bound on a hang) after boundMs. */
async function until(what: string, test: () => Promise<boolean>, boundMs = 30_000): Promise<void> {
  const deadline = Date.now() + boundMs;
  while (!(await test())) {
    if (Date.now() > deadline) throw new Error(`still waiting for ${what} after ${boundMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const ackLines = async (log: string): Promise<number> => ((await fsp.readFile(log, 'utf8').catch(() => '')).match(/"t":"ack"/g) ?? []).length;

/** A block whose latest acknowledged write is in the log. */
async function ackedBlock(log: string): Promise<number> {
  const h = buildHistory(await readAckLog(log));
  const [block] = [...h.blocks].find(([, b]) => b.latestAcked !== null)!;
  return block;
}

async function damage(file: string, offset: number, bytes: Buffer): Promise<void> {
  const fh = await fsp.open(file, 'r+');
  try {
    await fh.write(bytes, 0, bytes.length, offset);
  } finally {
    await fh.close();
  }
}

describe('check against a mirrorbd node', () => {
  it('writes, verifies, and names the block that was damaged under it', async () => {
    const n = await node();
    const log = path.join(await tempDir(), 'ack.log');
    const w = await check('write', n.uri, '--log', log, '--seconds', '2', '--blocks', '1024', '--flush-every', '32', '--fua-every', '50', '--json');
    expect(w.stderr).toBe('');
    expect(w.code).toBe(0);
    const result = JSON.parse(w.stdout) as { stop: string; writesAcked: number; writesUnanswered: number; finalFlush: boolean };
    expect(result).toMatchObject({ stop: 'done', writesUnanswered: 0, finalFlush: true });
    expect(result.writesAcked).toBeGreaterThan(0);

    const ok = await check('verify', n.uri, '--log', log);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(new RegExp(`^check: OK — ${result.writesAcked.toLocaleString('en-US')} acknowledged writes to [\\d,]+ blocks checked on ${n.uri}: 0 lost, 0 torn, 0 foreign\\n`));
    const crash = await check('verify', n.uri, '--log', log, '--crash', '--full-range', '--json');
    expect(crash.code).toBe(0);
    expect(JSON.parse(crash.stdout)).toMatchObject({ ok: true, mode: 'crash', blocksRead: 1024, counts: { lost: 0, torn: 0, foreign: 0 } });

    // The export and the data area of its disk are the same bytes.
    const same = await check('compare', n.uri, n.diskPath, '--data-area');
    expect(same.stdout).toMatch(/^check: OK — .* are identical/);
    expect(same.code).toBe(0);

    // Damage one acknowledged block in the backing file, under the running node.
    const block = await ackedBlock(log);
    await damage(n.diskPath, block * BLOCK + 1000, Buffer.from('not what was written'));
    const bad = await check('verify', n.uri, '--log', log);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/^check: FAILED — 0 lost, 1 torn, 0 foreign/);
    expect(bad.stdout).toContain(`TORN    block ${block} (offset ${block * BLOCK}): crc`);

    // Read from the disk itself, the verdict is the same; zeros there are a lost write.
    await damage(n.diskPath, block * BLOCK, Buffer.alloc(BLOCK));
    const lost = await check('verify', n.diskPath, '--log', log, '--json');
    expect(lost.code).toBe(1);
    expect(JSON.parse(lost.stdout)).toMatchObject({
      ok: false,
      counts: { lost: 1, torn: 0, foreign: 0 },
      violations: [{ kind: 'lost', block, offset: block * BLOCK }],
    });
  });

  it('keeps every acknowledged write across a kill -9 of the node mid-run, and goes on with --append', async () => {
    const n = await node();
    const log = path.join(await tempDir(), 'ack.log');
    const run = startCheck(['write', n.uri, '--log', log, '--seconds', '120', '--blocks', '2048', '--queue-depth', '16']);
    await until('1000 acknowledged writes', async () => (await ackLines(log)) >= 1000);
    const pid = (await n.daemonPid())!;
    process.kill(pid, 'SIGKILL');
    const w = await run.done;
    expect(w.code).toBe(0);
    expect(w.stdout).toMatch(/stopped: connection lost/);

    await mustSucceed(n.cli('up', 'r0'));
    await mustSucceed(n.cli('primary', 'r0'));
    const v = await check('verify', n.uri, '--log', log);
    expect(v.stdout).toMatch(/^check: OK — [\d,]+ acknowledged writes/);
    expect(v.code).toBe(0);
    expect((await check('verify', n.uri, '--log', log, '--crash')).code).toBe(0);

    // A second run on the same log: later sequences, the same blocks.
    const again = await check('write', n.uri, '--log', log, '--append', '--writes', '2000', '--json');
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ run: 2, stop: 'done', writesAcked: 2000 });
    const v2 = await check('verify', n.uri, '--log', log, '--json');
    expect(v2.code).toBe(0);
    expect(JSON.parse(v2.stdout)).toMatchObject({ ok: true, log: { runs: 2, complete: true } });
  });

  it('a Secondary refuses the writer: exit 2 and the server\'s reason', async () => {
    const n = await node({ secondary: true });
    const log = path.join(await tempDir(), 'ack.log');
    const r = await check('write', n.uri, '--log', log, '--writes', '10');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^mirrorbd: check: nbd:\/\/.*: the server refused export "r0" .*Secondary.* \[ERR_IO\]\n$/);
    await expect(fsp.stat(log)).rejects.toThrow(); // no log for a run that never started
  });
});

const noNbdkit = missingTools('nbdkit').length > 0;

describe.skipIf(noNbdkit)('check against nbdkit memory', () => {
  /** nbdkit daemonizes once it listens; its pid comes from its pid file. */
  async function startNbdkit(): Promise<string> {
    const dir = await tempDir();
    const port = await freePort();
    const pidFile = path.join(dir, 'nbdkit.pid');
    const child = spawn('nbdkit', ['-i', '127.0.0.1', '-p', String(port), '-P', pidFile, 'memory', '64M'], { stdio: 'ignore' });
    const code = await new Promise<number | null>((resolve, reject) => {
      child.on('error', reject);
      child.on('exit', resolve);
    });
    expect(code).toBe(0);
    await until('the nbdkit pid file', async () => Number((await fsp.readFile(pidFile, 'utf8').catch(() => '')).trim()) > 0, 10_000);
    pids.add(Number((await fsp.readFile(pidFile, 'utf8')).trim()));
    return `nbd://127.0.0.1:${port}/`;
  }

  it('passes on a server that keeps its writes, and finds every write lost by one that forgot them', async () => {
    const uri = await startNbdkit();
    const log = path.join(await tempDir(), 'ack.log');
    const w = await check('write', uri, '--log', log, '--writes', '3000', '--queue-depth', '16', '--blocks', '512', '--json');
    expect(w.code).toBe(0);
    expect(JSON.parse(w.stdout)).toMatchObject({ stop: 'done', writesAcked: 3000 });
    const ok = await check('verify', uri, '--log', log);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^check: OK — 3,000 acknowledged writes/);

    // A fresh memory server in its place has lost everything that was acknowledged.
    const empty = await startNbdkit();
    const v = await check('verify', empty, '--log', log, '--json');
    expect(v.code).toBe(1);
    const report = JSON.parse(v.stdout) as { counts: { lost: number }; checkedBlocks: number; violations: Array<{ kind: string; detail: string }> };
    expect(report.counts.lost).toBe(report.checkedBlocks);
    expect(report.violations[0]).toMatchObject({ kind: 'lost', detail: expect.stringMatching(/^holds zeros; write \d+ was acknowledged$/) });
  });
});

describe('check compare', () => {
  it('identical files pass; differing blocks are counted and located', async () => {
    const dir = await tempDir();
    const a = path.join(dir, 'a.img');
    const b = path.join(dir, 'b.img');
    const data = Buffer.alloc(256 * BLOCK);
    for (let i = 0; i < data.length; i += 7) data[i] = i & 0xff;
    await fsp.writeFile(a, data);
    await fsp.writeFile(b, data);
    const same = await check('compare', a, b);
    expect(same.code).toBe(0);
    expect(same.stdout).toBe(`check: OK — ${a} and ${b} are identical (1,048,576 bytes from offset 0, 256 blocks)\n`);

    for (const block of [3, 4, 200]) await damage(b, block * BLOCK + 17, Buffer.from([0xee]));
    const differ = await check('compare', a, b);
    expect(differ.code).toBe(1);
    expect(differ.stdout).toMatch(/^check: FAILED — 3 of 256 blocks differ between /);
    expect(differ.stdout).toContain('differing blocks at offsets 12288, 16384, 819200\n');
    const json = await check('compare', a, b, '--json', '--offset', '16384', '--size', '64K');
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: false, differingBlocks: 1, blocksCompared: 16, firstDifferences: [16384] });

    await fsp.truncate(b, 128 * BLOCK);
    const shorter = await check('compare', a, b);
    expect(shorter.code).toBe(1);
    expect(shorter.stdout).toMatch(/the sizes differ \(1,048,576 and 524,288 bytes\)/);
  });
});

describe('check usage and connection errors exit 2', () => {
  it('says what is wrong in one line', async () => {
    const dir = await tempDir();
    const log = path.join(dir, 'ack.log');
    const port = await freePort();

    const refused = await check('write', `nbd://127.0.0.1:${port}/r0`, '--log', log, '--writes', '1');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/^mirrorbd: check: nbd:\/\/127\.0\.0\.1:\d+\/r0: cannot connect: .*ECONNREFUSED.* \[ERR_IO\]\n$/);

    const noLog = await check('verify', 'some.img', '--log', path.join(dir, 'missing.log'));
    expect(noLog.code).toBe(2);
    expect(noLog.stderr).toMatch(/missing\.log: cannot read the check log: .*ENOENT/);

    const tls = await check('write', 'nbds://127.0.0.1/r0', '--log', log);
    expect(tls.code).toBe(2);
    expect(tls.stderr).toMatch(/TLS \(nbds\) is not supported/);

    const both = await check('write', 'nbd://127.0.0.1/r0', '--log', log, '--seconds', '1', '--writes', '5');
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/cannot be used with/);

    const unreadable = await check('compare', path.join(dir, 'nope-a'), path.join(dir, 'nope-b'));
    expect(unreadable.code).toBe(2);
    expect(unreadable.stderr).toMatch(/nope-a: cannot open/);
  });
});

describe('check as a library', () => {
  it('writeCheck, verifyCheck and compareCheck do what the verbs do', async () => {
    const n = await node();
    const logPath = path.join(await tempDir(), 'ack.log');
    const run = await writeCheck({ uri: n.uri, logPath, writes: 500, blocks: 256, queueDepth: 4, seed: 1 });
    expect(run).toMatchObject({ logPath, stop: 'done', writesAcked: 500, finalFlush: true });
    const report = await verifyCheck({ target: n.uri, logPath, mode: 'crash' });
    expect(report).toMatchObject({ ok: true, checkedWrites: 500, logId: run.logId });
    expect((await compareCheck({ a: n.uri, b: n.diskPath, dataArea: true })).ok).toBe(true);
  });
});
