/**
 * `mirrorbd status` for people, laid out like `drbdadm status`: the
 * resource line, then the local disk, then one line per peer.
 */
import type { ResourceStatus } from '../resource/status.js';

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(2)} ${units[i]}`;
}

export function formatStatus(resources: ResourceStatus[]): string {
  const out: string[] = [];
  for (const r of resources) {
    out.push(`${r.name} node:${r.node} role:${r.role}`);
    out.push(`  disk:${r.disk} size:${formatBytes(r.sizeBytes)}`);
    if (r.nbd.address !== null) {
      const who = r.nbd.clients.map((c) => c.remote + (c.tls ? ' (tls)' : '')).join(', ');
      out.push(`  nbd:${r.nbd.address} clients:${r.nbd.clients.length}${who ? ` [${who}]` : ''}`);
    }
    for (const p of r.peers) {
      const parts = [`  ${p.node} role:${p.role} connection:${p.connection}`];
      if (p.connection === 'Connected') parts.push(`replication:${p.replication} peer-disk:${p.peerDisk}`);
      if (p.syncDonePercent !== null) parts.push(`done:${p.syncDonePercent.toFixed(1)}%`);
      if (p.outOfSyncBytes !== null && p.outOfSyncBytes > 0) parts.push(`out-of-sync:${formatBytes(p.outOfSyncBytes)}`);
      out.push(parts.join(' '));
    }
    out.push('');
  }
  return out.join('\n');
}
