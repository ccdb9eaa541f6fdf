/**
 * The OCF agent under a real Pacemaker: two nodes, each in its own
 * namespaces (netns-cluster.ts), Corosync with two_node quorum, the agent
 * configured with cibadmin as a promotable clone. Pacemaker must promote
 * exactly one node, and that node must be Primary by `mirrorbd status`;
 * when the Primary's daemon is killed (kill -9), and later when the
 * Primary's node is put in standby, the other node must be promoted.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { missingTools, requireTools } from '../../helpers/tools.js';
import { MIRRORBD_COMMAND, CLUSTER_TOOLS, mustOk, startCluster, waitFor, type Cluster, type ClusterNode } from './netns-cluster.js';

function unusable(): string[] {
  if (process.getuid?.() !== 0) {
    // Namespaces, corosync and pacemaker need root; same convention as a missing tool.
    const line = 'the Pacemaker cluster test needs root (network, mount and PID namespaces)';
    if (requireTools) throw new Error(`${line}; MIRRORBD_REQUIRE_TOOLS=1`);
    console.warn(`skipping: ${line}`);
    return ['root'];
  }
  return missingTools(...CLUSTER_TOOLS);
}
const missing = unusable();

// Short monitor intervals so a failure is seen within seconds; the two
// roles need different intervals (Pacemaker tells the operations apart by
// interval). migration-threshold=1: the node whose instance failed is not
// used again until the failure is cleaned up, so the failover target is
// certain.
const RESOURCES_XML = `
<clone id="mbd-clone">
  <meta_attributes id="mbd-clone-meta">
    <nvpair id="mbd-clone-promotable" name="promotable" value="true"/>
    <nvpair id="mbd-clone-promoted-max" name="promoted-max" value="1"/>
    <nvpair id="mbd-clone-promoted-node-max" name="promoted-node-max" value="1"/>
    <nvpair id="mbd-clone-clone-max" name="clone-max" value="2"/>
    <nvpair id="mbd-clone-clone-node-max" name="clone-node-max" value="1"/>
    <nvpair id="mbd-clone-notify" name="notify" value="true"/>
  </meta_attributes>
  <primitive id="mbd" class="ocf" provider="mirrorbd" type="mirrorbd">
    <instance_attributes id="mbd-params">
      <nvpair id="mbd-params-resource" name="resource" value="r0"/>
      <nvpair id="mbd-params-config" name="config" value="CONFIG"/>
      <nvpair id="mbd-params-mirrorbd" name="mirrorbd" value="MIRRORBD"/>
    </instance_attributes>
    <meta_attributes id="mbd-meta">
      <nvpair id="mbd-meta-migration-threshold" name="migration-threshold" value="1"/>
    </meta_attributes>
    <operations>
      <op id="mbd-start-0" name="start" interval="0s" timeout="60s"/>
      <op id="mbd-stop-0" name="stop" interval="0s" timeout="90s"/>
      <op id="mbd-promote-0" name="promote" interval="0s" timeout="90s"/>
      <op id="mbd-demote-0" name="demote" interval="0s" timeout="90s"/>
      <op id="mbd-notify-0" name="notify" interval="0s" timeout="90s"/>
      <op id="mbd-monitor-promoted" name="monitor" interval="3s" role="Promoted" timeout="30s"/>
      <op id="mbd-monitor-unpromoted" name="monitor" interval="4s" role="Unpromoted" timeout="30s"/>
    </operations>
  </primitive>
</clone>`;

interface ClusterState {
  online: string[];
  dc: boolean;
  promoted: string[];
  unpromoted: string[];
  failed: boolean;
  /** Promotion scores by node (the agent's master-mbd attribute). */
  scores: Record<string, number>;
  xml: string;
}

/** What crm_mon says, read from its XML output. */
async function clusterState(n: ClusterNode): Promise<ClusterState> {
  const r = await n.exec(['crm_mon', '-1', '-A', '--output-as=xml']);
  const xml = r.stdout;
  const state: ClusterState = { online: [], dc: false, promoted: [], unpromoted: [], failed: false, scores: {}, xml };
  state.dc = /<current_dc present="true"/.test(xml);
  const nodesSection = xml.slice(xml.indexOf('<nodes>'), xml.indexOf('</nodes>'));
  for (const m of nodesSection.matchAll(/<node name="([^"]+)"[^>]*\bonline="true"/g)) state.online.push(m[1]!);
  // <resource id="mbd" ... role="Promoted" ... failed="false" ...>\n <node name="beta" .../>
  for (const m of xml.matchAll(/<resource id="mbd"([^>]*?)(\/?)>(\s*<node name="([^"]+)")?/g)) {
    const attrs = m[1]!;
    const role = /\brole="([^"]+)"/.exec(attrs)?.[1];
    const node = m[4];
    if (/\bfailed="true"/.test(attrs)) state.failed = true;
    if (node === undefined || m[2] === '/') continue;
    if (role === 'Promoted' || role === 'Master') state.promoted.push(node);
    if (role === 'Unpromoted' || role === 'Slave') state.unpromoted.push(node);
  }
  const attrSection = xml.slice(xml.indexOf('<node_attributes>'), xml.indexOf('</node_attributes>'));
  for (const m of attrSection.matchAll(/<node name="([^"]+)">([\s\S]*?)<\/node>/g)) {
    const score = /<attribute name="master-mbd" value="(-?\d+)"/.exec(m[2]!);
    if (score) state.scores[m[1]!] = Number(score[1]);
  }
  return state;
}

async function roleOf(n: ClusterNode): Promise<string | null> {
  const r = await n.mirrorbd('status', 'r0', '--json');
  if (r.code !== 0) return null;
  return (JSON.parse(r.stdout) as Array<{ role: string }>)[0]!.role;
}

describe.skipIf(missing.length > 0)('Pacemaker promotable clone of a mirrorbd resource (two nodes in namespaces)', () => {
  let cluster: Cluster;
  let last: ClusterState | null = null;
  const lastSeen = (): string => `last crm_mon: ${JSON.stringify({ ...last, xml: undefined })}`;

  /** Wait for crm_mon (read on `via`) to satisfy `check`. */
  const waitForCluster = (what: string, via: ClusterNode, check: (s: ClusterState) => boolean, timeoutMs = 90_000): Promise<ClusterState> =>
    waitFor(what, timeoutMs, async () => {
      last = await clusterState(via);
      return check(last) ? last : null;
    }, lastSeen);

  /** Runs a step; a failure carries the cluster's logs. */
  const step = async (fn: () => Promise<void>): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      const logs = await cluster.logs().catch(() => '(no logs)');
      throw new Error(`${(e as Error).message}\n${last ? `crm_mon XML:\n${last.xml}\n` : ''}${logs}`);
    }
  };

  beforeAll(async () => {
    cluster = await startCluster();
    await step(async () => {
      await waitForCluster('both nodes online with a DC', cluster.alpha, (s) => s.dc && s.online.length === 2, 120_000);
      const a = cluster.alpha;
      // A test cluster has no fence device; production must (docs/pacemaker.md).
      mustOk(await a.exec(['crm_attribute', '--type', 'crm_config', '--name', 'stonith-enabled', '--update', 'false']));
      const xml = RESOURCES_XML.replace('CONFIG', cluster.configFile).replace('MIRRORBD', MIRRORBD_COMMAND);
      mustOk(await a.exec(['cibadmin', '--create', '--scope', 'resources', '--xml-text', xml]));
    });
  }, 240_000);

  afterAll(async () => {
    await cluster?.stop();
  }, 60_000);

  it('promotes exactly one node, and that node is Primary', async () => {
    await step(async () => {
      const s = await waitForCluster(
        'one promoted and one unpromoted instance, both scored 10000',
        cluster.alpha,
        (s) => s.promoted.length === 1 && s.unpromoted.length === 1 && s.scores.alpha === 10000 && s.scores.beta === 10000,
      );
      const primary = cluster.nodes.find((n) => n.name === s.promoted[0])!;
      const secondary = cluster.nodes.find((n) => n !== primary)!;
      expect(s.unpromoted).toEqual([secondary.name]);
      expect(await roleOf(primary)).toBe('Primary');
      expect(await roleOf(secondary)).toBe('Secondary');
    });
  }, 120_000);

  it('kill -9 of the Primary daemon: the other node is promoted and Primary', async () => {
    await step(async () => {
      const before = await clusterState(cluster.alpha);
      expect(before.promoted).toHaveLength(1);
      const victim = cluster.nodes.find((n) => n.name === before.promoted[0])!;
      const survivor = cluster.nodes.find((n) => n !== victim)!;
      // The pid file holds the PID as seen inside the victim's PID namespace.
      const pidFile = `${victim.runDir}/${victim.name}.pid`;
      mustOk(await victim.exec(['sh', '-c', `kill -9 "$(cat '${pidFile}')"`]));
      await waitForCluster(`${survivor.name} promoted`, survivor, (s) => s.promoted.length === 1 && s.promoted[0] === survivor.name);
      await waitFor(`${survivor.name} Primary`, 30_000, async () => ((await roleOf(survivor)) === 'Primary' ? true : null));
      // The victim's monitor found its daemon gone; its instance stays stopped (migration-threshold=1).
      const after = await clusterState(survivor);
      expect(after.promoted).toEqual([survivor.name]);
      expect(after.unpromoted).not.toContain(victim.name);
      expect(await roleOf(victim)).toBeNull();
    });
  }, 120_000);

  it('standby of the Primary node: the other node is promoted and Primary', async () => {
    await step(async () => {
      // Forget the failure of the previous test: the stopped instance starts again, Unpromoted.
      mustOk(await cluster.alpha.exec(['crm_resource', '--cleanup', '--resource', 'mbd-clone']));
      const s = await waitForCluster(
        'both instances running again, scored 10000',
        cluster.alpha,
        (s) => s.promoted.length === 1 && s.unpromoted.length === 1 && s.scores.alpha === 10000 && s.scores.beta === 10000,
      );
      const primary = cluster.nodes.find((n) => n.name === s.promoted[0])!;
      const other = cluster.nodes.find((n) => n !== primary)!;
      expect(await roleOf(primary)).toBe('Primary');
      mustOk(await other.exec(['crm_attribute', '--node', primary.name, '--name', 'standby', '--update', 'on']));
      await waitForCluster(
        `${other.name} promoted, ${primary.name} stopped`,
        other,
        (s) => s.promoted.length === 1 && s.promoted[0] === other.name && !s.unpromoted.includes(primary.name),
      );
      await waitFor(`${other.name} Primary`, 30_000, async () => ((await roleOf(other)) === 'Primary' ? true : null));
      // The standby node's instance was stopped: mirrorbd down, the daemon gone.
      expect(await roleOf(primary)).toBeNull();
    });
  }, 150_000);
});
