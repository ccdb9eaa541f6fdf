/**
 * The resource's view of its superblock: the flags it acts on, by name, and
 * the one way to derive the next superblock from a change of them.
 */
import { MD_FLAGS, flagNames, rotateHistory, type Superblock } from '../meta/index.js';

export interface MdFacts {
  consistent: boolean;
  wasUpToDate: boolean;
  primary: boolean;
  crashedPrimary: boolean;
  currentUuid: bigint;
  historyUuids: readonly bigint[];
}

export function readMdFlags(sb: Superblock): MdFacts {
  return {
    consistent: (sb.flags & MD_FLAGS.CONSISTENT) !== 0,
    wasUpToDate: (sb.flags & MD_FLAGS.WAS_UP_TO_DATE) !== 0,
    primary: (sb.flags & MD_FLAGS.PRIMARY_IND) !== 0,
    crashedPrimary: (sb.flags & MD_FLAGS.CRASHED_PRIMARY) !== 0,
    currentUuid: sb.currentUuid,
    historyUuids: sb.historyUuids,
  };
}

export function mdFlagNames(sb: Superblock): string[] {
  return flagNames(sb.flags, MD_FLAGS);
}

export interface MdChange {
  consistent?: boolean;
  wasUpToDate?: boolean;
  primary?: boolean;
  crashedPrimary?: boolean;
  /** Start a new data generation: the old current UUID moves to history. */
  newCurrentUuid?: bigint;
}

function setBit(flags: number, bit: number, on: boolean | undefined): number {
  if (on === undefined) return flags;
  return on ? flags | bit : flags & ~bit;
}

export function superblockWith(sb: Superblock, change: MdChange): Superblock {
  let flags = sb.flags;
  flags = setBit(flags, MD_FLAGS.CONSISTENT, change.consistent);
  flags = setBit(flags, MD_FLAGS.WAS_UP_TO_DATE, change.wasUpToDate);
  flags = setBit(flags, MD_FLAGS.PRIMARY_IND, change.primary);
  flags = setBit(flags, MD_FLAGS.CRASHED_PRIMARY, change.crashedPrimary);
  const next: Superblock = { ...sb, flags: flags >>> 0 };
  if (change.newCurrentUuid !== undefined) {
    next.historyUuids = rotateHistory(sb.historyUuids, sb.currentUuid);
    next.currentUuid = change.newCurrentUuid;
  }
  return next;
}
