/**
 * The network-namespace harness itself: nodes reach each other and the host,
 * partitions and one-way drops cut what they should and heal, netem is used
 * where the kernel has it, and nothing is left behind.
 */
import { spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { createNetns, firewallTool, removeStaleNetns, run, skipWithoutNetns, type NetnsHarness } from '../../helpers/netns.js';
import { requireTools } from '../../helpers/tools.js';

const noNetns = skipWithoutNetns();
const PORT = 7000;

/** A TCP server that accepts and holds connections, on every address of the node. */
const SERVER = `require('node:net').createServer((s) => s.on('error', () => {})).listen(${PORT}, '0.0.0.0')`;
/** Exit 0 when a TCP connection to argv host:port opens within 1 s, else 1. */
const CONNECT = `const s = require('node:net').createConnection({ host: process.argv[1], port: Number(process.argv[2]) });
s.on('connect', () => process.exit(0)); s.on('error', () => process.exit(1)); setTimeout(() => process.exit(1), 1000);`;

async function connects(h: NetnsHarness, from: number | 'host', to: number): Promise<boolean> {
  const args = ['-e', CONNECT, h.nodes[to]!.address, String(PORT)];
  const r = from === 'host' ? await run(process.execPath, args) : await h.exec(from, process.execPath, args);
  return r.code === 0;
}

async function until(check: () => Promise<boolean>, timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

describe.skipIf(noNetns)('network namespace harness', () => {
  let h: NetnsHarness | null = null;
  afterAll(async () => {
    await h?.destroy();
  });

  it('connects nodes and host, cuts and heals links, drops one way, and removes everything it made', async () => {
    h = await createNetns({ nodes: 2 });
    expect(h.nodes.map((n) => n.ns)).toEqual([`${h.id}-0`, `${h.id}-1`]);
    const servers = [h.spawn(0, process.execPath, ['-e', SERVER]), h.spawn(1, process.execPath, ['-e', SERVER])];
    expect(await until(() => connects(h!, 'host', 1))).toBe(true);
    expect(await until(() => connects(h!, 0, 1))).toBe(true);
    expect(await until(() => connects(h!, 1, 0))).toBe(true);

    await h.partition(1);
    expect(await connects(h, 'host', 1)).toBe(false);
    expect(await connects(h, 0, 1)).toBe(false);
    await h.heal(1);
    expect(await until(() => connects(h!, 0, 1))).toBe(true);

    if (firewallTool() !== null) {
      await h.dropOneWay(0, 1);
      expect(await connects(h, 0, 1)).toBe(false);
      expect(await connects(h, 'host', 1)).toBe(true);
      await h.restoreOneWay(0, 1);
      expect(await until(() => connects(h!, 0, 1))).toBe(true);
    } else {
      // CI installs nftables: there a missing tool is a failure, not a skip.
      if (requireTools) throw new Error('neither nft nor iptables is installed; MIRRORBD_REQUIRE_TOOLS=1');
      console.warn('skipping the one-way drop: neither nft nor iptables is installed');
    }

    if (await h.netemAvailable()) {
      await h.setLink(1, { delayMs: 150 });
      const t0 = Date.now();
      expect(await connects(h, 'host', 1)).toBe(true);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(250); // SYN and SYN-ACK each delayed twice
      await h.clearLink(1);
    } else {
      await expect(h.setLink(1, { delayMs: 10 })).rejects.toThrow(/netem/);
    }

    const pids = servers.map((s) => s.pid);
    await h.destroy();
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
    const left = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
    expect(left).not.toContain(h.id);
    const links = spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout;
    expect(links).not.toContain(h.bridge);
  });

  it('removes what a crashed earlier run left behind (its pid is gone), and nothing of a live one', async () => {
    // a pid that surely ran and exited
    const dead = spawnSync('true').pid!;
    const stale = `mbdt-${dead.toString(36)}-0-0`;
    const liveNs = `mbdt-${process.pid.toString(36)}-z-0`;
    try {
      expect((await run('ip', ['netns', 'add', stale])).code).toBe(0);
      expect((await run('ip', ['netns', 'add', liveNs])).code).toBe(0);
      const removed = await removeStaleNetns();
      expect(removed).toContain(stale);
      expect(removed).not.toContain(liveNs);
      expect((await run('ip', ['netns', 'list'])).stdout).toContain(liveNs);
    } finally {
      await run('ip', ['netns', 'del', stale]);
      await run('ip', ['netns', 'del', liveNs]);
    }
  });
});
