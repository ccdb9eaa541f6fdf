/**
 * Two data nodes and a witness on loopback, as real daemons driven through
 * the CLI and real NBD clients: the witness votes without a disk, a Primary
 * that dies is replaced automatically by exactly one node with every
 * acknowledged write (G4, G1), a Primary without quorum suspends or fails
 * its I/O, the witness breaks the tie for the node that held quorum, a node
 * that leaves gracefully does not count against quorum, and `primary`
 * without quorum is refused.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { expectSameData } from '../helpers/disk-data.js';
import { mustSucceed } from '../helpers/single-node.js';
import { missingTools } from '../helpers/tools.js';
import { expectAckedReadBack, openExport, scatteredOrder, stampedWriteLoad } from './helpers/stamped-writes.js';
import {
  daemonLog,
  makeTrio,
  peerOf,
  statusOf,
  waitForAllConnected,
  waitForStatus,
  type Trio,
  type TrioNode,
  type TrioOptions,
} from './roles/trio.js';

const MiB = 1024 * 1024;
const missing = missingTools('qemu-io', 'nbdsh');
const QUORUM_AUTO = 'quorum majority; auto-promote yes;';

const trios: Trio[] = [];
const sessions = new Set<NbdshSession>();
afterEach(async (ctx) => {
  const failed = ctx.task.result?.state === 'fail';
  for (const s of sessions) s.kill();
  while (trios.length > 0) {
    const t = trios.pop()!;
    if (failed) for (const n of t.nodes) console.error(await daemonLog(n));
    await t.stop();
  }
});

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a client to its end (killed after timeoutMs: nothing here may hang a test). */
function run(cmd: string, args: string[], timeoutMs = 30_000): Promise<RunResult> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise<RunResult>((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    }),
  );
}

/** qemu-io commands against a node's export; throws with stderr unless it succeeds. */
async function qemuIo(n: TrioNode, ...commands: string[]): Promise<string> {
  const r = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), n.uri]);
  // qemu-io reports a failed read/write or a pattern mismatch on stdout/stderr but may still exit 0.
  if (r.code !== 0 || /failed|Pattern verification|error/i.test(r.stdout + r.stderr)) {
    throw new Error(`qemu-io ${commands.join('; ')} on ${n.name} failed (exit ${r.code}): ${r.stdout}${r.stderr}`);
  }
  return r.stdout;
}

/**
 * An nbdsh process holding one connection to a node's export: it connects,
 * says READY, then runs one write (+ flush) per line of its stdin and
 * answers OK or the NBD error (ERRNO EIO ...). A real client that was
 * connected before the cluster changed under it.
 */
class NbdshSession {
  private lines: string[] = [];
  private waiting: ((line: string) => void) | null = null;
  private stderr = '';
  private readonly child: ChildProcess;
  readonly exited: Promise<number>;

  constructor(uri: string) {
    const script = [
      'import sys, errno',
      `h.connect_uri(${JSON.stringify(uri)})`,
      'print("READY", flush=True)',
      'for line in sys.stdin:',
      '    off, length, byte = (int(x) for x in line.split())',
      '    try:',
      '        h.pwrite(bytes([byte]) * length, off)',
      '        h.flush()',
      '        print("OK", flush=True)',
      '    except nbd.Error as e:',
      '        print("ERRNO", errno.errorcode.get(e.errno, e.errno), e.string.replace("\\n", " "), flush=True)',
    ].join('\n');
    // nbdsh runs the first python3 on PATH: the system's has the libnbd bindings.
    this.child = spawn('nbdsh', ['-c', script], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` } });
    sessions.add(this);
    let buffered = '';
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buffered += d;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        this.lines.push(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
      this.wake();
    });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.exited = new Promise((resolve) =>
      this.child.on('close', (code) => {
        sessions.delete(this);
        this.lines.push(`EXITED ${code ?? -1} ${this.stderr.trim()}`);
        this.wake();
        resolve(code ?? -1);
      }),
    );
  }

  private wake(): void {
    if (this.waiting && this.lines.length > 0) {
      const w = this.waiting;
      this.waiting = null;
      w(this.lines.shift()!);
    }
  }

  /** The next line the script prints (READY, OK, ERRNO ..., or EXITED when it died). */
  nextLine(timeoutMs = 30_000): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = null;
        reject(new Error(`nbdsh said nothing within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting = (line) => {
        clearTimeout(timer);
        resolve(line);
      };
      this.wake();
    });
  }

  static async open(n: TrioNode): Promise<NbdshSession> {
    const s = new NbdshSession(n.uri);
    const first = await s.nextLine();
    if (first !== 'READY') throw new Error(`nbdsh could not connect to ${n.name}: ${first}`);
    return s;
  }

  /** Starts a write; its answer is the next line. */
  write(offset: number, length: number, byte: number): Promise<string> {
    this.child.stdin!.write(`${offset} ${length} ${byte}\n`);
    return this.nextLine(60_000);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  async close(): Promise<void> {
    this.child.stdin!.end();
    const timer = setTimeout(() => this.kill(), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

/** One write with a fresh nbdsh connection: OK or ERRNO ... (or EXITED when it could not connect). */
async function nbdshWrite(n: TrioNode, offset: number, length: number, byte: number): Promise<string> {
  const s = new NbdshSession(n.uri);
  try {
    const first = await s.nextLine();
    if (first !== 'READY') return first;
    return await s.write(offset, length, byte);
  } finally {
    await s.close();
  }
}

/** create-md on the data nodes, up everywhere (the witness needs no create-md), all connected. */
async function trioUp(opts: TrioOptions = {}): Promise<Trio> {
  const t = await makeTrio(opts);
  trios.push(t);
  for (const n of [t.alpha, t.beta]) await mustSucceed(n.cli('create-md', 'r0'));
  for (const n of t.nodes) await n.up();
  await waitForAllConnected(t.nodes);
  return t;
}

/** trioUp, then alpha Primary and beta UpToDate after the initial sync. */
async function trioWithPrimary(opts: TrioOptions = {}): Promise<Trio> {
  const t = await trioUp(opts);
  await mustSucceed(t.alpha.cli('primary', 'r0', '--force'));
  await waitForStatus(t.beta, (s) => s.disk === 'UpToDate' && peerOf(s, 'alpha').replication === 'Established');
  await waitForStatus(t.alpha, (s) => peerOf(s, 'beta').peerDisk === 'UpToDate' && peerOf(s, 'beta').replication === 'Established');
  return t;
}

/**
 * Writes stamped blocks (queue depth 4) into blocks [first, first + count)
 * through `n`'s export until the connection breaks or `count` are done;
 * returns what was acknowledged. `onAcked` runs after each acknowledgement
 * (to pull the trigger).
 */
async function writeUntilBroken(n: TrioNode, first: number, count: number, onAcked: (n: number) => void): Promise<Map<number, number>> {
  const c = await openExport(n.nbdPort);
  try {
    return (await stampedWriteLoad(c, { order: scatteredOrder(count, first), queueDepth: 4, onAcked, errorReply: 'end' })).acked;
  } finally {
    c.destroy();
  }
}

/** Every acknowledged stamped block reads back from `n`'s export. */
async function expectAcked(n: TrioNode, acked: Map<number, number>): Promise<void> {
  const reader = await openExport(n.nbdPort);
  try {
    await expectAckedReadBack(reader, acked, n.name);
  } finally {
    reader.destroy();
  }
}

async function primaries(t: Trio, among: readonly TrioNode[] = t.nodes): Promise<string[]> {
  const out: string[] = [];
  for (const n of among) if ((await statusOf(n)).role === 'Primary') out.push(n.name);
  return out;
}

/** Has the process ended? (signal 0 probes it) */
function alive(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(missing.length > 0)('the witness', () => {
  it('comes up without a disk, connects to both data nodes, and every node counts quorum with it', async () => {
    const t = await trioUp({ options: QUORUM_AUTO });
    const w = await statusOf(t.witness);
    expect(w.diskless).toBe(true);
    expect(w.disk).toBe('Diskless');
    expect(w.role).toBe('Secondary');
    expect(peerOf(w, 'alpha').connection).toBe('Connected');
    expect(peerOf(w, 'beta').connection).toBe('Connected');
    for (const n of [t.alpha, t.beta]) {
      const s = await statusOf(n);
      expect(s.diskless).toBe(false);
      expect(peerOf(s, 'witness').diskless).toBe(true);
      expect(peerOf(s, 'witness').connection).toBe('Connected');
    }
    for (const n of t.nodes) {
      const s = await statusOf(n);
      expect(s.quorum.setting).toBe('majority');
      // two voters (the data nodes) both reachable; the witness breaks ties, it does not vote
      expect(s.quorum).toMatchObject({ have: true, voters: 2, votes: 2, needed: 2 });
      expect(s.suspended).toEqual([]);
    }
    // the witness is never a promotion candidate
    expect((await statusOf(t.alpha)).promotion.candidates).not.toContain('witness');
  });
});

describe.skipIf(missing.length > 0)('automatic failover (quorum majority, auto-promote yes)', () => {
  it('kill -9 of the Primary: beta promotes itself, serves reads and writes, and has every acknowledged write', async () => {
    const t = await trioWithPrimary({ options: QUORUM_AUTO });
    // a pattern written and acknowledged by a real client
    await qemuIo(t.alpha, 'write -P 0xa5 0 1M', 'write -P 0x5a 4M 512k', 'flush');
    // and a load in flight when the Primary dies
    let killed: Promise<void> | null = null;
    const acked = await writeUntilBroken(t.alpha, 2048, 1024, (n) => {
      if (n === 200) killed = t.alpha.killHard();
    });
    expect(killed).not.toBeNull();
    await killed;
    expect(acked.size).toBeGreaterThanOrEqual(200);

    const beta = await waitForStatus(t.beta, (s) => s.role === 'Primary', 15_000);
    expect(beta.roleReason).toMatch(/^auto-promote/);
    expect(beta.quorum.have).toBe(true);
    expect((await statusOf(t.witness)).role).toBe('Secondary');

    await qemuIo(t.beta, 'read -P 0xa5 0 1M', 'read -P 0x5a 4M 512k');
    await expectAcked(t.beta, acked);
    await qemuIo(t.beta, 'write -P 0x3c 12M 1M', 'flush', 'read -P 0x3c 12M 1M');
    expect(await nbdshWrite(t.beta, 14 * MiB, 64 * 1024, 0x42)).toBe('OK');
  });

  it('only beta promotes, never the witness; alpha comes back as Secondary, resyncs, and there is exactly one Primary', async () => {
    const t = await trioWithPrimary({ options: QUORUM_AUTO });
    const logs = { beta: await t.followEvents(t.beta), witness: await t.followEvents(t.witness) };
    await qemuIo(t.alpha, 'write -P 0x11 0 2M', 'flush');
    await t.alpha.killHard();

    await logs.beta.waitFor((e) => e.type === 'role' && e.to === 'Primary');
    await logs.beta.waitFor((e) => e.type === 'failover');
    // the promotion was agreed with the witness, the only peer left
    const twopc = await logs.beta.waitFor((e) => e.type === 'twopc' && e.committed === true);
    expect(twopc.peers).toEqual(['witness']);
    expect(await primaries(t, [t.beta, t.witness])).toEqual(['beta']);
    // beta writes on without alpha
    await qemuIo(t.beta, 'write -P 0x22 1M 2M', 'flush');

    await t.alpha.up();
    const alpha = await waitForStatus(t.alpha, (s) => peerOf(s, 'beta').replication === 'Established' && s.disk === 'UpToDate', 30_000);
    expect(alpha.role).toBe('Secondary');
    expect(peerOf(alpha, 'beta').role).toBe('Primary');
    await waitForStatus(t.beta, (s) => peerOf(s, 'alpha').peerDisk === 'UpToDate' && peerOf(s, 'alpha').outOfSyncBytes === 0);
    await waitForAllConnected(t.nodes);
    expect(await primaries(t)).toEqual(['beta']);
    // the witness never changed its role; beta changed it once
    expect(logs.witness.events.filter((e) => e.type === 'role')).toEqual([]);
    expect(logs.beta.events.filter((e) => e.type === 'role' && e.to === 'Primary')).toHaveLength(1);
    // alpha took what beta wrote without it
    await expectSameData([t.alpha, t.beta], (await statusOf(t.beta)).sizeBytes);
    await qemuIo(t.beta, 'read -P 0x11 0 1M', 'read -P 0x22 1M 2M');
  });
});

describe.skipIf(missing.length > 0)('a Primary that loses quorum', () => {
  it('on-no-quorum suspend-io: a write waits while quorum is missing and completes when a data peer returns', async () => {
    const t = await trioWithPrimary({ options: 'quorum majority; on-no-quorum suspend-io; auto-promote yes;' });
    const events = await t.followEvents(t.alpha);
    const client = await NbdshSession.open(t.alpha);
    expect(await client.write(0, 64 * 1024, 0x76)).toBe('OK');
    await t.witness.killHard();
    await t.beta.killHard();
    const lostEvent = await events.waitFor((e) => e.type === 'quorum' && e.have === false);
    expect(lostEvent).toMatchObject({ votes: 1, needed: 2 });
    const lost = await waitForStatus(t.alpha, (s) => !s.quorum.have);
    expect(lost.role).toBe('Primary');
    expect(lost.suspended).toContain('no quorum');
    expect(lost.quorum).toMatchObject({ votes: 1, voters: 2, needed: 2 });

    const pending = client.write(0, 64 * 1024, 0x77);
    // The write stays pending as long as quorum is missing: give it ample
    // time to complete if it were (wrongly) let through.
    const early = await Promise.race([pending, new Promise<null>((r) => setTimeout(() => r(null), 3000))]);
    expect(early).toBeNull();
    expect(alive(client.pid)).toBe(true);
    expect((await statusOf(t.alpha)).suspended).toContain('no quorum');

    await t.beta.up();
    expect(await pending).toBe('OK');
    await events.waitFor((e) => e.type === 'quorum' && e.have === true);
    const back = await statusOf(t.alpha);
    expect(back.quorum.have).toBe(true);
    expect(back.suspended).toEqual([]);
    await client.close();
    await qemuIo(t.alpha, 'read -P 0x77 0 64k');
    // and it reaches beta
    await waitForStatus(t.beta, (s) => s.disk === 'UpToDate' && peerOf(s, 'alpha').replication === 'Established');
  });

  it('on-no-quorum io-error: a write fails with EIO while quorum is missing and succeeds when a data peer returns', async () => {
    const t = await trioWithPrimary({ options: 'quorum majority; on-no-quorum io-error; auto-promote yes;' });
    const events = await t.followEvents(t.alpha);
    const client = await NbdshSession.open(t.alpha);
    expect(await client.write(0, 64 * 1024, 0x65)).toBe('OK');
    await t.beta.killHard();
    await t.witness.killHard();
    await events.waitFor((e) => e.type === 'quorum' && e.have === false);
    const lost = await waitForStatus(t.alpha, (s) => !s.quorum.have);
    expect(lost.role).toBe('Primary');
    expect(lost.suspended).toEqual([]);

    expect(await client.write(0, 64 * 1024, 0x66)).toMatch(/^ERRNO EIO/);
    // a client that connects now is turned away at the handshake
    expect(await nbdshWrite(t.alpha, 0, 64 * 1024, 0x66)).toMatch(/^EXITED/);

    await t.beta.up();
    await waitForStatus(t.alpha, (s) => s.quorum.have);
    expect(await client.write(0, 64 * 1024, 0x67)).toBe('OK');
    await client.close();
    await qemuIo(t.alpha, 'read -P 0x67 0 64k');
  });
});

describe.skipIf(missing.length > 0)('the witness breaks ties', () => {
  it('the witness dies and returns; then beta dies and alpha keeps quorum through the witness', async () => {
    const t = await trioWithPrimary({ options: QUORUM_AUTO });
    await t.witness.killHard();
    const two = await waitForStatus(t.alpha, (s) => peerOf(s, 'witness').connection !== 'Connected');
    // 2 of 2 voters: the witness does not vote
    expect(two.quorum).toMatchObject({ have: true, votes: 2, voters: 2, needed: 2 });
    await qemuIo(t.alpha, 'write -P 0x31 0 256k', 'flush');

    await t.witness.up();
    await waitForAllConnected(t.nodes);
    const w = await statusOf(t.witness);
    expect(w.quorum.have).toBe(true);
    expect(w.role).toBe('Secondary');

    await t.beta.killHard();
    const tie = await waitForStatus(t.alpha, (s) => peerOf(s, 'beta').connection !== 'Connected');
    expect(tie.quorum.have).toBe(true);
    expect(tie.quorum).toMatchObject({ votes: 1, voters: 2, needed: 2 });
    expect(tie.quorum.reason).toMatch(/tie broken/);
    expect(tie.suspended).toEqual([]);
    expect(tie.role).toBe('Primary');
    await qemuIo(t.alpha, 'write -P 0x32 256k 256k', 'flush', 'read -P 0x31 0 256k', 'read -P 0x32 256k 256k');
    // the witness, too, still sees a quorum: the Primary and itself
    expect((await statusOf(t.witness)).quorum.have).toBe(true);
  });

  it('a graceful down of beta leaves alpha the last man standing: it keeps quorum, even without the witness', async () => {
    const t = await trioWithPrimary({ options: QUORUM_AUTO });
    await mustSucceed(t.beta.cli('down', 'r0'));
    const left = await waitForStatus(t.alpha, (s) => peerOf(s, 'beta').connection !== 'Connected');
    expect(peerOf(left, 'beta').leftGracefully).toBe(true);
    // beta no longer votes: 1 voter, 1 needed
    expect(left.quorum).toMatchObject({ have: true, votes: 1, voters: 1, needed: 1, reason: '1 of 1 votes, 1 needed (majority)' });
    expect(left.suspended).toEqual([]);

    await t.witness.killHard();
    const alone = await waitForStatus(t.alpha, (s) => peerOf(s, 'witness').connection !== 'Connected');
    expect(alone.quorum).toMatchObject({ have: true, votes: 1, voters: 1, needed: 1 });
    await qemuIo(t.alpha, 'write -P 0x44 0 256k', 'flush', 'read -P 0x44 0 256k');

    // beta returns and votes again
    await t.beta.up();
    const back = await waitForStatus(t.alpha, (s) => peerOf(s, 'beta').replication === 'Established' && peerOf(s, 'beta').peerDisk === 'UpToDate');
    expect(peerOf(back, 'beta').leftGracefully).toBe(false);
    expect(back.quorum).toMatchObject({ have: true, votes: 2, voters: 2, needed: 2 });
  });
});

describe.skipIf(missing.length > 0)('promotion without quorum', () => {
  it('primary is refused with ERR_NO_QUORUM, also after the witness returns; --force overrides', async () => {
    const t = await trioWithPrimary({ options: 'quorum majority; auto-promote no;' });
    await t.alpha.killHard();
    // beta held quorum with the witness (tie broken) and stays Secondary without auto-promote
    const held = await waitForStatus(t.beta, (s) => peerOf(s, 'alpha').connection !== 'Connected');
    expect(held.quorum.have).toBe(true);
    expect(held.role).toBe('Secondary');
    await t.witness.killHard();
    const lost = await waitForStatus(t.beta, (s) => !s.quorum.have);
    expect(lost.disk).toBe('UpToDate');

    const refused = await t.beta.cli('primary', 'r0');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/no quorum/);
    expect(refused.stderr).toMatch(/ERR_NO_QUORUM/);
    expect(refused.stderr.trim().split('\n')).toHaveLength(1);
    expect((await statusOf(t.beta)).role).toBe('Secondary');

    // a witness alone never gives quorum back
    await t.witness.up();
    const withWitness = await waitForStatus(t.beta, (s) => peerOf(s, 'witness').connection === 'Connected');
    expect(withWitness.quorum.have).toBe(false);
    expect(withWitness.quorum.reason).toMatch(/only keeps quorum held before/);
    const again = await t.beta.cli('primary', 'r0');
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/ERR_NO_QUORUM/);

    await mustSucceed(t.beta.cli('primary', 'r0', '--force'));
    expect((await statusOf(t.beta)).role).toBe('Primary');
  });
});
