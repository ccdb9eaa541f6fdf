/**
 * The OCF agent's actions, exit codes and promotion scores, outside a
 * cluster: against a real single node, and against a stand-in mirrorbd
 * that prints a chosen `status --json`, for the score table and the failed
 * states a real node does not reach on demand.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startNode, type StartedNode } from '../../helpers/single-node.js';
import { explain } from '../../interop/proc.js';
import { makeAgent, OCF, type Agent } from './agent.js';
import { AGENT_PATH, MIRRORBD_COMMAND } from './netns-cluster.js';

describe('OCF agent against a real node', () => {
  let node: StartedNode;
  let dir: string;
  let agent: Agent;

  beforeAll(async () => {
    // Secondary and down, with UpToDate data: what a cluster node holds
    // before Pacemaker starts the resource.
    node = await startNode({ secondary: true });
    for (const args of [['primary', 'r0', '--force'], ['secondary', 'r0'], ['down', 'r0']]) {
      const r = await node.cli(...args);
      if (r.code !== 0) throw new Error(`mirrorbd ${args.join(' ')}: ${r.stderr}`);
    }
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-ocf-'));
    agent = await makeAgent(dir, { resource: 'r0', config: node.configFile, node: 'alpha', mirrorbd: MIRRORBD_COMMAND });
  });

  afterAll(async () => {
    await node?.stop();
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
  });

  it('is executable by everyone (Pacemaker and ocf-tester run meta-data as nobody)', async () => {
    expect((await fsp.stat(AGENT_PATH)).mode & 0o555).toBe(0o555);
  });

  it('start, promote, demote, stop: exit codes, roles and scores', async () => {
    const status = async (): Promise<string | null> => {
      const r = await node.cli('status', 'r0', '--json');
      return r.code === 0 ? (JSON.parse(r.stdout) as Array<{ role: string }>)[0]!.role : null;
    };
    expect((await agent.run('monitor', { OCF_RESKEY_CRM_meta_interval: '0' })).code).toBe(OCF.NOT_RUNNING);
    const start = await agent.run('start');
    expect(start.code, explain(start)).toBe(OCF.SUCCESS);
    expect(await status()).toBe('Secondary');
    expect((await agent.run('monitor')).code).toBe(OCF.SUCCESS);
    // A single-node resource: UpToDate and no peer to wait for.
    expect((await agent.scores()).at(-1)).toBe('10000');
    expect((await agent.run('promote')).code).toBe(OCF.SUCCESS);
    expect(await status()).toBe('Primary');
    expect((await agent.run('monitor')).code).toBe(OCF.RUNNING_PROMOTED);
    expect((await agent.run('promote')).code).toBe(OCF.SUCCESS);
    expect((await agent.run('demote')).code).toBe(OCF.SUCCESS);
    expect(await status()).toBe('Secondary');
    expect((await agent.run('demote')).code).toBe(OCF.SUCCESS);
    expect((await agent.run('notify', { OCF_RESKEY_CRM_meta_notify_type: 'post', OCF_RESKEY_CRM_meta_notify_operation: 'start' })).code).toBe(OCF.SUCCESS);
    expect((await agent.run('stop')).code).toBe(OCF.SUCCESS);
    expect(await status()).toBeNull();
    expect((await agent.scores()).at(-1)).toBe('delete');
    expect((await agent.run('stop')).code).toBe(OCF.SUCCESS);
    expect((await agent.run('monitor')).code).toBe(OCF.NOT_RUNNING);
  }, 120_000);

  it('a Primary whose daemon was killed: monitor says not running, demote and stop succeed', async () => {
    expect((await agent.run('start')).code).toBe(OCF.SUCCESS);
    expect((await agent.run('promote')).code).toBe(OCF.SUCCESS);
    const pid = await node.daemonPid();
    expect(pid).not.toBeNull();
    process.kill(pid!, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    expect((await agent.run('monitor')).code).toBe(OCF.NOT_RUNNING);
    expect((await agent.run('demote')).code).toBe(OCF.SUCCESS);
    expect((await agent.run('stop')).code).toBe(OCF.SUCCESS);
    // It comes back: the next start brings a fresh daemon up, Secondary.
    const again = await agent.run('start');
    expect(again.code, `start after the kill: ${again.stderr}`).toBe(OCF.SUCCESS);
    expect((await agent.run('monitor')).code).toBe(OCF.SUCCESS);
    expect((await agent.run('stop')).code).toBe(OCF.SUCCESS);
  }, 120_000);

  it('validate-all: config, resource, node and command are checked', async () => {
    const v = async (params: Record<string, string>): Promise<number> => {
      const env: NodeJS.ProcessEnv = {};
      for (const [k, val] of Object.entries(params)) env[`OCF_RESKEY_${k}`] = val;
      return (await agent.run('validate-all', env)).code ?? -1;
    };
    expect(await v({})).toBe(OCF.SUCCESS);
    expect(await v({ resource: 'r9' })).toBe(OCF.ERR_CONFIGURED);
    expect(await v({ resource: '' })).toBe(OCF.ERR_CONFIGURED);
    expect(await v({ config: path.join(dir, 'absent.conf') })).toBe(OCF.ERR_INSTALLED);
    expect(await v({ node: 'gamma' })).toBe(OCF.ERR_INSTALLED);
    expect(await v({ mirrorbd: path.join(dir, 'no-such-mirrorbd') })).toBe(OCF.ERR_INSTALLED);
    // Without the command a probe still answers "not running", and stop succeeds.
    const gone = { OCF_RESKEY_mirrorbd: path.join(dir, 'no-such-mirrorbd') };
    expect((await agent.run('monitor', { ...gone, OCF_RESKEY_CRM_meta_interval: '0' })).code).toBe(OCF.NOT_RUNNING);
    expect((await agent.run('stop', gone)).code).toBe(OCF.SUCCESS);
  }, 60_000);

  it('meta-data is the OCF XML with the four parameters and both monitor roles', async () => {
    const r = await agent.run('meta-data');
    expect(r.code).toBe(OCF.SUCCESS);
    for (const p of ['resource', 'config', 'node', 'mirrorbd']) expect(r.stdout).toContain(`<parameter name="${p}"`);
    expect(r.stdout).toMatch(/<parameter name="resource" unique="1" required="1">/);
    expect(r.stdout).toMatch(/<action name="monitor"[^>]*role="Promoted"/);
    expect(r.stdout).toMatch(/<action name="monitor"[^>]*role="Unpromoted"/);
    expect((await agent.run('reload')).code).toBe(OCF.ERR_UNIMPLEMENTED);
  });
});

describe('OCF agent: promotion scores and failed states from status --json', () => {
  let dir: string;
  let statusFile: string;
  let agent: Agent;

  interface Peer {
    connection: string;
    peerDisk: string;
  }
  const status = (role: string, disk: string, peers: Peer[], extra: Record<string, unknown> = {}): string =>
    JSON.stringify([{ name: 'r0', node: 'alpha', nodeId: 0, role, disk, peers: peers.map((p) => ({ node: 'beta', ...p })), ...extra }]);

  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-ocf-score-'));
    statusFile = path.join(dir, 'status.json');
    // Prints the chosen status for `status`; any other command succeeds.
    const fake = path.join(dir, 'fake-mirrorbd');
    await fsp.writeFile(fake, `#!/bin/sh\ncase "$*" in *status*) cat '${statusFile}' ;; esac\n`, { mode: 0o755 });
    agent = await makeAgent(dir, { resource: 'r0', mirrorbd: fake });
  });

  afterEach(async () => {
    await fsp.rm(path.join(dir, 'scores.log'), { force: true });
  });

  afterAll(async () => {
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
  });

  const connected = { connection: 'Connected', peerDisk: 'UpToDate' };
  const cases: Array<[string, string, number, string]> = [
    ['UpToDate, peer connected and UpToDate', status('Secondary', 'UpToDate', [connected]), OCF.SUCCESS, '10000'],
    ['UpToDate, peer connected and Inconsistent (we are its source)', status('Secondary', 'UpToDate', [{ connection: 'Connected', peerDisk: 'Inconsistent' }]), OCF.SUCCESS, '10000'],
    ['UpToDate, peer not connected', status('Secondary', 'UpToDate', [{ connection: 'Connecting', peerDisk: 'DUnknown' }]), OCF.SUCCESS, '1000'],
    ['Primary, UpToDate, peer not connected', status('Primary', 'UpToDate', [{ connection: 'StandAlone', peerDisk: 'DUnknown' }]), OCF.RUNNING_PROMOTED, '1000'],
    ['single node, UpToDate', status('Secondary', 'UpToDate', []), OCF.SUCCESS, '10000'],
    ['quorum object present and held', status('Secondary', 'UpToDate', [connected], { quorum: { have: true } }), OCF.SUCCESS, '10000'],
    ['quorum lost', status('Secondary', 'UpToDate', [connected], { quorum: { have: false } }), OCF.SUCCESS, 'delete'],
    ['Primary without quorum', status('Primary', 'UpToDate', [connected], { quorum: { have: false } }), OCF.RUNNING_PROMOTED, 'delete'],
    ['Consistent', status('Secondary', 'Consistent', [connected]), OCF.SUCCESS, 'delete'],
    ['Outdated', status('Secondary', 'Outdated', [connected]), OCF.SUCCESS, 'delete'],
    ['Inconsistent (SyncTarget)', status('Secondary', 'Inconsistent', [connected]), OCF.SUCCESS, 'delete'],
    ['Diskless', status('Secondary', 'Diskless', [connected]), OCF.SUCCESS, 'delete'],
    ['Failed disk, Secondary', status('Secondary', 'Failed', [connected]), OCF.ERR_GENERIC, 'delete'],
    ['Failed disk, Primary', status('Primary', 'Failed', [connected]), OCF.FAILED_PROMOTED, 'delete'],
    ['another resource is up, not this one', JSON.stringify([{ name: 'r1', role: 'Primary', disk: 'UpToDate', peers: [] }]), OCF.NOT_RUNNING, 'delete'],
  ];
  for (const [what, json, rc, score] of cases) {
    it(`${what}: monitor ${rc}, score ${score}`, async () => {
      await fsp.writeFile(statusFile, json);
      const r = await agent.run('monitor');
      expect(r.code, explain(r)).toBe(rc);
      expect(await agent.scores()).toEqual([score]);
    });
  }

  it('a daemon that does not answer: not running, score removed', async () => {
    const fake = path.join(dir, 'unreachable-mirrorbd');
    await fsp.writeFile(fake, "#!/bin/sh\necho 'mirrorbd: no daemon at /x.sock (ENOENT) [ERR_DAEMON_UNREACHABLE]' >&2\nexit 1\n", { mode: 0o755 });
    const r = await agent.run('monitor', { OCF_RESKEY_mirrorbd: fake });
    expect(r.code).toBe(OCF.NOT_RUNNING);
    expect(await agent.scores()).toEqual(['delete']);
  });

  it('an unexpected status failure is a generic error, not "not running"', async () => {
    const fake = path.join(dir, 'broken-mirrorbd');
    await fsp.writeFile(fake, "#!/bin/sh\necho 'mirrorbd: internal error: boom' >&2\nexit 3\n", { mode: 0o755 });
    expect((await agent.run('monitor', { OCF_RESKEY_mirrorbd: fake })).code).toBe(OCF.ERR_GENERIC);
  });
});
