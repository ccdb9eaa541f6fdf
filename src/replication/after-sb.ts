/**
 * Resolving a split brain: which of the two nodes throws its changes away
 * (becomes SyncTarget), or neither (disconnect, the operator decides). One
 * pure function, run by both nodes on the same facts, each from its own
 * point of view; swapping the sides (and the tie-break bit) mirrors the
 * answer, so the two nodes never both keep or both discard their data.
 *
 * In order:
 *
 *  1. `connect --discard-my-data` (the operator): the side that said it
 *     loses. Both said it: disconnect. A Primary that said it: disconnect
 *     (its data is in use; demote it first, as DRBD's recovery steps do).
 *     The operator's word comes before the configured policy (in DRBD the
 *     policy comes first, so a policy could discard the other side's data
 *     against the operator's instruction).
 *  2. A split brain the bitmaps do not fully record (sync decision
 *     `split-brain-disconnect`): only the operator may choose; disconnect.
 *  3. The policy for the number of Primaries now: after-sb-0pri, -1pri or
 *     -2pri (net section), with DRBD's meanings:
 *
 *     discard-younger-primary  the side that became Primary after the split
 *     discard-older-primary    the side that was Primary at the split
 *       loses; when the sides do not differ in that, fall through to
 *     discard-zero-changes     the side without changes loses; both without
 *                              changes: the tie-break; both changed: for this
 *                              policy disconnect, else fall through to
 *     discard-least-changes    the side with fewer changed blocks loses;
 *                              equal: the tie-break
 *     discard-node-NAME        that node loses (neither side: disconnect)
 *     consensus (1pri)         the 0pri result, only if it discards the
 *                              Secondary; otherwise disconnect
 *     discard-secondary (1pri) the Secondary loses
 *     disconnect               disconnect
 *
 * The tie-break is the per-connection resolve-conflicts bit: the side that
 * holds it yields, as in the sync decision.
 *
 * A rule ending in `-self` or `-peer` points at one side: the side that
 * loses, or for a refusal the side that caused it (`no-consensus:...`
 * keeps the suffix of the 0pri result it refused).
 */
import assert from 'node:assert/strict';
import type { AfterSb0pri, AfterSb1pri, AfterSb2pri } from '../config/model.js';
import type { SyncStrategy } from './sync-decision.js';

export type AfterSbOutcome = 'discard-local' | 'discard-remote' | 'disconnect';

export interface AfterSbSide {
  nodeId: number;
  /** The node's `on NAME` (what discard-node-NAME names). */
  name: string;
  /** Primary now (UUIDS flag PRIMARY). */
  primary: boolean;
  /** Blocks changed since the split: bits set in this side's bitmap for the other side. */
  changedBlocks: number;
  /**
   * This side was Primary when its bitmap generation ended, i.e. at the
   * split (DRBD keeps this as the role bit of the bitmap UUID). A Primary
   * that loses its peer starts a new generation while Primary (true); a
   * Secondary promoted later starts it just before it becomes Primary
   * (false). Only discard-younger/older-primary read it.
   */
  primaryAtSplit: boolean;
  /** The operator connected this side with `--discard-my-data`. */
  discardMyData: boolean;
}

export interface AfterSbPolicies {
  afterSb0pri: AfterSb0pri;
  afterSb1pri: AfterSb1pri;
  afterSb2pri: AfterSb2pri;
}

export interface AfterSbInput {
  policies: AfterSbPolicies;
  /** What the sync decision found: whether the bitmaps record both sides' changes. */
  splitBrain: Extract<SyncStrategy, 'split-brain-auto' | 'split-brain-disconnect'>;
  local: AfterSbSide;
  peer: AfterSbSide;
  /** The per-connection tie-breaker, true on exactly one side; its holder yields. */
  resolveConflicts: boolean;
}

export interface AfterSbResult {
  /** discard-local: this node becomes SyncTarget; discard-remote: SyncSource. */
  outcome: AfterSbOutcome;
  /** Why, naming the losing side (`zero-changes-self`, `consensus:least-changes-peer`, ...). */
  rule: string;
  /** What decided: `discard-my-data`, `after-sb-1pri consensus`, ... */
  policy: string;
}

interface Verdict {
  outcome: AfterSbOutcome;
  rule: string;
}

const loses = (side: 'self' | 'peer', rule: string): Verdict => ({
  outcome: side === 'self' ? 'discard-local' : 'discard-remote',
  rule: `${rule}-${side}`,
});

const disconnect = (rule: string): Verdict => ({ outcome: 'disconnect', rule });

function tieBreak(rule: string, resolveConflicts: boolean): Verdict {
  return { outcome: resolveConflicts ? 'discard-local' : 'discard-remote', rule };
}

/** Resolves a split brain found at connect time. Pure and total: never throws. */
export function resolveSplitBrain(input: AfterSbInput): AfterSbResult {
  const { local, peer } = input;
  const result = decide(input);
  // Nothing automatic may overwrite the data a Primary is serving.
  assert.ok(!(result.outcome === 'discard-local' && local.primary), `after-sb would discard a Primary's data (${result.rule})`);
  assert.ok(!(result.outcome === 'discard-remote' && peer.primary), `after-sb would discard a Primary's data (${result.rule})`);
  return result;
}

function decide({ policies, splitBrain, local, peer, resolveConflicts }: AfterSbInput): AfterSbResult {
  if (local.discardMyData || peer.discardMyData) {
    const policy = 'discard-my-data';
    if (local.discardMyData && peer.discardMyData) return { ...disconnect('discard-my-data-both'), policy };
    const side = local.discardMyData ? 'self' : 'peer';
    const loser = local.discardMyData ? local : peer;
    if (loser.primary) return { ...disconnect(`discard-my-data-on-primary-${side}`), policy };
    return { ...loses(side, 'discard-my-data'), policy };
  }
  if (splitBrain === 'split-brain-disconnect') return { ...disconnect('changes-not-recorded'), policy: 'none' };

  const primaries = Number(local.primary) + Number(peer.primary);
  if (primaries === 0) {
    return { ...recover0pri(policies.afterSb0pri, local, peer, resolveConflicts), policy: `after-sb-0pri ${format0pri(policies.afterSb0pri)}` };
  }
  if (primaries === 1) {
    const policy = `after-sb-1pri ${policies.afterSb1pri}`;
    switch (policies.afterSb1pri) {
      case 'disconnect':
        return { ...disconnect('disconnect'), policy };
      case 'discard-secondary':
        return { ...loses(local.primary ? 'peer' : 'self', 'discard-secondary'), policy };
      case 'consensus': {
        const zero = recover0pri(policies.afterSb0pri, local, peer, resolveConflicts);
        const secondaryLoses =
          (zero.outcome === 'discard-local' && !local.primary) || (zero.outcome === 'discard-remote' && !peer.primary);
        return { ...(secondaryLoses ? { outcome: zero.outcome, rule: `consensus:${zero.rule}` } : disconnect(`no-consensus:${zero.rule}`)), policy };
      }
    }
  }
  // Both wrote as Primary: whichever side lost, writes that someone saw
  // acknowledged would vanish. Only the operator may choose.
  return { ...disconnect('disconnect'), policy: `after-sb-2pri ${policies.afterSb2pri}` };
}

function format0pri(p: AfterSb0pri): string {
  return p.policy === 'discard-node' ? `discard-node-${p.node}` : p.policy;
}

/** DRBD's 0pri recovery, also what consensus consults. */
function recover0pri(p: AfterSb0pri, local: AfterSbSide, peer: AfterSbSide, resolveConflicts: boolean): Verdict {
  switch (p.policy) {
    case 'disconnect':
      return disconnect('disconnect');
    case 'discard-node':
      if (p.node === local.name) return loses('self', 'discard-node');
      if (p.node === peer.name) return loses('peer', 'discard-node');
      // A third node is named: neither of these two may pick a loser.
      return disconnect('discard-node-other');
    case 'discard-younger-primary':
      // The younger Primary is the side that was not Primary at the split.
      if (local.primaryAtSplit !== peer.primaryAtSplit) return loses(local.primaryAtSplit ? 'peer' : 'self', 'younger-primary');
      return byChanges(false, local, peer, resolveConflicts);
    case 'discard-older-primary':
      if (local.primaryAtSplit !== peer.primaryAtSplit) return loses(local.primaryAtSplit ? 'self' : 'peer', 'older-primary');
      return byChanges(false, local, peer, resolveConflicts);
    case 'discard-zero-changes':
      return byChanges(true, local, peer, resolveConflicts);
    case 'discard-least-changes':
      return leastChanges(local, peer, resolveConflicts);
  }
}

/** discard-zero-changes; `only` stops there (the policy itself) instead of going on to least-changes. */
function byChanges(only: boolean, local: AfterSbSide, peer: AfterSbSide, resolveConflicts: boolean): Verdict {
  const mine = local.changedBlocks;
  const theirs = peer.changedBlocks;
  if (mine === 0 && theirs === 0) return tieBreak('zero-changes-both', resolveConflicts);
  if (mine === 0) return loses('self', 'zero-changes');
  if (theirs === 0) return loses('peer', 'zero-changes');
  if (only) return disconnect('changes-both');
  return leastChanges(local, peer, resolveConflicts);
}

function leastChanges(local: AfterSbSide, peer: AfterSbSide, resolveConflicts: boolean): Verdict {
  if (local.changedBlocks < peer.changedBlocks) return loses('self', 'least-changes');
  if (local.changedBlocks > peer.changedBlocks) return loses('peer', 'least-changes');
  return tieBreak('least-changes-equal', resolveConflicts);
}

/** The same result seen from the other side. */
export function mirrorAfterSb(r: AfterSbResult): AfterSbResult {
  const outcome: AfterSbOutcome = r.outcome === 'discard-local' ? 'discard-remote' : r.outcome === 'discard-remote' ? 'discard-local' : 'disconnect';
  const rule = r.rule.endsWith('-self') ? `${r.rule.slice(0, -5)}-peer` : r.rule.endsWith('-peer') ? `${r.rule.slice(0, -5)}-self` : r.rule;
  return { outcome, rule, policy: r.policy };
}

/** One log line: `discard-local by rule=zero-changes-self (after-sb-0pri discard-zero-changes)`. */
export function describeAfterSb(r: AfterSbResult): string {
  return `${r.outcome} by rule=${r.rule} (${r.policy})`;
}
