/**
 * Two daemons on loopback replicating one resource, driven through the CLI
 * and real NBD clients: initial sync, every protocol, role switch, bitmap
 * resync after a disconnect, and authentication.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { expectSameData } from '../helpers/disk-data.js';
import { makePair, statusOf, upPair, waitForStatus, type Pair, type PairNode } from '../helpers/pair.js';
import { mustSucceed, runCli } from '../helpers/single-node.js';
import { missingTools } from '../helpers/tools.js';

const missing = missingTools('nbdcopy', 'qemu-io');

const pairs: Pair[] = [];
afterEach(async () => {
  while (pairs.length > 0) await pairs.pop()!.stop();
});

async function pair(opts: Parameters<typeof makePair>[0] = {}): Promise<Pair> {
  const p = await makePair(opts);
  pairs.push(p);
  return p;
}

function run(cmd: string, args: string[]): Promise<{ code: number; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code: code ?? -1, stderr, stdout }));
  });
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** Bring a fresh pair up, make alpha Primary and wait for the initial full sync. */
async function syncedPair(opts: Parameters<typeof makePair>[0] = {}): Promise<Pair> {
  const p = await pair(opts);
  await upPair(p);
  await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'Connected');
  await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
  await waitForStatus(p.beta, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established');
  await waitForStatus(p.alpha, (s) => s.peers[0]?.peerDisk === 'UpToDate' && s.peers[0]?.replication === 'Established');
  return p;
}

async function expectPairSameData(p: Pair): Promise<void> {
  await expectSameData(p.nodes, (await statusOf(p.alpha)).sizeBytes);
}

async function bytesSentTo(n: PairNode): Promise<number> {
  const s = (await statusOf(n)) as unknown as { peers: Array<{ bytesSent: number }> };
  return s.peers[0]!.bytesSent;
}

describe.skipIf(missing.length > 0)('two nodes replicating', () => {
  it('primary --force on one node starts the initial full sync; the other ends UpToDate with the same data', async () => {
    const p = await syncedPair();
    const beta = await statusOf(p.beta);
    expect(beta.role).toBe('Secondary');
    expect(beta.peers[0]).toMatchObject({ node: 'alpha', role: 'Primary', connection: 'Connected', replication: 'Established' });
    await expectPairSameData(p);
  });

  for (const protocol of ['A', 'B', 'C'] as const) {
    it(`protocol ${protocol}: data written through nbdcopy on the Primary reads back identical from the other node after a role switch`, async () => {
      const p = await syncedPair({ net: `protocol ${protocol};` });
      const src = path.join(p.dir, 'src.bin');
      const out = path.join(p.dir, 'out.bin');
      await fsp.writeFile(src, randomBytes(16 * 1024 * 1024));
      await must('nbdcopy', ['--flush', src, p.alpha.uri]);
      const alpha = await statusOf(p.alpha);
      expect(alpha.peers[0]!.outOfSyncBytes).toBe(0);
      await mustSucceed(p.alpha.cli('secondary', 'r0'));
      await mustSucceed(p.beta.cli('primary', 'r0'));
      await must('nbdcopy', [p.beta.uri, out]);
      const a = await fsp.readFile(src);
      const b = (await fsp.readFile(out)).subarray(0, a.length);
      expect(b.equals(a)).toBe(true);
      await expectPairSameData(p);
    });
  }

  it('disconnect, write 1 % of the blocks, reconnect: the resync moves about 1 % and the disks end identical', async () => {
    const p = await syncedPair();
    const size = (await statusOf(p.alpha)).sizeBytes;
    await mustSucceed(p.alpha.cli('disconnect', 'r0'));
    await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'StandAlone');
    // 1 % of the 4 KiB blocks, scattered
    const blocks = size / 4096;
    const dirty = Math.round(blocks / 100);
    const cmds: string[] = [];
    for (let i = 0; i < dirty; i++) cmds.push('-c', `write -P ${(i % 250) + 1} ${Math.floor((i * blocks) / dirty) * 4096} 4k`);
    await must('qemu-io', ['-f', 'raw', ...cmds, p.alpha.uri]);
    const marked = (await statusOf(p.alpha)).peers[0]!.outOfSyncBytes!;
    expect(marked).toBe(dirty * 4096);
    const before = await bytesSentTo(p.alpha);
    await mustSucceed(p.alpha.cli('connect', 'r0'));
    await waitForStatus(p.alpha, (s) => s.peers[0]?.replication === 'Established' && s.peers[0]?.outOfSyncBytes === 0);
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate');
    const moved = (await bytesSentTo(p.alpha)) - before;
    // the blocks themselves plus packet headers and the handshake: ~1 %, far from the whole disk
    expect(moved).toBeGreaterThanOrEqual(dirty * 4096);
    expect(moved).toBeLessThan(size * 0.02);
    await expectPairSameData(p);
  });

  it('scattered blocks are asked for in batches (RS_BATCH), writes during the resync win, and the disks end identical', async () => {
    // 1 MiB/s: a resync of a few seconds, so that the client writes while it
    // runs. Two fresh disks agree without an initial sync (which that rate
    // would make a minute long).
    const p = await pair({ disk: 'resync-rate 1M;' });
    await upPair(p);
    await waitForStatus(p.alpha, (s) => s.peers[0]?.replication === 'Established');
    await mustSucceed(p.alpha.cli('new-current-uuid', 'r0', '--clear-bitmap'));
    await waitForStatus(p.alpha, (s) => s.disk === 'UpToDate' && s.peers[0]?.peerDisk === 'UpToDate');
    await mustSucceed(p.alpha.cli('primary', 'r0'));
    const size = (await statusOf(p.alpha)).sizeBytes;
    await mustSucceed(p.alpha.cli('disconnect', 'r0'));
    await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'StandAlone');
    // every 25th 4 KiB block: 4 %, scattered
    const blocks = size / 4096;
    const cmds: string[] = [];
    for (let b = 0; b < blocks; b += 25) cmds.push('-c', `write -P ${(b % 200) + 1} ${b * 4096} 4k`);
    await must('qemu-io', ['-f', 'raw', ...cmds, p.alpha.uri]);
    const dirty = cmds.length / 2;
    expect((await statusOf(p.alpha)).peers[0]!.outOfSyncBytes).toBe(dirty * 4096);
    const received = async (): Promise<number> => ((await statusOf(p.alpha)).peers[0] as unknown as { bytesReceived: number }).bytesReceived;
    const before = await received();
    await mustSucceed(p.alpha.cli('connect', 'r0'));
    await waitForStatus(p.beta, (s) => s.peers[0]?.replication === 'SyncTarget');
    // while it copies: overwrite marked blocks near the end (not copied yet) and their clean neighbours
    const late = Math.floor(blocks / 25) * 25 - 25 * 20;
    const writes: string[] = [];
    for (let b = late; b < blocks; b += 25) writes.push('-c', `write -P 0xee ${b * 4096} 8k`);
    await must('qemu-io', ['-f', 'raw', ...writes, p.alpha.uri]);
    expect((await statusOf(p.beta)).peers[0]?.replication).toBe('SyncTarget');
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established', 60_000);
    await waitForStatus(p.alpha, (s) => s.peers[0]?.outOfSyncBytes === 0);
    // What the SyncSource received over the reconnect: the handshake and
    // beta's bitmap, then a request and an acknowledgement per batch. One
    // request (32 bytes) and one RS_WRITE_ACK (20 bytes) per block would be
    // 52 bytes a block; batches of many blocks take far less.
    const perBlock = ((await received()) - before) / dirty;
    expect(perBlock).toBeLessThan(30);
    await must('qemu-io', ['-f', 'raw', '-c', `read -P 0xee ${late * 4096} 8k`, p.alpha.uri]);
    await expectPairSameData(p);
  }, 90_000);

  it('a peer with the wrong shared secret is refused before it can send data', async () => {
    const p = await pair({ net: 'shared-secret "right";' });
    // beta's own copy of the config with another secret
    const wrong = path.join(p.dir, 'beta.conf');
    await fsp.writeFile(wrong, (await fsp.readFile(p.configFile, 'utf8')).replace('"right"', '"wrong"'));
    const betaCli = (...args: string[]) => runCli(wrong, 'beta', args);
    await mustSucceed(p.alpha.cli('create-md', 'r0'));
    await mustSucceed(betaCli('create-md', 'r0'));
    await mustSucceed(p.alpha.cli('up', 'r0'));
    await mustSucceed(betaCli('up', 'r0'));
    await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
    const s = await waitForStatus(p.alpha, (x) => ((x.peers[0] as unknown as { lastError: string | null }).lastError ?? '').includes('authentication'));
    expect(s.peers[0]!.connection).toBe('Connecting');
    const betaStatus = JSON.parse((await mustSucceed(betaCli('status', 'r0', '--json'))).stdout)[0] as { disk: string; peers: Array<{ connection: string }> };
    expect(betaStatus.disk).toBe('Inconsistent');
    expect(betaStatus.peers[0]!.connection).not.toBe('Connected');
  });
});

describe.skipIf(missing.length > 0)('operator verbs on a pair', () => {
  it('verify finds a block changed behind mirrorbd, marks only it, and the next connect repairs it', async () => {
    const p = await syncedPair();
    await mustSucceed(p.alpha.cli('verify', 'r0'));
    let s = await waitForStatus(p.alpha, (x) => (x.peers[0] as unknown as { verify: { finished: boolean } | null }).verify?.finished === true);
    expect((s.peers[0] as unknown as { verify: { outOfSyncBlocks: number } }).verify.outOfSyncBlocks).toBe(0);
    // change one block of beta's disk directly
    const fh = await fsp.open(p.beta.diskPath, 'r+');
    await fh.write(Buffer.alloc(4096, 0xee), 0, 4096, 5 * 1024 * 1024);
    await fh.close();
    await mustSucceed(p.alpha.cli('verify', 'r0'));
    s = await waitForStatus(p.alpha, (x) => {
      const v = (x.peers[0] as unknown as { verify: { finished: boolean; doneBytes: number } | null }).verify;
      return v?.finished === true && x.peers[0]!.replication === 'Established';
    });
    expect((s.peers[0] as unknown as { verify: { outOfSyncBlocks: number } }).verify.outOfSyncBlocks).toBe(1);
    expect(s.peers[0]!.outOfSyncBytes).toBe(4096);
    await mustSucceed(p.alpha.cli('disconnect', 'r0'));
    await mustSucceed(p.alpha.cli('connect', 'r0'));
    await waitForStatus(p.alpha, (x) => x.peers[0]?.replication === 'Established' && x.peers[0]?.outOfSyncBytes === 0);
    await waitForStatus(p.beta, (x) => x.disk === 'UpToDate');
    await expectPairSameData(p);
  });

  it('new-current-uuid --clear-bitmap skips the initial sync of two fresh disks', async () => {
    const p = await pair();
    await upPair(p);
    await waitForStatus(p.alpha, (s) => s.peers[0]?.replication === 'Established');
    const before = await bytesSentTo(p.alpha);
    await mustSucceed(p.alpha.cli('new-current-uuid', 'r0', '--clear-bitmap'));
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate');
    const a = await waitForStatus(p.alpha, (s) => s.disk === 'UpToDate' && s.peers[0]?.peerDisk === 'UpToDate');
    expect(a.peers[0]!.outOfSyncBytes).toBe(0);
    expect((await bytesSentTo(p.alpha)) - before).toBeLessThan(64 * 1024);
    // the pair is usable at once: promote without --force and replicate
    await mustSucceed(p.alpha.cli('primary', 'r0'));
    await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 64k', p.alpha.uri]);
    await mustSucceed(p.alpha.cli('secondary', 'r0'));
    await mustSucceed(p.beta.cli('primary', 'r0'));
    await must('qemu-io', ['-f', 'raw', '-c', 'read -P 0x42 0 64k', p.beta.uri]);
  });

  it('invalidate on the Secondary makes it Inconsistent and copies everything from the Primary again', async () => {
    const p = await syncedPair();
    const size = (await statusOf(p.alpha)).sizeBytes;
    const before = await bytesSentTo(p.alpha);
    await mustSucceed(p.beta.cli('invalidate', 'r0'));
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established');
    expect((await bytesSentTo(p.alpha)) - before).toBeGreaterThanOrEqual(size);
    const refused = await p.alpha.cli('invalidate', 'r0');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/ERR_ROLE/);
  });

  it('events --json streams the role change and the sync decision in order', async () => {
    const p = await pair();
    await upPair(p);
    await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'Connected');
    const child = spawn(process.execPath, [path.resolve('dist/src/cli/main.js'), '-c', p.configFile, '--node', 'alpha', 'events', 'r0', '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await new Promise((r) => setTimeout(r, 500));
      await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
      await waitForStatus(p.beta, (s) => s.disk === 'UpToDate');
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      child.kill('SIGINT');
    }
    const events = out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { seq: number; type: string; to?: string; strategy?: string });
    const seqs = events.map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    const role = events.findIndex((e) => e.type === 'role' && e.to === 'Primary');
    const decision = events.findIndex((e) => e.type === 'sync-decision' && e.strategy === 'source-full-sync');
    const done = events.findIndex((e) => e.type === 'resync-done');
    expect(role).toBeGreaterThanOrEqual(0);
    expect(decision).toBeGreaterThan(role);
    expect(done).toBeGreaterThan(decision);
  });
});

describe.skipIf(missing.length > 0)('detach and attach', () => {
  it('a Primary that detaches its disk keeps serving reads and writes through its UpToDate peer, and as SyncTarget on attach', async () => {
    const p = await syncedPair();
    await mustSucceed(p.alpha.cli('detach', 'r0'));
    const a = await statusOf(p.alpha);
    expect(a).toMatchObject({ role: 'Primary', disk: 'Diskless' });
    await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 8M 1M', '-c', 'read -P 0x77 8M 1M', p.alpha.uri]);
    // beta remembers what alpha's own disk is missing
    await waitForStatus(p.beta, (s) => s.peers[0]!.outOfSyncBytes === 1024 * 1024);
    // The Primary takes its disk back while it stays Primary: the disk is
    // Inconsistent, resynced from beta, and clients go on reading and writing.
    await mustSucceed(p.alpha.cli('attach', 'r0'));
    expect((await statusOf(p.alpha)).role).toBe('Primary');
    await must('qemu-io', ['-f', 'raw', '-c', 'read -P 0x77 8M 1M', '-c', 'write -P 0x78 8M 64k', '-c', 'write -P 0x79 20M 1M', p.alpha.uri]);
    await waitForStatus(p.alpha, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established');
    await waitForStatus(p.beta, (s) => s.peers[0]?.outOfSyncBytes === 0);
    await must('qemu-io', ['-f', 'raw', '-c', 'read -P 0x78 8M 64k', '-c', 'read -P 0x77 8256k 960k', '-c', 'read -P 0x79 20M 1M', p.alpha.uri]);
    await expectPairSameData(p);
  });

  it('a Primary resyncing its own disk: writes during the copy are never overwritten by older copies, reads of uncopied blocks come from the peer', async () => {
    // A slow resync (4 MiB/s over 16 MiB) so that the client works while it runs.
    const p = await syncedPair({ disk: 'resync-rate 4M;' });
    await mustSucceed(p.alpha.cli('detach', 'r0'));
    await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x51 16M 16M', p.alpha.uri]);
    await waitForStatus(p.beta, (s) => s.peers[0]!.outOfSyncBytes === 16 * 1024 * 1024);
    await mustSucceed(p.alpha.cli('attach', 'r0'));
    await waitForStatus(p.alpha, (s) => s.peers[0]?.replication === 'SyncTarget');
    // while the copy runs: overwrite parts of the region still being copied, read others
    await must('qemu-io', [
      '-f', 'raw',
      '-c', 'write -P 0x52 30M 1M',
      '-c', 'write -P 0x53 17M 4k',
      '-c', 'read -P 0x51 24M 1M',
      '-c', 'read -P 0x52 30M 1M',
      p.alpha.uri,
    ]);
    expect((await statusOf(p.alpha)).peers[0]?.replication).toBe('SyncTarget');
    await waitForStatus(p.alpha, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established', 60_000);
    await must('qemu-io', ['-f', 'raw', '-c', 'read -P 0x52 30M 1M', '-c', 'read -P 0x53 17M 4k', '-c', 'read -P 0x51 16M 1M', '-c', 'read -P 0x51 31M 1M', p.alpha.uri]);
    await waitForStatus(p.beta, (s) => s.peers[0]?.outOfSyncBytes === 0);
    await expectPairSameData(p);
  }, 90_000);

  it('a Secondary that detaches is marked for what it misses and resyncs only that on attach', async () => {
    const p = await syncedPair();
    await mustSucceed(p.beta.cli('detach', 'r0'));
    await waitForStatus(p.alpha, (s) => s.peers[0]?.peerDisk === 'Diskless');
    await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x31 0 256k', p.alpha.uri]);
    expect((await statusOf(p.alpha)).peers[0]!.outOfSyncBytes).toBe(256 * 1024);
    await mustSucceed(p.beta.cli('attach', 'r0'));
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established');
    await waitForStatus(p.alpha, (s) => s.peers[0]?.outOfSyncBytes === 0);
    await expectPairSameData(p);
  });
});

describe.skipIf(missing.length > 0 || missingTools('openssl').length > 0)('TLS between peers', () => {
  it('replicates over TLS with a CA, and a peer without TLS cannot connect', async () => {
    const p = await pair();
    const key = path.join(p.dir, 'peer.key');
    const cert = path.join(p.dir, 'peer.crt');
    await must('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=mirrorbd-peer']);
    await p.writeConfig(`shared-secret "s"; tls yes; tls-key ${key}; tls-cert ${cert}; tls-ca ${cert};`);
    // beta without TLS first: alpha's TLS listener must refuse it
    const plain = path.join(p.dir, 'beta-plain.conf');
    await fsp.writeFile(plain, (await fsp.readFile(p.configFile, 'utf8')).replace(/tls yes;[^}]*tls-ca [^;]+;/, ''));
    const betaPlain = (...args: string[]) => runCli(plain, 'beta', args);
    await mustSucceed(p.alpha.cli('create-md', 'r0'));
    await mustSucceed(betaPlain('create-md', 'r0'));
    await mustSucceed(p.alpha.cli('up', 'r0'));
    await mustSucceed(betaPlain('up', 'r0'));
    await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
    await new Promise((r) => setTimeout(r, 2500));
    expect((await statusOf(p.alpha)).peers[0]!.connection).not.toBe('Connected');
    // beta with TLS: it connects and syncs
    await mustSucceed(betaPlain('down', 'r0'));
    await mustSucceed(p.beta.cli('up', 'r0'));
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established');
    await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 0 128k', p.alpha.uri]);
    await expectPairSameData(p);
  });
});

describe.skipIf(missing.length > 0)('more of the replication link', () => {
  it('G5: a split brain (both promoted while apart, both written) is detected at reconnect and left StandAlone', async () => {
    const p = await syncedPair();
    await mustSucceed(p.alpha.cli('disconnect', 'r0'));
    await waitForStatus(p.beta, (s) => s.peers[0]?.connection !== 'Connected');
    await mustSucceed(p.beta.cli('primary', 'r0', '--force'));
    await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x0a 0 64k', p.alpha.uri]);
    await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x0b 1M 64k', p.beta.uri]);
    await mustSucceed(p.alpha.cli('connect', 'r0'));
    const a = await waitForStatus(p.alpha, (s) => (s.peers[0] as unknown as { splitBrain: boolean }).splitBrain);
    expect(a.peers[0]!.connection).toBe('StandAlone');
    expect((a.peers[0] as unknown as { lastError: string }).lastError).toMatch(/split brain/);
    // neither side's writes were overwritten
    await must('qemu-io', ['-f', 'raw', '-c', 'read -P 0x0a 0 64k', p.alpha.uri]);
    await must('qemu-io', ['-f', 'raw', '-c', 'read -P 0x0b 1M 64k', p.beta.uri]);
  });

  it('garbage on the replication port is dropped with a logged reason and the daemon keeps replicating', async () => {
    const p = await syncedPair();
    const net = await import('node:net');
    for (const payload of [Buffer.from('GET / HTTP/1.0\r\n\r\n'), randomBytes(4096), Buffer.alloc(12, 0xff)]) {
      await new Promise<void>((resolve) => {
        const s = net.createConnection({ host: '127.0.0.1', port: p.beta.peerPort }, () => s.write(payload));
        s.on('error', () => resolve());
        s.on('close', () => resolve());
        setTimeout(() => {
          s.destroy();
          resolve();
        }, 3000).unref();
      });
    }
    await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6d 2M 128k', p.alpha.uri]);
    const beta = await statusOf(p.beta);
    expect(beta.peers[0]).toMatchObject({ connection: 'Connected', replication: 'Established' });
    await expectPairSameData(p);
    const log = await fsp.readFile(path.join(p.beta.runDir, 'beta.log'), 'utf8');
    expect(log).toMatch(/refused a peer connection/);
  });

  it('checksum-based resync (csums-alg) sends only blocks whose digests differ, and data-integrity-alg checks every block', async () => {
    const p = await syncedPair({ net: 'csums-alg sha256; data-integrity-alg crc32c;' });
    const size = (await statusOf(p.alpha)).sizeBytes;
    await mustSucceed(p.alpha.cli('disconnect', 'r0'));
    // the same bytes written again: marked, but equal on both sides
    await must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x00 4M 4M', '-c', 'write -P 0x2f 16M 64k', p.alpha.uri]);
    expect((await statusOf(p.alpha)).peers[0]!.outOfSyncBytes).toBe(4 * 1024 * 1024 + 64 * 1024);
    const before = await bytesSentTo(p.alpha);
    await mustSucceed(p.alpha.cli('connect', 'r0'));
    await waitForStatus(p.alpha, (s) => s.peers[0]?.replication === 'Established' && s.peers[0]?.outOfSyncBytes === 0);
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate');
    const moved = (await bytesSentTo(p.alpha)) - before;
    // the changed 64 KiB and digests, not the 4 MiB of zeroes written over zeroes
    expect(moved).toBeGreaterThanOrEqual(64 * 1024);
    expect(moved).toBeLessThan(1024 * 1024);
    expect(size).toBeGreaterThan(0);
    await expectPairSameData(p);
  });

  it('pause-sync holds a resync and resume-sync finishes it; invalidate-remote copies everything to the peer', async () => {
    const p = await pair({ disk: 'resync-rate 8M;' });
    await upPair(p);
    await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'Connected');
    await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
    await waitForStatus(p.beta, (s) => s.peers[0]?.replication === 'SyncTarget');
    await mustSucceed(p.beta.cli('pause-sync', 'r0'));
    await waitForStatus(p.beta, (s) => s.peers[0]?.replication === 'PausedSyncT');
    await waitForStatus(p.alpha, (s) => s.peers[0]?.replication === 'PausedSyncS');
    const held = (await statusOf(p.beta)).peers[0]!.syncDonePercent!;
    await new Promise((r) => setTimeout(r, 1000));
    expect((await statusOf(p.beta)).peers[0]!.syncDonePercent).toBeLessThanOrEqual(held + 5);
    await mustSucceed(p.beta.cli('resume-sync', 'r0'));
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate', 60_000);
    await waitForStatus(p.alpha, (s) => s.peers[0]?.replication === 'Established');
    const size = (await statusOf(p.alpha)).sizeBytes;
    const before = await bytesSentTo(p.alpha);
    await mustSucceed(p.alpha.cli('invalidate-remote', 'r0'));
    await waitForStatus(p.beta, (s) => s.peers[0]?.replication === 'SyncTarget' || s.disk === 'Inconsistent', 10_000);
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established', 60_000);
    expect((await bytesSentTo(p.alpha)) - before).toBeGreaterThanOrEqual(size);
    await expectPairSameData(p);
  });
});

describe.skipIf(missing.length > 0)('an interrupted initial sync', () => {
  it('resumes where it stopped: the second connection copies only what the first did not', async () => {
    // 4 MiB/s over a 64 MiB disk: the sync is cut off part way.
    const p = await pair({ disk: 'resync-rate 4M;' });
    await upPair(p);
    await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'Connected');
    await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
    const size = (await statusOf(p.alpha)).sizeBytes;
    await waitForStatus(p.beta, (s) => (s.peers[0]?.syncDonePercent ?? 0) >= 25, 60_000);
    await mustSucceed(p.beta.cli('disconnect', 'r0'));
    const cut = await statusOf(p.beta);
    expect(cut.disk).toBe('Inconsistent');
    const received = (cut.peers[0] as unknown as { bytesReceived: number }).bytesReceived;
    expect(received).toBeLessThan(size * 0.9);
    // beta restarts (its bitmaps and generation from disk): the pair must not start over
    await mustSucceed(p.beta.cli('down', 'r0'));
    await mustSucceed(p.beta.cli('up', 'r0'));
    const s = await waitForStatus(p.beta, (x) => x.disk === 'UpToDate' && x.peers[0]?.replication === 'Established', 90_000);
    expect((s.peers[0] as unknown as { lastDecision: string | null }).lastDecision).toMatch(/use-bitmap/);
    const again = (s.peers[0] as unknown as { bytesReceived: number }).bytesReceived;
    // beta's counters start at zero after the restart: what moved is the rest, not the whole disk again
    expect(again).toBeLessThan(size - received / 2);
    expect(received + again).toBeGreaterThanOrEqual(size);
    await expectPairSameData(p);
  }, 150_000);
});

describe.skipIf(missing.length > 0)('disks of different sizes', () => {
  it('the pair agrees on the smaller disk: both export and sync that much', async () => {
    const p = await pair();
    await fsp.truncate(p.beta.diskPath, 48 * 1024 * 1024);
    await upPair(p);
    const beta = await statusOf(p.beta);
    const a = await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'Connected' && s.sizeBytes === beta.sizeBytes);
    expect(a.sizeBytes).toBe(beta.sizeBytes);
    await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established');
    await must('qemu-io', ['-f', 'raw', '-c', `write -P 0x4e ${beta.sizeBytes - 65536} 64k`, p.alpha.uri]);
    await expectSameData(p.nodes, beta.sizeBytes);
  });

  it('the agreed size is kept on disk: a node that comes up alone never exports more than its peer can hold', async () => {
    const p = await pair();
    await fsp.truncate(p.beta.diskPath, 48 * 1024 * 1024);
    await upPair(p);
    const beta = await statusOf(p.beta);
    await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'Connected' && s.sizeBytes === beta.sizeBytes);
    for (const n of p.nodes) await mustSucceed(n.cli('down', 'r0'));
    // alpha alone, with its bigger disk: it still offers only what beta holds
    await mustSucceed(p.alpha.cli('up', 'r0'));
    const alone = await statusOf(p.alpha);
    expect(alone.peers[0]!.connection).not.toBe('Connected');
    expect(alone.sizeBytes).toBe(beta.sizeBytes);
    const md = await mustSucceed(p.alpha.cli('dump-md', 'r0'));
    expect(md.stdout).toContain(`agreed-size ${beta.sizeBytes} bytes`);
  });

  it('a Primary exporting its whole bigger disk is not shrunk under its clients: the smaller peer stays StandAlone', async () => {
    const p = await pair();
    await fsp.truncate(p.beta.diskPath, 48 * 1024 * 1024);
    for (const n of p.nodes) await mustSucceed(n.cli('create-md', 'r0'));
    await mustSucceed(p.alpha.cli('up', 'r0'));
    await mustSucceed(p.alpha.cli('primary', 'r0', '--force'));
    await mustSucceed(p.beta.cli('up', 'r0'));
    const s = await waitForStatus(p.alpha, (x) => ((x.peers[0] as unknown as { lastError: string | null }).lastError ?? '').includes('smaller'));
    expect(s.peers[0]!.connection).toBe('StandAlone');
    expect(s.sizeBytes).toBeGreaterThan((await statusOf(p.beta)).sizeBytes);
  });
});
