/**
 * `mirrorbd status` for people, laid out like `drbdadm status`: the
 * resource line, the local disk, the NBD listener, then each peer with its
 * connection, and under it what an operator needs next: replication and
 * peer disk, a progress bar while a resync or verify runs, what is out of sync, and
 * while the peer is not connected why (last decision, last error, split
 * brain). Pure: the same input gives the same text, so tests pin it down.
 */
import type { PeerStatus, ResourceStatus } from '../resource/status.js';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
/** Characters between the brackets of the progress bar. */
export const PROGRESS_BAR_WIDTH = 20;

export function formatBytes(n: number, decimals = 2): string {
  let v = n;
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(decimals)} ${UNITS[i]}`;
}

/** `120.3 MiB/s`: one decimal is as much precision as a rate deserves. */
export function formatRate(bytesPerSec: number): string {
  return `${formatBytes(Math.round(bytesPerSec), 1)}/s`;
}

/** `0:07`, `12:34`, `1:02:03`; `--:--` when unknown. */
export function formatEta(sec: number | null): string {
  if (sec === null || !Number.isFinite(sec) || sec < 0) return '--:--';
  const s = Math.round(sec);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** `[=========>          ]` for a percentage 0..100 (clamped). */
export function progressBar(percent: number, width = PROGRESS_BAR_WIDTH): string {
  const p = Math.min(100, Math.max(0, Number.isFinite(percent) ? percent : 0));
  const filled = Math.floor((p / 100) * width);
  if (filled >= width) return `[${'='.repeat(width)}]`;
  return `[${'='.repeat(filled)}>${' '.repeat(width - filled - 1)}]`;
}

/** `[=====>     ] 45.2% 120.3 MiB/s ETA 0:12`, plus `(paused)` when paused. */
export function formatProgress(percent: number, resync: PeerStatus['resync']): string {
  const parts = [progressBar(percent), `${percent.toFixed(1)}%`];
  if (resync !== null) {
    parts.push(formatRate(resync.bytesPerSec), `ETA ${formatEta(resync.etaSec)}`);
    if (resync.paused) parts.push('(paused)');
  }
  return parts.join(' ');
}

/** A running online verify as a bar, a finished one as its finding (4 KiB blocks). */
export function formatVerify(v: NonNullable<PeerStatus['verify']>): string {
  const differ = v.outOfSyncBlocks === 0 ? 'no block differs' : v.outOfSyncBlocks === 1 ? '1 block differs' : `${v.outOfSyncBlocks} blocks differ`;
  if (v.finished) return `verify done: ${differ}`;
  const percent = v.totalBytes === 0 ? 100 : (100 * v.doneBytes) / v.totalBytes;
  return `verify: ${progressBar(percent)} ${percent.toFixed(1)}% ${differ} so far`;
}

/** The lines of one peer, indented under the resource. */
export function formatPeer(p: PeerStatus): string[] {
  const connected = p.connection === 'Connected';
  const head = [`  ${p.node}`];
  if (p.role !== 'Unknown') head.push(`role:${p.role}`);
  head.push(`connection:${p.connection}`);
  if (p.splitBrain) head.push('split-brain');
  const lines = [head.join(' ')];

  const detail: string[] = [];
  if (connected) detail.push(`replication:${p.replication}`, `peer-disk:${p.peerDisk}`);
  if (p.outOfSyncBytes !== null && p.outOfSyncBytes > 0) detail.push(`out-of-sync:${formatBytes(p.outOfSyncBytes)}`);
  if (detail.length > 0) lines.push(`    ${detail.join(' ')}`);

  if (p.syncDonePercent !== null) lines.push(`    ${formatProgress(p.syncDonePercent, p.resync)}`);
  if (p.verify) lines.push(`    ${formatVerify(p.verify)}`);
  if (p.splitBrain) {
    lines.push('    split brain: both nodes wrote while apart; the connection stays StandAlone until an operator resolves it');
  }
  if (!connected) {
    if (p.lastDecision !== null) lines.push(`    last decision: ${p.lastDecision}`);
    if (p.lastError !== null) lines.push(`    last error: ${p.lastError}`);
  }
  return lines;
}

export function formatResource(r: ResourceStatus): string[] {
  const lines = [`${r.name} node:${r.node} role:${r.role}`, `  disk:${r.disk} size:${formatBytes(r.sizeBytes)}`];
  // Quorum only where it is configured; suspension and a pending failover always.
  if (r.quorum.setting !== 'off') {
    lines.push(`  quorum:${r.quorum.have ? 'yes' : 'no'} (${r.quorum.votes} of ${r.quorum.voters} votes, ${r.quorum.needed} needed)`);
  }
  if (r.suspended.length > 0) lines.push(`  io:suspended (${r.suspended.join(', ')})`);
  if (r.promotion.failoverPending) lines.push(`  failover:pending (${r.promotion.reason})`);
  if (r.nbd.address !== null) {
    const who = r.nbd.clients.map((c) => c.remote + (c.tls ? ' (tls)' : '')).join(', ');
    lines.push(`  nbd:${r.nbd.address} clients:${r.nbd.clients.length}${who ? ` [${who}]` : ''}`);
  }
  for (const p of r.peers) lines.push(...formatPeer(p));
  return lines;
}

/** Every resource, each followed by an empty line. */
export function formatStatus(resources: ResourceStatus[]): string {
  return resources.map((r) => [...formatResource(r), ''].join('\n')).join('\n');
}
