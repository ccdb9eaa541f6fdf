import { describe, expect, test } from 'vitest';
import type { AfterSb0pri, AfterSb1pri } from '../../src/config/model.js';
import {
  describeAfterSb,
  mirrorAfterSb,
  resolveSplitBrain,
  type AfterSbInput,
  type AfterSbSide,
} from '../../src/replication/after-sb.js';
import { seededRandom } from '../helpers/seeded-random.js';

function side(over: Partial<AfterSbSide> = {}, name = 'alpha', nodeId = 0): AfterSbSide {
  return { nodeId, name, primary: false, changedBlocks: 10, primaryAtSplit: false, discardMyData: false, ...over };
}

function input(
  local: Partial<AfterSbSide>,
  peer: Partial<AfterSbSide>,
  o: { p0?: AfterSb0pri; p1?: AfterSb1pri; rc?: boolean; sb?: AfterSbInput['splitBrain'] } = {},
): AfterSbInput {
  return {
    policies: { afterSb0pri: o.p0 ?? { policy: 'disconnect' }, afterSb1pri: o.p1 ?? 'disconnect', afterSb2pri: 'disconnect' },
    splitBrain: o.sb ?? 'split-brain-auto',
    local: side(local, 'alpha', 0),
    peer: side(peer, 'beta', 1),
    resolveConflicts: o.rc ?? false,
  };
}

function mirror(i: AfterSbInput): AfterSbInput {
  return { ...i, local: i.peer, peer: i.local, resolveConflicts: !i.resolveConflicts };
}

/** Runs both nodes' view and checks they agree; returns this node's result. */
function both(i: AfterSbInput): { outcome: string; rule: string; policy: string } {
  const mine = resolveSplitBrain(i);
  expect(resolveSplitBrain(mirror(i))).toEqual(mirrorAfterSb(mine));
  return mine;
}

const ZERO: AfterSb0pri = { policy: 'discard-zero-changes' };
const LEAST: AfterSb0pri = { policy: 'discard-least-changes' };
const YOUNGER: AfterSb0pri = { policy: 'discard-younger-primary' };
const OLDER: AfterSb0pri = { policy: 'discard-older-primary' };

describe('after-sb-0pri', () => {
  test('disconnect is the default and never picks a side', () => {
    expect(both(input({ changedBlocks: 0 }, { changedBlocks: 5 }))).toEqual({ outcome: 'disconnect', rule: 'disconnect', policy: 'after-sb-0pri disconnect' });
  });

  test('discard-zero-changes: the side without changes loses', () => {
    expect(both(input({ changedBlocks: 0 }, { changedBlocks: 5 }, { p0: ZERO }))).toEqual({ outcome: 'discard-local', rule: 'zero-changes-self', policy: 'after-sb-0pri discard-zero-changes' });
    expect(both(input({ changedBlocks: 5 }, { changedBlocks: 0 }, { p0: ZERO }))).toMatchObject({ outcome: 'discard-remote', rule: 'zero-changes-peer' });
  });

  test('discard-zero-changes: both without changes goes to the tie-break, whose holder yields', () => {
    expect(both(input({ changedBlocks: 0 }, { changedBlocks: 0 }, { p0: ZERO, rc: true }))).toMatchObject({ outcome: 'discard-local', rule: 'zero-changes-both' });
    expect(both(input({ changedBlocks: 0 }, { changedBlocks: 0 }, { p0: ZERO, rc: false }))).toMatchObject({ outcome: 'discard-remote', rule: 'zero-changes-both' });
  });

  test('discard-zero-changes: both changed is a disconnect (no fall-through)', () => {
    expect(both(input({ changedBlocks: 1 }, { changedBlocks: 900 }, { p0: ZERO }))).toMatchObject({ outcome: 'disconnect', rule: 'changes-both' });
  });

  test('discard-least-changes: fewer changed blocks loses, equal goes to the tie-break', () => {
    expect(both(input({ changedBlocks: 3 }, { changedBlocks: 4 }, { p0: LEAST }))).toMatchObject({ outcome: 'discard-local', rule: 'least-changes-self' });
    expect(both(input({ changedBlocks: 4 }, { changedBlocks: 3 }, { p0: LEAST }))).toMatchObject({ outcome: 'discard-remote', rule: 'least-changes-peer' });
    expect(both(input({ changedBlocks: 0 }, { changedBlocks: 3 }, { p0: LEAST }))).toMatchObject({ outcome: 'discard-local', rule: 'least-changes-self' });
    expect(both(input({ changedBlocks: 7 }, { changedBlocks: 7 }, { p0: LEAST, rc: true }))).toMatchObject({ outcome: 'discard-local', rule: 'least-changes-equal' });
    expect(both(input({ changedBlocks: 7 }, { changedBlocks: 7 }, { p0: LEAST, rc: false }))).toMatchObject({ outcome: 'discard-remote', rule: 'least-changes-equal' });
  });

  test('discard-younger-primary: the side that was not Primary at the split loses', () => {
    expect(both(input({ primaryAtSplit: false, changedBlocks: 900 }, { primaryAtSplit: true, changedBlocks: 1 }, { p0: YOUNGER }))).toMatchObject({ outcome: 'discard-local', rule: 'younger-primary-self' });
    expect(both(input({ primaryAtSplit: true }, { primaryAtSplit: false }, { p0: YOUNGER }))).toMatchObject({ outcome: 'discard-remote', rule: 'younger-primary-peer' });
  });

  test('discard-older-primary: the side that was Primary at the split loses', () => {
    expect(both(input({ primaryAtSplit: true, changedBlocks: 0 }, { primaryAtSplit: false }, { p0: OLDER }))).toMatchObject({ outcome: 'discard-local', rule: 'older-primary-self' });
    expect(both(input({ primaryAtSplit: false }, { primaryAtSplit: true }, { p0: OLDER }))).toMatchObject({ outcome: 'discard-remote', rule: 'older-primary-peer' });
  });

  test('younger/older without a difference fall through to zero-changes, then least-changes', () => {
    for (const p0 of [YOUNGER, OLDER]) {
      for (const atSplit of [false, true]) {
        const a = { primaryAtSplit: atSplit };
        expect(both(input({ ...a, changedBlocks: 0 }, { ...a, changedBlocks: 2 }, { p0 }))).toMatchObject({ outcome: 'discard-local', rule: 'zero-changes-self' });
        expect(both(input({ ...a, changedBlocks: 0 }, { ...a, changedBlocks: 0 }, { p0, rc: true }))).toMatchObject({ outcome: 'discard-local', rule: 'zero-changes-both' });
        expect(both(input({ ...a, changedBlocks: 9 }, { ...a, changedBlocks: 2 }, { p0 }))).toMatchObject({ outcome: 'discard-remote', rule: 'least-changes-peer' });
        expect(both(input({ ...a, changedBlocks: 2 }, { ...a, changedBlocks: 2 }, { p0, rc: false }))).toMatchObject({ outcome: 'discard-remote', rule: 'least-changes-equal' });
      }
    }
  });

  test('discard-node-NAME: the named node loses, a third node means disconnect', () => {
    expect(both(input({}, {}, { p0: { policy: 'discard-node', node: 'alpha' } }))).toEqual({ outcome: 'discard-local', rule: 'discard-node-self', policy: 'after-sb-0pri discard-node-alpha' });
    expect(both(input({}, {}, { p0: { policy: 'discard-node', node: 'beta' } }))).toMatchObject({ outcome: 'discard-remote', rule: 'discard-node-peer' });
    expect(both(input({}, {}, { p0: { policy: 'discard-node', node: 'gamma' } }))).toMatchObject({ outcome: 'disconnect', rule: 'discard-node-other' });
  });
});

describe('after-sb-1pri', () => {
  const primary = { primary: true, primaryAtSplit: true };

  test('disconnect', () => {
    expect(both(input(primary, {}, { p0: ZERO, p1: 'disconnect' }))).toEqual({ outcome: 'disconnect', rule: 'disconnect', policy: 'after-sb-1pri disconnect' });
  });

  test('discard-secondary: the Secondary loses, whatever the changes', () => {
    expect(both(input({ ...primary, changedBlocks: 0 }, { changedBlocks: 99 }, { p1: 'discard-secondary' }))).toMatchObject({ outcome: 'discard-remote', rule: 'discard-secondary-peer' });
    expect(both(input({ changedBlocks: 99 }, { ...primary, changedBlocks: 0 }, { p1: 'discard-secondary' }))).toMatchObject({ outcome: 'discard-local', rule: 'discard-secondary-self' });
  });

  test('consensus: the 0pri result when it discards the Secondary', () => {
    expect(both(input(primary, { changedBlocks: 0 }, { p0: ZERO, p1: 'consensus' }))).toEqual({ outcome: 'discard-remote', rule: 'consensus:zero-changes-peer', policy: 'after-sb-1pri consensus' });
    expect(both(input({ changedBlocks: 2 }, { ...primary, changedBlocks: 5 }, { p0: LEAST, p1: 'consensus' }))).toMatchObject({ outcome: 'discard-local', rule: 'consensus:least-changes-self' });
  });

  test('consensus: disconnect when the 0pri result would discard the Primary or picks nobody', () => {
    expect(both(input({ ...primary, changedBlocks: 0 }, { changedBlocks: 5 }, { p0: ZERO, p1: 'consensus' }))).toMatchObject({ outcome: 'disconnect', rule: 'no-consensus:zero-changes-self' });
    expect(both(input(primary, {}, { p0: { policy: 'disconnect' }, p1: 'consensus' }))).toMatchObject({ outcome: 'disconnect', rule: 'no-consensus:disconnect' });
    expect(both(input(primary, {}, { p0: { policy: 'discard-node', node: 'alpha' }, p1: 'consensus' }))).toMatchObject({ outcome: 'disconnect', rule: 'no-consensus:discard-node-self' });
    expect(both(input(primary, {}, { p0: { policy: 'discard-node', node: 'beta' }, p1: 'consensus' }))).toMatchObject({ outcome: 'discard-remote', rule: 'consensus:discard-node-peer' });
    // The Primary that was Primary at the split is the older one: older-primary would discard it.
    expect(both(input(primary, {}, { p0: OLDER, p1: 'consensus' }))).toMatchObject({ outcome: 'disconnect', rule: 'no-consensus:older-primary-self' });
    expect(both(input(primary, {}, { p0: YOUNGER, p1: 'consensus' }))).toMatchObject({ outcome: 'discard-remote', rule: 'consensus:younger-primary-peer' });
  });
});

describe('after-sb-2pri and the operator', () => {
  test('two Primaries always disconnect', () => {
    const p = { primary: true };
    for (const p1 of ['disconnect', 'consensus', 'discard-secondary'] as const) {
      expect(both(input({ ...p, changedBlocks: 0 }, { ...p, changedBlocks: 3 }, { p0: ZERO, p1 }))).toEqual({ outcome: 'disconnect', rule: 'disconnect', policy: 'after-sb-2pri disconnect' });
    }
  });

  test('discard-my-data: that side loses, before and whatever the policy', () => {
    expect(both(input({ discardMyData: true, changedBlocks: 900 }, { changedBlocks: 0 }, { p0: ZERO }))).toEqual({ outcome: 'discard-local', rule: 'discard-my-data-self', policy: 'discard-my-data' });
    expect(both(input({}, { discardMyData: true }))).toMatchObject({ outcome: 'discard-remote', rule: 'discard-my-data-peer' });
    expect(both(input({ primary: true }, { discardMyData: true }, { p1: 'disconnect' }))).toMatchObject({ outcome: 'discard-remote', rule: 'discard-my-data-peer' });
  });

  test('discard-my-data on both sides, or on a Primary, disconnects', () => {
    expect(both(input({ discardMyData: true }, { discardMyData: true }, { p0: LEAST }))).toMatchObject({ outcome: 'disconnect', rule: 'discard-my-data-both' });
    expect(both(input({ discardMyData: true, primary: true }, {}, { p1: 'discard-secondary' }))).toMatchObject({ outcome: 'disconnect', rule: 'discard-my-data-on-primary-self' });
  });

  test('a split brain the bitmaps do not record yields only to the operator', () => {
    const sb = 'split-brain-disconnect' as const;
    expect(both(input({ changedBlocks: 0 }, {}, { p0: ZERO, sb }))).toEqual({ outcome: 'disconnect', rule: 'changes-not-recorded', policy: 'none' });
    expect(both(input({ primary: true }, {}, { p1: 'discard-secondary', sb }))).toMatchObject({ outcome: 'disconnect' });
    expect(both(input({}, { discardMyData: true }, { sb }))).toMatchObject({ outcome: 'discard-remote', rule: 'discard-my-data-peer' });
  });

  test('describe gives one log line', () => {
    expect(describeAfterSb(resolveSplitBrain(input({ changedBlocks: 0 }, {}, { p0: ZERO })))).toBe('discard-local by rule=zero-changes-self (after-sb-0pri discard-zero-changes)');
  });
});

describe('symmetry over random inputs', () => {
  const POLICIES_0: AfterSb0pri[] = [
    { policy: 'disconnect' },
    YOUNGER,
    OLDER,
    ZERO,
    LEAST,
    { policy: 'discard-node', node: 'alpha' },
    { policy: 'discard-node', node: 'beta' },
    { policy: 'discard-node', node: 'gamma' },
  ];
  const POLICIES_1: AfterSb1pri[] = ['disconnect', 'consensus', 'discard-secondary'];

  test('both nodes reach mirrored outcomes, never both keep or both discard, and no Primary loses', () => {
    for (let seed = 1; seed <= 20_000; seed++) {
      const r = seededRandom(seed);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
      const randomSide = (name: string, nodeId: number): AfterSbSide => ({
        nodeId,
        name,
        primary: r() < 0.4,
        // Small counts so that zeros and ties come up often.
        changedBlocks: pick([0, 0, 1, 2, 3, 1000]),
        primaryAtSplit: r() < 0.5,
        discardMyData: r() < 0.15,
      });
      const i: AfterSbInput = {
        policies: { afterSb0pri: pick(POLICIES_0), afterSb1pri: pick(POLICIES_1), afterSb2pri: 'disconnect' },
        splitBrain: r() < 0.8 ? 'split-brain-auto' : 'split-brain-disconnect',
        local: randomSide('alpha', 0),
        peer: randomSide('beta', 1),
        resolveConflicts: r() < 0.5,
      };
      const mine = resolveSplitBrain(i);
      const theirs = resolveSplitBrain(mirror(i));
      expect(theirs, `seed ${seed}`).toEqual(mirrorAfterSb(mine));
      if (mine.outcome === 'discard-local') expect(i.local.primary, `seed ${seed}`).toBe(false);
      if (mine.outcome === 'discard-remote') expect(i.peer.primary, `seed ${seed}`).toBe(false);
      if (i.local.primary && i.peer.primary && !i.local.discardMyData && !i.peer.discardMyData) expect(mine.outcome).toBe('disconnect');
    }
  });
});
