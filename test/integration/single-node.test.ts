/**
 * One node, driven only through the CLI as an administrator would: metadata,
 * daemon lifecycle, roles, status, clean and unclean shutdown, bad input.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { nbdGo } from '../helpers/nbd-go.js';
import { mustSucceed, startNode, stopProcess, type StartedNode } from '../helpers/single-node.js';

const nodes: StartedNode[] = [];
async function node(opts: Parameters<typeof startNode>[0] = {}): Promise<StartedNode> {
  const n = await startNode(opts);
  nodes.push(n);
  return n;
}
afterEach(async () => {
  while (nodes.length > 0) await nodes.pop()!.stop();
});

interface Status {
  name: string;
  node: string;
  role: string;
  disk: string;
  sizeBytes: number;
  flags: string[];
  nbd: { address: string; clients: unknown[] };
  peers: Array<Record<string, unknown>>;
}

async function status(n: StartedNode): Promise<Status> {
  const r = await mustSucceed(n.cli('status', 'r0', '--json'));
  const list = JSON.parse(r.stdout) as Status[];
  expect(list).toHaveLength(1);
  return list[0];
}

async function waitGone(pid: number, ms = 10_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}

const sha = async (file: string): Promise<string> => createHash('sha256').update(await fsp.readFile(file)).digest('hex');

describe('metadata', () => {
  it('create-md refuses a disk that has metadata unless --force', async () => {
    const n = await node({ configOnly: true });
    await mustSucceed(n.cli('create-md', 'r0'));
    const again = await n.cli('create-md', 'r0');
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/ERR_MD_EXISTS/);
    expect(again.stderr.trim().split('\n')).toHaveLength(1);
    await mustSucceed(n.cli('create-md', 'r0', '--force'));
  });

  it('create-md refuses a disk too small for metadata and data, even with --force', async () => {
    const n = await node({ configOnly: true, diskSizeBytes: 256 * 1024 });
    const r = await n.cli('create-md', 'r0', '--force');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/ERR_MD_TOO_SMALL/);
  });

  it('up refuses corrupt metadata with its offset and leaves the disk untouched', async () => {
    const n = await node({ configOnly: true });
    await mustSucceed(n.cli('create-md', 'r0'));
    const size = (await fsp.stat(n.diskPath)).size;
    const fh = await fsp.open(n.diskPath, 'r+');
    // the superblock is the last 4 KiB of the disk; damage a byte inside it
    await fh.write(Buffer.from([0x5a]), 0, 1, size - 4096 + 40);
    await fh.close();
    const before = await sha(n.diskPath);
    const r = await n.cli('up', 'r0');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/ERR_MD_CORRUPT/);
    expect(r.stderr).toContain(String(size - 4096));
    expect(await sha(n.diskPath)).toBe(before);
    const dump = await n.cli('dump-md', 'r0');
    expect(dump.code).not.toBe(0);
    expect(await sha(n.diskPath)).toBe(before);
  });

  it('up without metadata says to run create-md', async () => {
    const n = await node({ configOnly: true });
    const r = await n.cli('up', 'r0');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/ERR_MD_MISSING/);
    expect(r.stderr).toMatch(/create-md/);
  });
});

describe('config errors', () => {
  it('a bad config line is reported as file:line:col with a non-zero exit', async () => {
    const n = await node({ configOnly: true });
    await fsp.appendFile(n.configFile, 'resource r1 {\n  on beta { node-id banana; }\n}\n');
    const r = await n.cli('dump');
    expect(r.code).not.toBe(0);
    const lines = (await fsp.readFile(n.configFile, 'utf8')).split('\n');
    const line = lines.findIndex((l) => l.includes('banana')) + 1;
    expect(r.stderr).toContain(`${n.configFile}:${line}:`);
    expect(r.stderr).toMatch(/ERR_BAD_CONFIG/);
  });

  it('dump prints the parsed config with defaults, and it names the resource', async () => {
    const n = await node({ configOnly: true });
    const r = await mustSucceed(n.cli('dump', 'r0'));
    expect(r.stdout).toMatch(/resource r0/);
    expect(r.stdout).toMatch(/protocol C/);
    expect(r.stdout).toContain(n.diskPath);
    const unknown = await n.cli('dump', 'nope');
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/ERR_NO_SUCH_RESOURCE/);
  });
});

describe('daemon and roles', () => {
  it('up starts the daemon: pid file, root-only control socket, Secondary with an Inconsistent disk', async () => {
    const n = await node({ secondary: true });
    const pid = await n.daemonPid();
    expect(pid).not.toBeNull();
    expect(() => process.kill(pid!, 0)).not.toThrow();
    const sock = await fsp.stat(path.join(n.runDir, 'alpha.sock'));
    expect(sock.isSocket()).toBe(true);
    expect(sock.mode & 0o777).toBe(0o600);
    const s = await status(n);
    expect(s).toMatchObject({ name: 'r0', node: 'alpha', role: 'Secondary', disk: 'Inconsistent' });
    expect(s.sizeBytes).toBeGreaterThan(60 * 1024 * 1024);
    expect(s.sizeBytes % 4096).toBe(0);
    expect(s.nbd.address).toBe(`127.0.0.1:${n.port}`);
    expect(s.nbd.clients).toEqual([]);
    expect(s.peers).toEqual([]);
  });

  it('a Secondary refuses NBD clients with a message naming its role', async () => {
    const n = await node({ secondary: true });
    const r = await nbdGo(n.host, n.port, 'r0');
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatch(/Secondary/);
  });

  it('primary needs --force on Inconsistent data; then the disk is UpToDate and serves', async () => {
    const n = await node({ secondary: true });
    const refused = await n.cli('primary', 'r0');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/ERR_NOT_UP_TO_DATE/);
    expect((await status(n)).role).toBe('Secondary');
    await mustSucceed(n.cli('primary', 'r0', '--force'));
    const s = await status(n);
    expect(s).toMatchObject({ role: 'Primary', disk: 'UpToDate' });
    const go = await nbdGo(n.host, n.port, '');
    expect(go.ok).toBe(true);
    if (go.ok) {
      expect(go.sizeBytes).toBe(s.sizeBytes);
      go.socket.destroy();
    }
  });

  it('secondary is refused while a client is connected, unless --force, which disconnects it', async () => {
    const n = await node();
    const go = await nbdGo(n.host, n.port, 'r0');
    if (!go.ok) throw new Error(go.error);
    const closed = new Promise<void>((resolve) => go.socket.on('close', () => resolve()));
    go.socket.on('error', () => undefined);
    // status sees the client
    await expect.poll(async () => (await status(n)).nbd.clients.length).toBe(1);
    const refused = await n.cli('secondary', 'r0');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/ERR_CLIENTS_CONNECTED/);
    expect((await status(n)).role).toBe('Primary');
    await mustSucceed(n.cli('secondary', 'r0', '--force'));
    await closed;
    expect((await status(n)).role).toBe('Secondary');
  });

  it('down stops a daemon that up started, and its files go with it', async () => {
    const n = await node();
    const pid = (await n.daemonPid())!;
    await mustSucceed(n.cli('secondary', 'r0'));
    await mustSucceed(n.cli('down', 'r0'));
    expect(await waitGone(pid)).toBe(true);
    await expect(fsp.stat(path.join(n.runDir, 'alpha.pid'))).rejects.toThrow();
    await expect(fsp.stat(path.join(n.runDir, 'alpha.sock'))).rejects.toThrow();
    const s = await mustSucceed(n.cli('status', '--json'));
    expect(JSON.parse(s.stdout)).toEqual([]);
  });

  it('SIGTERM shuts down cleanly: the next up is not a crashed Primary and promotes without --force', async () => {
    const n = await node();
    const go = await nbdGo(n.host, n.port, 'r0');
    if (!go.ok) throw new Error(go.error);
    go.socket.on('error', () => undefined);
    const closed = new Promise<void>((resolve) => go.socket.on('close', () => resolve()));
    const pid = (await n.daemonPid())!;
    process.kill(pid, 'SIGTERM');
    await closed;
    expect(await waitGone(pid)).toBe(true);
    await expect(fsp.stat(path.join(n.runDir, 'alpha.pid'))).rejects.toThrow();
    await mustSucceed(n.cli('up', 'r0'));
    const s = await status(n);
    expect(s).toMatchObject({ role: 'Secondary', disk: 'UpToDate' });
    expect(s.flags).not.toContain('CRASHED_PRIMARY');
    await mustSucceed(n.cli('primary', 'r0'));
  });

  it('kill -9 of a Primary: the stale pid file is replaced and the metadata says crashed primary', async () => {
    const n = await node();
    const pid = (await n.daemonPid())!;
    process.kill(pid, 'SIGKILL');
    expect(await waitGone(pid)).toBe(true);
    await mustSucceed(n.cli('up', 'r0'));
    const s = await status(n);
    expect(s.flags).toContain('CRASHED_PRIMARY');
    expect(s.disk).toBe('UpToDate');
    expect(await n.daemonPid()).not.toBe(pid);
  });

  it('a second daemon for the same node is refused', async () => {
    const n = await node({ secondary: true });
    const r = await n.cli('daemon');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/ERR_DAEMON_RUNNING/);
    expect(await n.daemonPid()).not.toBeNull();
  });

  it('up twice is refused; down of a resource that is not up is refused', async () => {
    const n = await node({ secondary: true });
    const again = await n.cli('up', 'r0');
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/ERR_ALREADY_UP/);
    await mustSucceed(n.cli('down', 'r0'));
    const pid = await n.daemonPid();
    if (pid !== null) await stopProcess(pid);
    const down = await n.cli('down', 'r0');
    expect(down.code).not.toBe(0);
    expect(down.stderr).toMatch(/ERR_DAEMON_UNREACHABLE|ERR_NOT_UP/);
  });

  it('the control socket answers malformed requests with ERR_BAD_COMMAND and stays usable', async () => {
    const n = await node({ secondary: true });
    const sock = net.createConnection(path.join(n.runDir, 'alpha.sock'));
    sock.setEncoding('utf8');
    const lines: string[] = [];
    let buf = '';
    sock.on('data', (d: string) => {
      buf += d;
      const parts = buf.split('\n');
      buf = parts.pop()!;
      lines.push(...parts);
    });
    sock.write('this is not json\n{"id":7,"cmd":"format-disk"}\n{"id":8,"cmd":"primary"}\n{"id":9,"cmd":"ping"}\n');
    await expect.poll(() => lines.length).toBe(4);
    const replies = lines.map((l) => JSON.parse(l) as { id: number | null; ok: boolean; error?: { code: string } });
    expect(replies[0]).toMatchObject({ id: null, ok: false, error: { code: 'ERR_BAD_COMMAND' } });
    expect(replies.find((r) => r.id === 7)).toMatchObject({ ok: false, error: { code: 'ERR_BAD_COMMAND' } });
    expect(replies.find((r) => r.id === 8)).toMatchObject({ ok: false, error: { code: 'ERR_BAD_COMMAND' } });
    expect(replies.find((r) => r.id === 9)).toMatchObject({ ok: true });
    sock.destroy();
    expect((await status(n)).role).toBe('Secondary');
  });
});
