/**
 * A real two-node Corosync + Pacemaker cluster on one machine: each node is
 * a network namespace (joined by a veth pair) plus its own PID, mount and
 * UTS namespaces, so `alpha` and `beta` each have their own host name,
 * /var/lib/pacemaker, /var/lib/corosync, /etc/corosync, /run and /dev/shm,
 * and their own process tree. The OCF agent is installed, in each node's
 * mount namespace only, as /usr/lib/ocf/resource.d/mirrorbd/mirrorbd.
 *
 * Every process of a node runs inside its PID namespace, whose first
 * process (`init`) the test started: killing that one PID ends them all
 * (corosync, pacemakerd and its daemons, the mirrorbd daemons the agent
 * started). `stop()` does that, deletes the namespaces and the temp dir,
 * also after a failed test; `setpriv --pdeathsig` and `unshare --kill-child`
 * take the nodes down if the test process itself dies.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, promises as fsp, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cliPath, repoRoot } from '../../helpers/single-node.js';
import { explain, run, type RunResult } from '../../interop/proc.js';

export const AGENT_PATH = path.join(repoRoot, 'src/integrations/pacemaker/mirrorbd');

/** The tools the cluster needs, for missingTools(). */
export const CLUSTER_TOOLS = [
  'ip', 'unshare', 'nsenter', 'setpriv', 'corosync', 'corosync-quorumtool', 'pacemakerd',
  'cibadmin', 'crm_mon', 'crm_attribute', 'crm_resource',
];

/** The `mirrorbd` parameter of the agent: the built CLI under this node. */
export const MIRRORBD_COMMAND = `${process.execPath} ${cliPath}`;

const SUBNET = '10.213.0';

export interface ClusterNode {
  name: 'alpha' | 'beta';
  address: string;
  /** Host PID of the node's PID-namespace init. */
  initPid: number;
  runDir: string;
  /** Run a command inside the node (all its namespaces). */
  exec(args: string[], timeoutMs?: number): Promise<RunResult>;
  /** mirrorbd inside the node, with the cluster's config. */
  mirrorbd(...args: string[]): Promise<RunResult>;
}

export interface Cluster {
  dir: string;
  configFile: string;
  alpha: ClusterNode;
  beta: ClusterNode;
  nodes: ClusterNode[];
  /** Corosync and Pacemaker output and logs, for a failure message. */
  logs(): Promise<string>;
  stop(): Promise<void>;
}

/** A failure message with the command's output. */
export function mustOk(r: RunResult): RunResult {
  if (r.code !== 0) throw new Error(`command failed\n${explain(r)}`);
  return r;
}

/** Poll `probe` until it returns a value, or fail after `timeoutMs` with what it last saw. */
export async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | null>, last: () => string = () => ''): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== null) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${last()}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

// PID 1 of a node: mounts the node's private directories over the
// system's (the mount namespace is private, so the host sees none of it),
// sets the host name, then reaps orphans (the mirrorbd daemons `up`
// detaches end up here) until it is killed.
const INIT_SCRIPT = `set -e
name=$1 dir=$2 agent=$3
hostname "$name"
for d in etc-corosync var-lib-corosync var-log-corosync var-lib-pacemaker/cib var-lib-pacemaker/pengine \\
         var-lib-pacemaker/blackbox var-lib-pacemaker/cores var-log-pacemaker ocf/mirrorbd; do
  mkdir -p "$dir/$d"
done
cp "$agent" "$dir/ocf/mirrorbd/mirrorbd"
chmod 0755 "$dir/ocf/mirrorbd/mirrorbd"
chown -R hacluster:haclient "$dir/var-lib-pacemaker" "$dir/var-log-pacemaker"
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount --bind "$dir/etc-corosync" /etc/corosync
mount --bind "$dir/var-lib-corosync" /var/lib/corosync
mount --bind "$dir/var-log-corosync" /var/log/corosync
mount --bind "$dir/var-lib-pacemaker" /var/lib/pacemaker
mount --bind "$dir/var-log-pacemaker" /var/log/pacemaker
mount --bind "$dir/ocf" /usr/lib/ocf/resource.d
echo ready
set +e
while :; do sleep 1 & wait; done
`;

function corosyncConf(): string {
  const node = (id: number, name: string): string =>
    `    node {\n        ring0_addr: ${SUBNET}.${id}\n        name: ${name}\n        nodeid: ${id}\n    }`;
  return [
    'totem {',
    '    version: 2',
    '    cluster_name: mirrorbd-test',
    '    transport: knet',
    '    crypto_cipher: none',
    '    crypto_hash: none',
    // A loaded test machine must not lose the token for a slow scheduler.
    '    token: 5000',
    '}',
    'nodelist {',
    node(1, 'alpha'),
    node(2, 'beta'),
    '}',
    'quorum {',
    '    provider: corosync_votequorum',
    '    two_node: 1',
    '}',
    'logging {',
    '    to_logfile: yes',
    '    logfile: /var/log/corosync/corosync.log',
    '    to_stderr: no',
    '    to_syslog: no',
    '    timestamp: on',
    '}',
    '',
  ].join('\n');
}

/** Host PIDs whose parent is `ppid` (from /proc). */
function childrenOf(ppid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      // the command name may hold spaces or parentheses; the fields after the last ')' do not
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === ppid) out.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Namespaces, corosync and pacemaker on both nodes, and the mirrorbd
 * resource r0 created, connected once and UpToDate on both (its initial
 * sync skipped), then taken down again for Pacemaker to start.
 */
export async function startCluster(): Promise<Cluster> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-pacemaker-'));
  // Pacemaker's daemons run as hacluster and read the agent's parameters'
  // files (the config) through this directory.
  await fsp.chmod(dir, 0o755);
  const tag = `${process.pid % 100_000}`;
  const netns = { alpha: `mbdpm${tag}a`, beta: `mbdpm${tag}b` };
  const children: ChildProcess[] = [];
  const createdNetns: string[] = [];
  const nodes: ClusterNode[] = [];
  const configFile = path.join(dir, 'mirrorbd.conf');

  const stop = async (): Promise<void> => {
    // Killing a PID namespace's init kills every process in it.
    for (const n of nodes) {
      if (alive(n.initPid)) process.kill(n.initPid, 'SIGKILL');
    }
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null && c.pid !== undefined) {
        try {
          process.kill(c.pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
    const deadline = Date.now() + 10_000;
    while (children.some((c) => c.exitCode === null && c.signalCode === null) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const ns of createdNetns) await run('ip', ['netns', 'del', ns], { timeoutMs: 10_000 });
    await fsp.rm(dir, { recursive: true, force: true });
  };

  try {
    await fsp.writeFile(path.join(dir, 'init.sh'), INIT_SCRIPT);
    for (const ns of Object.values(netns)) {
      mustOk(await run('ip', ['netns', 'add', ns]));
      createdNetns.push(ns);
    }
    mustOk(await run('ip', ['link', 'add', `${netns.alpha}0`, 'netns', netns.alpha, 'type', 'veth', 'peer', 'name', `${netns.beta}0`, 'netns', netns.beta]));

    for (const [i, name] of (['alpha', 'beta'] as const).entries()) {
      const ns = netns[name];
      const address = `${SUBNET}.${i + 1}`;
      mustOk(await run('ip', ['-n', ns, 'addr', 'add', `${address}/24`, 'dev', `${ns}0`]));
      mustOk(await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']));
      mustOk(await run('ip', ['-n', ns, 'link', 'set', `${ns}0`, 'up']));

      const nodeDir = path.join(dir, name);
      await fsp.mkdir(nodeDir);
      const out = openSync(path.join(nodeDir, 'init.out'), 'a');
      let initLauncher: ChildProcess;
      try {
        initLauncher = spawn(
          'setpriv',
          ['--pdeathsig', 'KILL', 'nsenter', `--net=/run/netns/${ns}`, 'unshare', '--pid', '--fork', '--kill-child', '--mount', '--uts',
            '--propagation', 'private', '--mount-proc', 'bash', path.join(dir, 'init.sh'), name, nodeDir, AGENT_PATH],
          { stdio: ['ignore', out, out] },
        );
      } finally {
        closeSync(out);
      }
      children.push(initLauncher);
      const launcherPid = initLauncher.pid!;
      const initOut = path.join(nodeDir, 'init.out');
      await waitFor(`${name}'s namespaces`, 15_000, async () => {
        if (initLauncher.exitCode !== null) throw new Error(`${name}'s init exited: ${await fsp.readFile(initOut, 'utf8')}`);
        return (await fsp.readFile(initOut, 'utf8')).includes('ready') ? true : null;
      });
      // setpriv and nsenter exec, so the launcher's PID is unshare's, and
      // its one child is the namespace's init.
      const [initPid] = childrenOf(launcherPid);
      if (initPid === undefined) throw new Error(`no init process under ${launcherPid}`);
      const enter = ['-t', String(initPid), '-n', '-m', '-u', '-p', '--'];
      const exec = (args: string[], timeoutMs = 30_000): Promise<RunResult> => run('nsenter', [...enter, ...args], { timeoutMs });
      nodes.push({
        name,
        address,
        initPid,
        runDir: path.join(dir, `run-${name}`),
        exec,
        mirrorbd: (...args) => exec([process.execPath, cliPath, '-c', configFile, ...args], 60_000),
      });
      await fsp.writeFile(path.join(nodeDir, 'etc-corosync', 'corosync.conf'), corosyncConf());
    }
    const [alpha, beta] = nodes as [ClusterNode, ClusterNode];

    // The mirrorbd resource. Each node finds its own `on` section by host
    // name, as on real machines: the agent runs without a `node` parameter.
    const disks = nodes.map((n) => path.join(dir, `${n.name}.img`));
    for (const d of disks) {
      await fsp.writeFile(d, '');
      await fsp.truncate(d, 16 * 1024 * 1024);
    }
    await fsp.writeFile(
      configFile,
      [
        `global { run-dir ${path.join(dir, 'run-%n')}; }`,
        'resource r0 {',
        '  meta-disk internal;',
        '  net { ping-int 1; ping-timeout 0.5; connect-int 1; timeout 2; shared-secret "pacemaker-test"; }',
        ...nodes.map((n, i) => `  on ${n.name} { node-id ${i}; disk ${disks[i]}; address ${n.address}:7789; nbd-address ${n.address}:10809; }`),
        '}',
        '',
      ].join('\n'),
    );
    for (const n of nodes) {
      mustOk(await n.mirrorbd('create-md', 'r0'));
      mustOk(await n.mirrorbd('up', 'r0'));
    }
    const statusOf = async (n: ClusterNode): Promise<{ role: string; disk: string; peers: Array<{ connection: string; peerDisk: string }> }> =>
      JSON.parse(mustOk(await n.mirrorbd('status', 'r0', '--json')).stdout)[0];
    await waitFor('the pair to connect', 30_000, async () => ((await statusOf(alpha)).peers[0]?.connection === 'Connected' ? true : null));
    // Two fresh sparse files hold the same bytes: skip the initial sync.
    mustOk(await alpha.mirrorbd('new-current-uuid', 'r0', '--clear-bitmap'));
    for (const n of nodes) {
      await waitFor(`${n.name} UpToDate`, 30_000, async () => ((await statusOf(n)).disk === 'UpToDate' ? true : null));
    }
    for (const n of nodes) mustOk(await n.mirrorbd('down', 'r0'));

    // Corosync, then Pacemaker, in the foreground inside each node.
    for (const n of nodes) {
      const tmpDir = path.join(dir, n.name, 'tmp');
      await fsp.mkdir(tmpDir);
      for (const [daemon, args] of [['corosync', ['-f']], ['pacemakerd', []]] as const) {
        const out = openSync(path.join(dir, n.name, `${daemon}.out`), 'a');
        try {
          children.push(
            spawn('nsenter', ['-t', String(n.initPid), '-n', '-m', '-u', '-p', '--', daemon, ...args], {
              stdio: ['ignore', out, out],
              // The agent's temp files: an action cut short when the node is
              // killed at the end leaves its file in this node's directory.
              env: { ...process.env, TMPDIR: tmpDir },
            }),
          );
        } finally {
          closeSync(out);
        }
        if (daemon === 'corosync') {
          await waitFor(`corosync on ${n.name}`, 20_000, async () => ((await n.exec(['corosync-quorumtool', '-s'])).stdout.includes('Quorum information') ? true : null));
        }
      }
    }
    return {
      dir,
      configFile,
      alpha,
      beta,
      nodes,
      logs: async () => {
        const parts: string[] = [];
        for (const n of nodes) {
          for (const f of ['corosync.out', 'pacemakerd.out', 'var-log-pacemaker/pacemaker.log']) {
            const text = await fsp.readFile(path.join(dir, n.name, f), 'utf8').catch(() => '');
            const lines = text.split('\n').filter((l) => !l.includes('cib_perform_op') && !l.includes('cib_process_request'));
            parts.push(`--- ${n.name} ${f} (last lines)\n${lines.slice(-60).join('\n')}`);
          }
        }
        return parts.join('\n');
      },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
