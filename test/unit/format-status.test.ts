/**
 * The human status text: progress bar, rate, ETA, and what each peer state
 * shows (connected, syncing, paused, away, refused, split brain).
 */
import { describe, expect, it } from 'vitest';
import {
  formatBytes,
  formatEta,
  formatPeer,
  formatProgress,
  formatRate,
  formatStatus,
  formatVerify,
  progressBar,
  PROGRESS_BAR_WIDTH,
} from '../../src/cli/format-status.js';
import type { PeerStatus, ResourceStatus } from '../../src/resource/status.js';

const MiB = 1024 * 1024;

function peer(over: Partial<PeerStatus> = {}): PeerStatus {
  return {
    node: 'beta',
    nodeId: 1,
    role: 'Secondary',
    connection: 'Connected',
    replication: 'Established',
    peerDisk: 'UpToDate',
    outOfSyncBytes: 0,
    syncDonePercent: null,
    resync: null,
    verify: null,
    lastDecision: 'no-sync by rule=equal',
    lastError: null,
    splitBrain: false,
    leftGracefully: false,
    diskless: false,
    bytesSent: 0,
    bytesReceived: 0,
    ...over,
  };
}

function resource(peers: PeerStatus[], over: Partial<ResourceStatus> = {}): ResourceStatus {
  return {
    name: 'r0',
    node: 'alpha',
    nodeId: 0,
    role: 'Primary',
    roleReason: 'primary',
    disk: 'UpToDate',
    diskless: false,
    quorum: { have: true, votes: 2, needed: 0, voters: 2, reason: 'quorum off', setting: 'off', onNoQuorum: 'suspend-io' },
    suspended: [],
    promotion: { autoPromote: false, candidates: ['alpha'], reason: 'this node is Primary', failoverPending: false, lastFailoverChoice: null, preparedFor: null },
    sizeBytes: 256 * MiB,
    nbd: { address: '127.0.0.1:10809', clients: [] },
    peers,
    generation: { current: '0000000000000001', history: ['0000000000000000', '0000000000000000'] },
    flags: [],
    io: { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, trims: 0, zeroes: 0, errors: 0 },
    upSec: 1,
    ...over,
  };
}

describe('quorum and suspension lines', () => {
  it('show quorum only where configured, and a suspension with its reason', () => {
    const off = formatStatus([resource([peer()])]);
    expect(off).not.toMatch(/quorum:/);
    const lost = formatStatus([
      resource([peer()], {
        quorum: { have: false, votes: 1, needed: 2, voters: 3, reason: '1 of 3 votes, 2 needed (majority)', setting: 'majority', onNoQuorum: 'suspend-io' },
        suspended: ['no quorum'],
      }),
    ]);
    expect(lost).toMatch(/quorum:no \(1 of 3 votes, 2 needed\)/);
    expect(lost).toMatch(/io:suspended \(no quorum\)/);
  });
});

describe('progressBar', () => {
  it('is always the same width, with the arrow at the done fraction', () => {
    for (const p of [0, 0.1, 4.99, 5, 45.2, 50, 99.9, 100]) {
      expect(progressBar(p)).toHaveLength(PROGRESS_BAR_WIDTH + 2);
    }
    expect(progressBar(0)).toBe(`[>${' '.repeat(19)}]`);
    expect(progressBar(45.2)).toBe(`[${'='.repeat(9)}>${' '.repeat(10)}]`);
    expect(progressBar(99.9)).toBe(`[${'='.repeat(19)}>]`);
    expect(progressBar(100)).toBe(`[${'='.repeat(20)}]`);
  });

  it('clamps values outside 0..100 and non-numbers', () => {
    expect(progressBar(-5)).toBe(progressBar(0));
    expect(progressBar(250)).toBe(progressBar(100));
    expect(progressBar(Number.NaN)).toBe(progressBar(0));
  });

  it('takes another width', () => {
    expect(progressBar(50, 10)).toBe('[=====>    ]');
  });
});

describe('formatEta', () => {
  it('writes m:ss under an hour and h:mm:ss above', () => {
    expect(formatEta(0)).toBe('0:00');
    expect(formatEta(7)).toBe('0:07');
    expect(formatEta(12.4)).toBe('0:12');
    expect(formatEta(59.6)).toBe('1:00');
    expect(formatEta(754)).toBe('12:34');
    expect(formatEta(3599)).toBe('59:59');
    expect(formatEta(3600)).toBe('1:00:00');
    expect(formatEta(3723)).toBe('1:02:03');
    expect(formatEta(100 * 3600)).toBe('100:00:00');
  });

  it('says --:-- when nothing can be estimated', () => {
    expect(formatEta(null)).toBe('--:--');
    expect(formatEta(-1)).toBe('--:--');
    expect(formatEta(Number.POSITIVE_INFINITY)).toBe('--:--');
  });
});

describe('sizes and rates', () => {
  it('uses binary units', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1024)).toBe('1.00 KiB');
    expect(formatBytes(256 * MiB)).toBe('256.00 MiB');
    expect(formatBytes(1.5 * 1024 * MiB)).toBe('1.50 GiB');
  });

  it('gives a rate one decimal', () => {
    expect(formatRate(120.3 * MiB)).toBe('120.3 MiB/s');
    expect(formatRate(512 * 1024)).toBe('512.0 KiB/s');
    expect(formatRate(0)).toBe('0 B/s');
  });
});

describe('formatProgress', () => {
  it('shows bar, percentage, rate and ETA', () => {
    const resync = { doneBytes: 45 * MiB, totalBytes: 100 * MiB, bytesPerSec: Math.round(120.3 * MiB), etaSec: 12, paused: false };
    expect(formatProgress(45.2, resync)).toBe('[=========>          ] 45.2% 120.3 MiB/s ETA 0:12');
  });

  it('marks a paused resync and an unknown ETA', () => {
    const resync = { doneBytes: 0, totalBytes: MiB, bytesPerSec: 0, etaSec: null, paused: true };
    expect(formatProgress(0, resync)).toBe('[>                   ] 0.0% 0 B/s ETA --:-- (paused)');
  });

  it('is only the bar and percentage without resync figures', () => {
    expect(formatProgress(100, null)).toBe('[====================] 100.0%');
  });
});

describe('formatVerify', () => {
  it('a running verify is a bar with what it found so far', () => {
    expect(formatVerify({ doneBytes: 25, totalBytes: 100, outOfSyncBlocks: 0, finished: false })).toBe(
      'verify: [=====>              ] 25.0% no block differs so far',
    );
    expect(formatVerify({ doneBytes: 50, totalBytes: 100, outOfSyncBlocks: 1, finished: false })).toMatch(/50\.0% 1 block differs so far$/);
  });

  it('a finished verify gives its finding', () => {
    expect(formatVerify({ doneBytes: 100, totalBytes: 100, outOfSyncBlocks: 3, finished: true })).toBe('verify done: 3 blocks differ');
    expect(formatVerify({ doneBytes: 100, totalBytes: 100, outOfSyncBlocks: 0, finished: true })).toBe('verify done: no block differs');
  });

  it('shows under the peer', () => {
    const lines = formatPeer(peer({ verify: { doneBytes: 100, totalBytes: 100, outOfSyncBlocks: 2, finished: true } }));
    expect(lines[2]).toBe('    verify done: 2 blocks differ');
  });
});

describe('formatPeer', () => {
  it('connected and in sync: role, connection, replication and peer disk', () => {
    expect(formatPeer(peer())).toEqual(['  beta role:Secondary connection:Connected', '    replication:Established peer-disk:UpToDate']);
  });

  it('a running resync gets a progress line and the out-of-sync size', () => {
    const lines = formatPeer(
      peer({
        replication: 'SyncSource',
        peerDisk: 'Inconsistent',
        outOfSyncBytes: 140 * MiB,
        syncDonePercent: 45.2,
        resync: { doneBytes: 116 * MiB, totalBytes: 256 * MiB, bytesPerSec: Math.round(120.3 * MiB), etaSec: 72, paused: false },
      }),
    );
    expect(lines).toEqual([
      '  beta role:Secondary connection:Connected',
      '    replication:SyncSource peer-disk:Inconsistent out-of-sync:140.00 MiB',
      '    [=========>          ] 45.2% 120.3 MiB/s ETA 1:12',
    ]);
  });

  it('a SyncTarget shows the same line from its side', () => {
    const lines = formatPeer(
      peer({
        node: 'alpha',
        role: 'Primary',
        replication: 'SyncTarget',
        syncDonePercent: 10,
        resync: { doneBytes: 1, totalBytes: 10, bytesPerSec: 1024, etaSec: 3725, paused: false },
      }),
    );
    expect(lines[1]).toBe('    replication:SyncTarget peer-disk:UpToDate');
    expect(lines[2]).toBe('    [==>                 ] 10.0% 1.0 KiB/s ETA 1:02:05');
  });

  it('a peer that is away: no role, the bitmap size, the last decision and error', () => {
    const lines = formatPeer(
      peer({
        role: 'Unknown',
        connection: 'Connecting',
        replication: 'Off',
        peerDisk: 'DUnknown',
        outOfSyncBytes: 8 * MiB,
        lastDecision: 'source-use-bitmap by rule=bitmap-self',
        lastError: 'connecting to 127.0.0.1:7790: connect ECONNREFUSED 127.0.0.1:7790',
      }),
    );
    expect(lines).toEqual([
      '  beta connection:Connecting',
      '    out-of-sync:8.00 MiB',
      '    last decision: source-use-bitmap by rule=bitmap-self',
      '    last error: connecting to 127.0.0.1:7790: connect ECONNREFUSED 127.0.0.1:7790',
    ]);
  });

  it('a peer never connected: only its connection state', () => {
    expect(
      formatPeer(peer({ role: 'Unknown', connection: 'StandAlone', replication: 'Off', peerDisk: 'DUnknown', outOfSyncBytes: null, lastDecision: null })),
    ).toEqual(['  beta connection:StandAlone']);
  });

  it('the last decision and error are history while connected: not shown', () => {
    const lines = formatPeer(peer({ lastError: 'no PING_ACK within 500 ms' }));
    expect(lines.join('\n')).not.toMatch(/last (decision|error)/);
  });

  it('split brain is flagged on the peer line and explained', () => {
    const lines = formatPeer(
      peer({
        role: 'Unknown',
        connection: 'StandAlone',
        replication: 'Off',
        peerDisk: 'DUnknown',
        outOfSyncBytes: MiB,
        splitBrain: true,
        lastDecision: 'split-brain-auto by rule=bitmap-both',
        lastError: 'split brain detected (split-brain-auto by rule=bitmap-both); resolve it before connecting again',
      }),
    );
    expect(lines[0]).toBe('  beta connection:StandAlone split-brain');
    expect(lines[1]).toBe('    out-of-sync:1.00 MiB');
    expect(lines[2]).toMatch(/^ {4}split brain: .*StandAlone/);
    expect(lines[3]).toBe('    last decision: split-brain-auto by rule=bitmap-both');
    expect(lines[4]).toMatch(/^ {4}last error: split brain detected/);
  });

  it('a refused connection (wrong secret) keeps its reason', () => {
    const lines = formatPeer(peer({ role: 'Unknown', connection: 'Connecting', replication: 'Off', peerDisk: 'DUnknown', lastDecision: null, lastError: 'authentication failed' }));
    expect(lines).toEqual(['  beta connection:Connecting', '    last error: authentication failed']);
  });
});

describe('formatStatus', () => {
  it('lays out resources like drbdadm status, each followed by an empty line', () => {
    const text = formatStatus([
      resource([peer()], { nbd: { address: '127.0.0.1:10809', clients: [{ id: 1, remote: '127.0.0.1:5000', tls: true, connectedSec: 3 }] } }),
      resource([], { name: 'r1', role: 'Secondary', disk: 'Inconsistent', nbd: { address: null, clients: [] } }),
    ]);
    expect(text).toBe(
      [
        'r0 node:alpha role:Primary',
        '  disk:UpToDate size:256.00 MiB',
        '  nbd:127.0.0.1:10809 clients:1 [127.0.0.1:5000 (tls)]',
        '  beta role:Secondary connection:Connected',
        '    replication:Established peer-disk:UpToDate',
        '',
        'r1 node:alpha role:Secondary',
        '  disk:Inconsistent size:256.00 MiB',
        '',
      ].join('\n'),
    );
  });

  it('is empty for no resources', () => {
    expect(formatStatus([])).toBe('');
  });
});
