import { describe, expect, test } from 'vitest';
import type { QuorumSetting } from '../../src/config/model.js';
import { calcQuorum, votesNeeded, type QuorumNode } from '../../src/roles/quorum.js';

/** Data nodes get ids 0.., witnesses follow. */
function cluster(data: number, witnesses = 0): QuorumNode[] {
  return [
    ...Array.from({ length: data }, (_, i) => ({ nodeId: i, diskless: false })),
    ...Array.from({ length: witnesses }, (_, i) => ({ nodeId: data + i, diskless: true })),
  ];
}

function q(setting: QuorumSetting, nodes: QuorumNode[], selfId: number, reachable: number[], o: { left?: number[]; had?: boolean } = {}) {
  return calcQuorum({ setting, selfId, nodes, reachable, leftGracefully: o.left ?? [], hadQuorum: o.had ?? true });
}

/** Every way to split a set into non-empty groups (Bell number many). */
function partitions(ids: number[]): number[][][] {
  if (ids.length === 0) return [[]];
  const [first, ...rest] = ids;
  const out: number[][][] = [];
  for (const p of partitions(rest)) {
    out.push([[first!], ...p]);
    p.forEach((_, i) => out.push(p.map((g, j) => (j === i ? [first!, ...g] : g))));
  }
  return out;
}

test('votes needed per setting', () => {
  expect([1, 2, 3, 4, 5].map((n) => votesNeeded('majority', n))).toEqual([1, 2, 2, 3, 3]);
  expect(votesNeeded('all', 4)).toBe(4);
  expect(votesNeeded(2, 5)).toBe(2);
  expect(votesNeeded('off', 5)).toBe(0);
  expect(partitions([1, 2, 3]).length).toBe(5);
  expect(partitions([0, 1, 2, 3, 4]).length).toBe(52);
});

test('quorum off always has it', () => {
  expect(q('off', cluster(3), 0, [], { had: false })).toEqual({ have: true, votes: 1, needed: 0, voters: 3, reason: 'quorum off' });
});

describe('two data nodes', () => {
  const nodes = cluster(2);
  test('both reachable: quorum; alone: none, whoever it is', () => {
    expect(q('majority', nodes, 0, [1], { had: false })).toMatchObject({ have: true, votes: 2, needed: 2, voters: 2, reason: '2 of 2 votes, 2 needed (majority)' });
    expect(q('majority', nodes, 0, [])).toMatchObject({ have: false, votes: 1, needed: 2 });
    expect(q('majority', nodes, 1, [])).toMatchObject({ have: false, votes: 1, needed: 2 });
  });
  test('the peer left gracefully: the last man standing keeps quorum', () => {
    expect(q('majority', nodes, 0, [], { left: [1] })).toMatchObject({ have: true, votes: 1, needed: 1, voters: 1 });
    expect(q('all', nodes, 0, [], { left: [1] })).toMatchObject({ have: true, votes: 1, needed: 1, voters: 1 });
  });
  test('a node that left and is reachable again votes again', () => {
    expect(q('majority', nodes, 0, [1], { left: [1] })).toMatchObject({ have: true, votes: 2, voters: 2 });
  });
  test('quorum 1 lets either side alone have it (the setting allows a split brain)', () => {
    expect(q(1, nodes, 0, [])).toMatchObject({ have: true, needed: 1 });
    expect(q(1, nodes, 1, [])).toMatchObject({ have: true, needed: 1 });
  });
});

describe('two data nodes and a witness', () => {
  const nodes = cluster(2, 1); // 0, 1 data; 2 witness
  test('all up: quorum from the data nodes alone', () => {
    expect(q('majority', nodes, 0, [1, 2], { had: false })).toMatchObject({ have: true, votes: 2, needed: 2, voters: 2 });
    expect(q('majority', nodes, 0, [1], { had: false })).toMatchObject({ have: true });
  });
  test('the data node that keeps the witness keeps quorum; the other loses it', () => {
    const kept = q('majority', nodes, 0, [2]);
    expect(kept).toMatchObject({ have: true, votes: 1, needed: 2, voters: 2 });
    expect(kept.reason).toBe('1 of 2 votes, 2 needed (majority); tie broken: 1 of 1 diskless nodes reachable');
    expect(q('majority', nodes, 1, [])).toMatchObject({ have: false });
  });
  test('a node without quorum cannot regain it through the witness alone', () => {
    const r = q('majority', nodes, 0, [2], { had: false });
    expect(r.have).toBe(false);
    expect(r.reason).toContain('only keeps quorum held before');
    // ... but regains it when the other data node is back.
    expect(q('majority', nodes, 0, [1], { had: false }).have).toBe(true);
  });
  test('the witness itself: quorum when it sees both data nodes, or one with quorum held', () => {
    expect(q('majority', nodes, 2, [0, 1], { had: false })).toMatchObject({ have: true, votes: 2, voters: 2 });
    expect(q('majority', nodes, 2, [0])).toMatchObject({ have: true, votes: 1 });
    expect(q('majority', nodes, 2, [])).toMatchObject({ have: false, votes: 0 });
  });
  test('the tie-break applies to majority only', () => {
    expect(q('all', nodes, 0, [2])).toMatchObject({ have: false });
    expect(q(2, nodes, 0, [2])).toMatchObject({ have: false });
  });
  test('a witness that left gracefully breaks no ties', () => {
    expect(q('majority', nodes, 0, [], { left: [2] })).toMatchObject({ have: false });
  });
  test('a data node that left gracefully leaves one voter', () => {
    expect(q('majority', nodes, 0, [], { left: [1] })).toMatchObject({ have: true, votes: 1, needed: 1, voters: 1 });
  });
});

describe('three data nodes', () => {
  const nodes = cluster(3);
  test('two of three have quorum, one does not', () => {
    expect(q('majority', nodes, 0, [1], { had: false })).toMatchObject({ have: true, votes: 2, needed: 2, voters: 3 });
    expect(q('majority', nodes, 2, [])).toMatchObject({ have: false, votes: 1 });
  });
  test('all: every voter', () => {
    expect(q('all', nodes, 0, [1])).toMatchObject({ have: false, needed: 3 });
    expect(q('all', nodes, 0, [1, 2])).toMatchObject({ have: true });
  });
  test('graceful leaves, one after the other: the last man standing', () => {
    expect(q('majority', nodes, 0, [1], { left: [2] })).toMatchObject({ have: true, votes: 2, needed: 2, voters: 2 });
    expect(q('majority', nodes, 0, [], { left: [1, 2] })).toMatchObject({ have: true, votes: 1, needed: 1, voters: 1 });
  });
  test('one left gracefully, one failed: an even split with no witness loses quorum', () => {
    expect(q('majority', nodes, 0, [], { left: [2] })).toMatchObject({ have: false, votes: 1, needed: 2, voters: 2 });
  });
});

describe('five data nodes', () => {
  const nodes = cluster(5);
  test('three of five have it, two do not', () => {
    expect(q('majority', nodes, 0, [1, 2])).toMatchObject({ have: true, votes: 3, needed: 3, voters: 5 });
    expect(q('majority', nodes, 3, [4])).toMatchObject({ have: false, votes: 2 });
  });
  test('a fixed number of votes', () => {
    expect(q(2, nodes, 3, [4])).toMatchObject({ have: true, needed: 2 });
    expect(q(4, nodes, 0, [1, 2])).toMatchObject({ have: false, needed: 4 });
  });
  test('two left gracefully: three voters', () => {
    expect(q('majority', nodes, 0, [1], { left: [3, 4] })).toMatchObject({ have: true, votes: 2, needed: 2, voters: 3 });
  });
});

describe('partitions of every shape', () => {
  const SHAPES: Array<[string, number, number]> = [
    ['2 data', 2, 0],
    ['2 data + witness', 2, 1],
    ['2 data + 2 witnesses', 2, 2],
    ['3 data', 3, 0],
    ['3 data + witness', 3, 1],
    ['4 data', 4, 0],
    ['4 data + witness', 4, 1],
    ['4 data + 2 witnesses', 4, 2],
    ['5 data', 5, 0],
  ];
  const SETTINGS: QuorumSetting[] = ['majority', 'all'];

  test.each(SHAPES)('%s: at most one group of any partition has quorum, even if every node held it before', (_name, data, witnesses) => {
    const nodes = cluster(data, witnesses);
    const ids = nodes.map((n) => n.nodeId);
    // Graceful leaves: none, or the last data node (when that leaves a cluster).
    const leaves = data > 2 ? [[], [data - 1]] : [[]];
    for (const setting of SETTINGS) {
      for (const left of leaves) {
        for (const partition of partitions(ids.filter((id) => !left.includes(id)))) {
          const quorate = partition.filter((group) =>
            group.some((self) => q(setting, nodes, self, group, { left, had: true }).have),
          );
          expect(quorate.length, `${setting} left ${left} partition ${JSON.stringify(partition)}`).toBeLessThanOrEqual(1);
          // Everyone in one group sees the same answer.
          for (const group of partition) {
            const answers = new Set(group.map((self) => q(setting, nodes, self, group, { left, had: true }).have));
            expect(answers.size).toBe(1);
          }
        }
      }
    }
  });

  test('majority: the group holding more than half of the data nodes always has quorum', () => {
    for (const [, data, witnesses] of SHAPES) {
      const nodes = cluster(data, witnesses);
      for (const partition of partitions(nodes.map((n) => n.nodeId))) {
        for (const group of partition) {
          const dataInGroup = group.filter((id) => id < data).length;
          if (dataInGroup * 2 > data) expect(q('majority', nodes, group[0]!, group, { had: false }).have).toBe(true);
          if (dataInGroup * 2 < data) expect(q('majority', nodes, group[0]!, group, { had: true }).have).toBe(false);
        }
      }
    }
  });
});
