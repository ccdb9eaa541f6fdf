/**
 * Which way data flows when two nodes connect, decided from the generation
 * UUIDs both sides exchanged (UUIDS packets) and the consistency of their
 * data. One pure function; both nodes run it on the same facts, each from
 * its own point of view, and reach mirrored verdicts (when one computes
 * source-use-bitmap, the other computes target-use-bitmap).
 *
 * The UUID rules follow DRBD's uuid comparison, in order; the first rule that
 * matches decides (docs/wire-protocol.md, "Sync decision", has the table):
 *
 *  1. just-created-both    both currents 0                     no-sync
 *  2. just-created-self    my current 0                        target-full-sync
 *  3. just-created-peer    peer's current 0                    source-full-sync
 *  4. equal / crashed-*    currents equal                      no-sync, or the crashed
 *                                                              Primary is source (bitmap)
 *  5. bitmap-crossed       each side's current is the other's  split-brain-disconnect
 *                          bitmap UUID (a contradiction)
 *  6. bitmap-peer          my current = peer's bitmap UUID     target-use-bitmap
 *  7. bitmap-self          my bitmap UUID = peer's current     source-use-bitmap
 *  8. history-crossed      each current in the other's history split-brain-disconnect
 *  9. history-peer         my current in peer's history        target-full-sync
 * 10. history-self         peer's current in my history        source-full-sync
 * 11. bitmap-both          bitmap UUIDs equal and not 0        split-brain-auto
 * 12. history-both         a history UUID in common            split-brain-disconnect
 * 13. unrelated            nothing in common                   unrelated-data
 *
 * Then the disk states, as DRBD's handshake does after the comparison: when
 * exactly one side is Inconsistent it has nothing to protect, so the other
 * side becomes the source whatever the UUIDs said (using the bitmaps when the
 * UUIDs related the sides through them or found one generation, else a full
 * sync);
 * when a sync would have an Inconsistent source, the connection is refused.
 *
 * The crossed rules are ours: DRBD's fixed order gives asymmetric answers in
 * those contradictory cases (both sides would claim the same role), while
 * here swapping the two sides always mirrors the verdict.
 */

/** Wire code (DECISION packet) = index. Append only. */
export const SYNC_STRATEGIES = [
  'no-sync',
  'source-use-bitmap',
  'target-use-bitmap',
  'source-full-sync',
  'target-full-sync',
  'split-brain-auto',
  'split-brain-disconnect',
  'unrelated-data',
  'inconsistent-source',
] as const;
export type SyncStrategy = (typeof SYNC_STRATEGIES)[number];

/** Wire code (DECISION packet) = index. Append only. */
export const SYNC_RULES = [
  'just-created-both',
  'just-created-self',
  'just-created-peer',
  'equal',
  'crashed-primary-self',
  'crashed-primary-peer',
  'crashed-primary-both',
  'bitmap-crossed',
  'bitmap-peer',
  'bitmap-self',
  'history-crossed',
  'history-peer',
  'history-self',
  'bitmap-both',
  'history-both',
  'unrelated',
  'inconsistent-self',
  'inconsistent-peer',
  'inconsistent-both',
  'dirty-self',
  'dirty-peer',
  // not UUID rules: a side without a disk has nothing to sync; a split
  // brain settled by an after-sb policy or by `connect --discard-my-data`
  'diskless',
  'after-sb-policy',
  'discard-my-data',
] as const;
export type SyncRule = (typeof SYNC_RULES)[number];

/** Rules the handshake applies around decideSync (it never returns them itself). */
export const NON_UUID_RULES: ReadonlySet<SyncRule> = new Set(['diskless', 'after-sb-policy', 'discard-my-data']);

export interface SyncSide {
  current: bigint;
  /** This side's bitmap UUID for the other side (0: that bitmap is clean). */
  bitmap: bigint;
  /** Newest first; 0 entries are empty. */
  history: readonly [bigint, bigint];
  flags: {
    consistent: boolean;
    wasUpToDate: boolean;
    crashedPrimary: boolean;
    primary: boolean;
  };
  /** Bits set in this side's bitmap for the other side. */
  dirtyBlocks: number;
  /** This side's bitmap UUID for the other was set while it was Primary (after-sb policies only). */
  primaryAtSplit?: boolean;
}

export interface SyncDecisionInput {
  local: SyncSide;
  peer: SyncSide;
  /**
   * The per-connection tie-breaker: true on exactly one of the two nodes
   * (fixed when the connection is set up, e.g. the lower node id). In a tie
   * the side holding it yields and becomes the sync target.
   */
  resolveConflicts: boolean;
}

export interface SyncDecision {
  strategy: SyncStrategy;
  rule: SyncRule;
  /** Set when the disk states changed the verdict: what the UUIDs alone said. */
  byUuids?: { strategy: SyncStrategy; rule: SyncRule };
}

/** Decides the sync direction at connect time. Pure and total: never throws. */
export function decideSync(input: SyncDecisionInput): SyncDecision {
  const byUuids = compareUuids(input);
  return applyDirtyBits(applyDiskStates(byUuids, input.local.flags.consistent, input.peer.flags.consistent), input);
}

/**
 * The same generation on both sides, yet one side has blocks marked for the
 * other: writes reached it while the other's disk was detached (or failed
 * a write). The marked side is the source for exactly those blocks. When
 * both have marks, neither is known newer for all of them: no sync, and the
 * marks stay for the operator (verify, invalidate).
 */
function applyDirtyBits(d: SyncDecision, { local, peer }: SyncDecisionInput): SyncDecision {
  if (d.strategy !== 'no-sync' || d.rule !== 'equal') return d;
  if (local.dirtyBlocks > 0 && peer.dirtyBlocks === 0) return { strategy: 'source-use-bitmap', rule: 'dirty-self', byUuids: d };
  if (peer.dirtyBlocks > 0 && local.dirtyBlocks === 0) return { strategy: 'target-use-bitmap', rule: 'dirty-peer', byUuids: d };
  return d;
}

function verdict(strategy: SyncStrategy, rule: SyncRule): SyncDecision {
  return { strategy, rule };
}

/** Rules 1-13: the generation UUIDs alone. */
function compareUuids({ local, peer, resolveConflicts }: SyncDecisionInput): SyncDecision {
  const self = local.current;
  const other = peer.current;

  if (self === 0n && other === 0n) return verdict('no-sync', 'just-created-both');
  if (self === 0n) return verdict('target-full-sync', 'just-created-self');
  if (other === 0n) return verdict('source-full-sync', 'just-created-peer');

  if (self === other) {
    // Same generation: only a crash of a Primary can have left blocks (its
    // activity log extents, set in its bitmap) that the other side lacks.
    const mine = local.flags.crashedPrimary;
    const theirs = peer.flags.crashedPrimary;
    if (!mine && !theirs) return verdict('no-sync', 'equal');
    if (mine && !theirs) return verdict('source-use-bitmap', 'crashed-primary-self');
    if (!mine && theirs) return verdict('target-use-bitmap', 'crashed-primary-peer');
    return verdict(resolveConflicts ? 'target-use-bitmap' : 'source-use-bitmap', 'crashed-primary-both');
  }

  // Currents are non-zero from here on, so a 0 (clean) bitmap UUID never matches.
  const peerBitmapIsMine = self === peer.bitmap;
  const myBitmapIsPeers = local.bitmap === other;
  if (peerBitmapIsMine && myBitmapIsPeers) return verdict('split-brain-disconnect', 'bitmap-crossed');
  if (peerBitmapIsMine) return verdict('target-use-bitmap', 'bitmap-peer');
  if (myBitmapIsPeers) return verdict('source-use-bitmap', 'bitmap-self');

  const mineInPeerHistory = inHistory(self, peer.history);
  const peersInMyHistory = inHistory(other, local.history);
  if (mineInPeerHistory && peersInMyHistory) return verdict('split-brain-disconnect', 'history-crossed');
  if (mineInPeerHistory) return verdict('target-full-sync', 'history-peer');
  if (peersInMyHistory) return verdict('source-full-sync', 'history-self');

  // Both sides started a generation from the same one while apart: both
  // bitmaps record their changes since, so a policy may pick a winner. The
  // generation one side's bitmap counts from may be one the other passed
  // through (a Primary that lost two peers one after the other started two
  // generations; the later peer never heard of the first): still both
  // bitmaps hold every change since the two parted.
  if (local.bitmap !== 0n && peer.bitmap !== 0n) {
    if (local.bitmap === peer.bitmap || inHistory(local.bitmap, peer.history) || inHistory(peer.bitmap, local.history)) {
      return verdict('split-brain-auto', 'bitmap-both');
    }
  }
  // Related, but the changes since the common ancestor are not all recorded.
  const mine = [local.bitmap, ...local.history].filter((u) => u !== 0n);
  const theirs = new Set([peer.bitmap, ...peer.history].filter((u) => u !== 0n));
  if (mine.some((u) => theirs.has(u))) return verdict('split-brain-disconnect', 'history-both');
  return verdict('unrelated-data', 'unrelated');
}

function inHistory(uuid: bigint, history: readonly [bigint, bigint]): boolean {
  return uuid !== 0n && (history[0] === uuid || history[1] === uuid);
}

/** Verdicts whose difference the bitmaps record. */
const BITMAP_RULES: ReadonlySet<SyncRule> = new Set([
  'equal',
  'crashed-primary-self',
  'crashed-primary-peer',
  'crashed-primary-both',
  'bitmap-peer',
  'bitmap-self',
  'bitmap-both',
]);

const SYNCS: ReadonlySet<SyncStrategy> = new Set(['source-use-bitmap', 'target-use-bitmap', 'source-full-sync', 'target-full-sync']);

/** The disk-state step, after the UUID rules. */
function applyDiskStates(byUuids: SyncDecision, localConsistent: boolean, peerConsistent: boolean): SyncDecision {
  // Unrelated data stays refused: an Inconsistent disk is no licence to
  // overwrite a disk that belongs to something else.
  if (byUuids.strategy === 'unrelated-data') return byUuids;
  if (localConsistent !== peerConsistent) {
    // The bitmaps cover the difference only when the UUIDs related the two
    // sides through them (or found the same generation); otherwise copy all.
    const full = !BITMAP_RULES.has(byUuids.rule);
    const strategy: SyncStrategy = localConsistent ? (full ? 'source-full-sync' : 'source-use-bitmap') : full ? 'target-full-sync' : 'target-use-bitmap';
    if (strategy === byUuids.strategy) return byUuids;
    return { strategy, rule: localConsistent ? 'inconsistent-peer' : 'inconsistent-self', byUuids };
  }
  if (!localConsistent && SYNCS.has(byUuids.strategy)) {
    // Both Inconsistent, yet the UUIDs name a source: it has no good data to give.
    return { strategy: 'inconsistent-source', rule: 'inconsistent-both', byUuids };
  }
  return byUuids;
}

/** The same verdict seen from the other side (source <-> target, self <-> peer). */
export function mirrorDecision(d: SyncDecision): SyncDecision {
  const out: SyncDecision = { strategy: mirrorStrategy(d.strategy), rule: mirrorRule(d.rule) };
  if (d.byUuids) out.byUuids = { strategy: mirrorStrategy(d.byUuids.strategy), rule: mirrorRule(d.byUuids.rule) };
  return out;
}

export function mirrorStrategy(s: SyncStrategy): SyncStrategy {
  if (s.startsWith('source-')) return s.replace('source-', 'target-') as SyncStrategy;
  if (s.startsWith('target-')) return s.replace('target-', 'source-') as SyncStrategy;
  return s;
}

export function mirrorRule(r: SyncRule): SyncRule {
  if (r.endsWith('-self')) return r.replace(/-self$/, '-peer') as SyncRule;
  if (r.endsWith('-peer')) return r.replace(/-peer$/, '-self') as SyncRule;
  return r;
}

/** A split brain, to be resolved by an after-split-brain policy or the operator. */
export function isSplitBrain(s: SyncStrategy): boolean {
  return s === 'split-brain-auto' || s === 'split-brain-disconnect';
}

/** One log line, in DRBD's words: `target-use-bitmap by rule=bitmap-peer`. */
export function describeSyncDecision(d: SyncDecision): string {
  const line = `${d.strategy} by rule=${d.rule}`;
  return d.byUuids ? `${line} (UUIDs alone: ${d.byUuids.strategy} by rule=${d.byUuids.rule})` : line;
}

/** The facts behind a verdict, for the log line that precedes it. */
export function describeSyncInput(input: SyncDecisionInput): string {
  const side = (s: SyncSide): string => {
    const flags = Object.entries(s.flags)
      .filter(([, on]) => on)
      .map(([name]) => name)
      .join(',');
    return `${hex(s.current)}:${hex(s.bitmap)}:${hex(s.history[0])}:${hex(s.history[1])} bits:${s.dirtyBlocks} flags:${flags || '-'}`;
  };
  return `self ${side(input.local)} peer ${side(input.peer)} resolve-conflicts:${input.resolveConflicts ? 'yes' : 'no'}`;
}

function hex(u: bigint): string {
  return u.toString(16).toUpperCase().padStart(16, '0');
}
