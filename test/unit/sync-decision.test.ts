import { describe, expect, it } from 'vitest';
import {
  NON_UUID_RULES,
  SYNC_RULES,
  decideSync,
  describeSyncDecision,
  describeSyncInput,
  mirrorDecision,
  type SyncDecision,
  type SyncDecisionInput,
  type SyncRule,
  type SyncSide,
  type SyncStrategy,
} from '../../src/replication/sync-decision.js';
import { seededRandom as prng } from '../helpers/seeded-random.js';

const X = 0xaaaa_0000_0000_0001n;
const Y = 0xbbbb_0000_0000_0002n;
const Z = 0xcccc_0000_0000_0003n;
const W = 0xdddd_0000_0000_0004n;

interface SideSpec {
  current: bigint;
  bitmap?: bigint;
  history?: [bigint, bigint];
  consistent?: boolean;
  crashedPrimary?: boolean;
  dirtyBlocks?: number;
}

function side(s: SideSpec): SyncSide {
  return {
    current: s.current,
    bitmap: s.bitmap ?? 0n,
    history: s.history ?? [0n, 0n],
    flags: { consistent: s.consistent ?? s.current !== 0n, wasUpToDate: s.consistent ?? s.current !== 0n, crashedPrimary: s.crashedPrimary ?? false, primary: false },
    dirtyBlocks: s.dirtyBlocks ?? 0,
  };
}

function input(local: SideSpec, peer: SideSpec, resolveConflicts = false): SyncDecisionInput {
  return { local: side(local), peer: side(peer), resolveConflicts };
}

function swap(i: SyncDecisionInput): SyncDecisionInput {
  return { local: i.peer, peer: i.local, resolveConflicts: !i.resolveConflicts };
}

interface Example {
  rule: SyncRule;
  strategy: SyncStrategy;
  input: SyncDecisionInput;
  byUuids?: SyncDecision['byUuids'];
}

/** A minimal example of every rule. */
const EXAMPLES: Example[] = [
  { rule: 'just-created-both', strategy: 'no-sync', input: input({ current: 0n }, { current: 0n }) },
  { rule: 'just-created-self', strategy: 'target-full-sync', input: input({ current: 0n }, { current: X }) },
  { rule: 'just-created-peer', strategy: 'source-full-sync', input: input({ current: X }, { current: 0n }) },
  { rule: 'equal', strategy: 'no-sync', input: input({ current: X }, { current: X }) },
  { rule: 'crashed-primary-self', strategy: 'source-use-bitmap', input: input({ current: X, crashedPrimary: true }, { current: X }) },
  { rule: 'crashed-primary-peer', strategy: 'target-use-bitmap', input: input({ current: X }, { current: X, crashedPrimary: true }) },
  { rule: 'crashed-primary-both', strategy: 'target-use-bitmap', input: input({ current: X, crashedPrimary: true }, { current: X, crashedPrimary: true }, true) },
  { rule: 'crashed-primary-both', strategy: 'source-use-bitmap', input: input({ current: X, crashedPrimary: true }, { current: X, crashedPrimary: true }, false) },
  { rule: 'bitmap-crossed', strategy: 'split-brain-disconnect', input: input({ current: X, bitmap: Y }, { current: Y, bitmap: X }) },
  // The peer went on from Y to X while we were away, recording what we missed.
  { rule: 'bitmap-peer', strategy: 'target-use-bitmap', input: input({ current: Y }, { current: X, bitmap: Y }) },
  { rule: 'bitmap-self', strategy: 'source-use-bitmap', input: input({ current: X, bitmap: Y }, { current: Y }) },
  { rule: 'history-crossed', strategy: 'split-brain-disconnect', input: input({ current: X, history: [Y, 0n] }, { current: Y, history: [X, 0n] }) },
  // The peer's history holds our generation, but no bitmap covers the gap.
  { rule: 'history-peer', strategy: 'target-full-sync', input: input({ current: Y }, { current: X, history: [Y, 0n] }) },
  { rule: 'history-self', strategy: 'source-full-sync', input: input({ current: X, history: [Z, Y] }, { current: Y }) },
  // Both moved on from Z while apart.
  { rule: 'bitmap-both', strategy: 'split-brain-auto', input: input({ current: X, bitmap: Z }, { current: Y, bitmap: Z }) },
  { rule: 'history-both', strategy: 'split-brain-disconnect', input: input({ current: X, history: [Z, 0n] }, { current: Y, history: [W, Z] }) },
  { rule: 'unrelated', strategy: 'unrelated-data', input: input({ current: X, bitmap: Z, history: [W, 0n] }, { current: Y }) },
  {
    rule: 'inconsistent-self',
    strategy: 'target-use-bitmap',
    byUuids: { strategy: 'source-use-bitmap', rule: 'bitmap-self' },
    input: input({ current: X, bitmap: Y, consistent: false }, { current: Y }),
  },
  {
    rule: 'inconsistent-peer',
    strategy: 'source-full-sync',
    byUuids: { strategy: 'target-full-sync', rule: 'history-peer' },
    input: input({ current: Y }, { current: X, history: [Y, 0n], consistent: false }),
  },
  {
    rule: 'inconsistent-both',
    strategy: 'inconsistent-source',
    byUuids: { strategy: 'target-use-bitmap', rule: 'bitmap-peer' },
    input: input({ current: Y, consistent: false }, { current: X, bitmap: Y, consistent: false }),
  },
  // Same generation, but writes reached one side while the other's disk was detached.
  {
    rule: 'dirty-self',
    strategy: 'source-use-bitmap',
    byUuids: { strategy: 'no-sync', rule: 'equal' },
    input: input({ current: X, dirtyBlocks: 3 }, { current: X }),
  },
  {
    rule: 'dirty-peer',
    strategy: 'target-use-bitmap',
    byUuids: { strategy: 'no-sync', rule: 'equal' },
    input: input({ current: X }, { current: X, dirtyBlocks: 3 }),
  },
];

describe('sync decision: every rule', () => {
  it('both sides dirty with the same generation: no side is known newer, nothing moves', () => {
    expect(decideSync(input({ current: X, dirtyBlocks: 2 }, { current: X, dirtyBlocks: 5 }))).toEqual({ strategy: 'no-sync', rule: 'equal' });
  });

  it('has an example of every rule', () => {
    expect(new Set(EXAMPLES.map((e) => e.rule))).toEqual(new Set(SYNC_RULES.filter((r) => !NON_UUID_RULES.has(r))));
  });

  for (const e of EXAMPLES) {
    it(`${e.rule} -> ${e.strategy}`, () => {
      const d = decideSync(e.input);
      expect(d).toEqual(e.byUuids ? { strategy: e.strategy, rule: e.rule, byUuids: e.byUuids } : { strategy: e.strategy, rule: e.rule });
    });
  }
});

describe('sync decision: earlier rules win', () => {
  const cases: Array<[string, SyncDecisionInput, SyncRule]> = [
    // A 0 current must not match the peer's clean (0) bitmap UUID.
    ['just-created before bitmap-peer', input({ current: 0n }, { current: X, bitmap: 0n }), 'just-created-self'],
    ['just-created before anything in history', input({ current: X }, { current: 0n, history: [X, 0n] }), 'just-created-peer'],
    ['equal before bitmap-self', input({ current: X, bitmap: X }, { current: X }), 'equal'],
    ['equal before history', input({ current: X, history: [X, 0n] }, { current: X, history: [X, 0n] }), 'equal'],
    ['crashed-primary counts only for equal currents', input({ current: Y, crashedPrimary: true }, { current: X, bitmap: Y }), 'bitmap-peer'],
    ['bitmap-peer before history-self', input({ current: Y, history: [X, 0n] }, { current: X, bitmap: Y }), 'bitmap-peer'],
    ['bitmap-self before history-peer', input({ current: X, bitmap: Y }, { current: Y, history: [X, 0n] }), 'bitmap-self'],
    ['bitmap-peer before bitmap-both', input({ current: Y, bitmap: Z }, { current: X, bitmap: Y }), 'bitmap-peer'],
    ['history-peer before bitmap-both', input({ current: Y, bitmap: Z }, { current: X, bitmap: Z, history: [Y, 0n] }), 'history-peer'],
    ['bitmap-both before history-both', input({ current: X, bitmap: Z, history: [W, 0n] }, { current: Y, bitmap: Z, history: [W, 0n] }), 'bitmap-both'],
    // a Primary that lost two peers one after the other: the later one's bitmap counts from the generation in between
    ['bitmap-both through a generation in between', input({ current: X, bitmap: W, history: [W, Z] }, { current: Y, bitmap: Z, history: [0n, 0n] }), 'bitmap-both'],
    ['history-both through a bitmap UUID', input({ current: X, bitmap: Z, history: [0n, 0n] }, { current: Y, bitmap: 0n, history: [Z, 0n] }), 'history-both'],
    ['zero history entries are never common', input({ current: X }, { current: Y }), 'unrelated'],
    ['zero bitmaps are never equal', input({ current: X, bitmap: 0n }, { current: Y, bitmap: 0n }), 'unrelated'],
  ];
  for (const [name, i, rule] of cases) {
    it(name, () => expect(decideSync(i).rule).toBe(rule));
  }

  it('an Inconsistent side turns a split brain into a sync from the consistent side', () => {
    const auto = decideSync(input({ current: X, bitmap: Z }, { current: Y, bitmap: Z, consistent: false }));
    expect(auto).toMatchObject({ strategy: 'source-use-bitmap', rule: 'inconsistent-peer', byUuids: { strategy: 'split-brain-auto' } });
    const hist = decideSync(input({ current: X, history: [Z, 0n], consistent: false }, { current: Y, history: [Z, 0n] }));
    expect(hist).toMatchObject({ strategy: 'target-full-sync', rule: 'inconsistent-self', byUuids: { rule: 'history-both' } });
  });

  it('unrelated data stays refused whatever the disk states', () => {
    expect(decideSync(input({ current: X, consistent: false }, { current: Y }))).toEqual({ strategy: 'unrelated-data', rule: 'unrelated' });
  });

  it('the disk states keep the UUID rule when they agree with it', () => {
    expect(decideSync(input({ current: 0n }, { current: X }))).toEqual({ strategy: 'target-full-sync', rule: 'just-created-self' });
    expect(decideSync(input({ current: Y, consistent: false }, { current: X, bitmap: Y }))).toEqual({ strategy: 'target-use-bitmap', rule: 'bitmap-peer' });
  });

  it('equal generations with one side Inconsistent sync by bitmap from the consistent side', () => {
    expect(decideSync(input({ current: X }, { current: X, consistent: false }))).toMatchObject({ strategy: 'source-use-bitmap', rule: 'inconsistent-peer' });
  });

  it('both just created but one side claims consistency: a full sync, never a bitmap one', () => {
    expect(decideSync(input({ current: 0n, consistent: true }, { current: 0n, consistent: false }))).toMatchObject({ strategy: 'source-full-sync', rule: 'inconsistent-peer' });
  });
});


describe('sync decision: symmetry', () => {
  for (const e of EXAMPLES) {
    it(`swapping the sides mirrors ${e.rule}`, () => {
      expect(decideSync(swap(e.input))).toEqual(mirrorDecision(decideSync(e.input)));
    });
  }

  it('holds for 20000 random inputs drawn from a small UUID pool', () => {
    const rnd = prng(0x51de);
    const pool = [0n, X, Y, Z, W];
    const pick = () => pool[Math.floor(rnd() * pool.length)]!;
    const randomSide = (): SideSpec => ({
      current: pick(),
      bitmap: pick(),
      history: [pick(), pick()],
      consistent: rnd() < 0.7,
      crashedPrimary: rnd() < 0.2,
      dirtyBlocks: rnd() < 0.3 ? 1 + Math.floor(rnd() * 10) : 0,
    });
    const rules = new Set<SyncRule>();
    for (let n = 0; n < 20_000; n++) {
      const i = input(randomSide(), randomSide(), rnd() < 0.5);
      const d = decideSync(i);
      rules.add(d.rule);
      expect(decideSync(swap(i))).toEqual(mirrorDecision(d));
    }
    expect(rules).toEqual(new Set(SYNC_RULES.filter((r) => !NON_UUID_RULES.has(r))));
  });
});

describe('sync decision: log lines', () => {
  it('describes a verdict in DRBD words, and what the UUIDs alone said when the disk states changed it', () => {
    expect(describeSyncDecision(decideSync(EXAMPLES.find((e) => e.rule === 'bitmap-peer')!.input))).toBe('target-use-bitmap by rule=bitmap-peer');
    expect(describeSyncDecision(decideSync(EXAMPLES.find((e) => e.rule === 'inconsistent-self')!.input))).toBe(
      'target-use-bitmap by rule=inconsistent-self (UUIDs alone: source-use-bitmap by rule=bitmap-self)',
    );
  });

  it('describes the facts', () => {
    const line = describeSyncInput(input({ current: X, bitmap: Y, crashedPrimary: true, dirtyBlocks: 12 }, { current: 0n }, true));
    expect(line).toBe(
      'self AAAA000000000001:BBBB000000000002:0000000000000000:0000000000000000 bits:12 flags:consistent,wasUpToDate,crashedPrimary ' +
        'peer 0000000000000000:0000000000000000:0000000000000000:0000000000000000 bits:0 flags:- resolve-conflicts:yes',
    );
  });
});
