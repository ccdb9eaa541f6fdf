import { expect, test } from 'vitest';
import { chooseCandidate, rankCandidates, type CandidateDiskState, type NodeView } from '../../src/roles/candidates.js';
import { seededRandom } from '../helpers/seeded-random.js';

function node(nodeId: number, over: Partial<NodeView> = {}): NodeView {
  return { nodeId, name: `n${nodeId}`, disk: 'UpToDate', role: 'Secondary', connected: true, hasDisk: true, ...over };
}

test('UpToDate data nodes in sight are ranked by node-id', () => {
  const nodes = [node(3), node(1), node(2, { disk: 'Outdated' }), node(0, { disk: 'Inconsistent' }), node(5, { connected: false }), node(4, { hasDisk: false, disk: 'Diskless' })];
  expect(rankCandidates({ selfId: 3, nodes }).map((n) => n.nodeId)).toEqual([1, 3]);
  const c = chooseCandidate({ selfId: 3, nodes });
  expect(c.promoteSelf).toBe(false);
  expect(c.reason).toBe('n1 (node-id 1) is the first UpToDate candidate');
  expect(chooseCandidate({ selfId: 1, nodes })).toMatchObject({ promoteSelf: true, primary: null, reason: 'this node is the first UpToDate candidate' });
});

test('only UpToDate qualifies: Consistent, Outdated, Inconsistent, Diskless, Attaching, Failed and unknown disks do not', () => {
  const states: CandidateDiskState[] = ['Consistent', 'Outdated', 'Inconsistent', 'Diskless', 'Attaching', 'Failed', 'DUnknown'];
  const nodes = states.map((disk, i) => node(i, { disk }));
  expect(rankCandidates({ selfId: 0, nodes })).toEqual([]);
  expect(chooseCandidate({ selfId: 0, nodes })).toMatchObject({ promoteSelf: false, reason: 'no UpToDate node in sight' });
});

test('this node counts as seen even when not marked connected', () => {
  const nodes = [node(0, { connected: false }), node(1, { connected: false })];
  expect(chooseCandidate({ selfId: 1, nodes })).toMatchObject({ promoteSelf: true });
  expect(rankCandidates({ selfId: 1, nodes }).map((n) => n.nodeId)).toEqual([1]);
});

test('a lower node-id that is not connected does not block this node', () => {
  const nodes = [node(0, { connected: false }), node(1)];
  expect(chooseCandidate({ selfId: 1, nodes }).promoteSelf).toBe(true);
});

test('nobody promotes while a Primary is in sight', () => {
  const nodes = [node(0), node(1, { role: 'Primary' })];
  expect(chooseCandidate({ selfId: 0, nodes })).toMatchObject({ promoteSelf: false, reason: 'n1 is Primary' });
  expect(chooseCandidate({ selfId: 1, nodes })).toMatchObject({ promoteSelf: false, reason: 'this node is Primary' });
  // A Primary that is not connected is not in sight: that is for quorum and fencing to settle.
  const away = [node(0), node(1, { role: 'Primary', connected: false })];
  expect(chooseCandidate({ selfId: 0, nodes: away }).promoteSelf).toBe(true);
});

test('a witness never becomes a candidate, but may see one', () => {
  const nodes = [node(0, { connected: false }), node(1), node(2, { hasDisk: false, disk: 'Diskless' })];
  expect(chooseCandidate({ selfId: 2, nodes })).toMatchObject({ promoteSelf: false, candidates: [nodes[1]] });
  expect(chooseCandidate({ selfId: 1, nodes }).promoteSelf).toBe(true);
});

test('the order of the input does not matter', () => {
  const nodes = [node(4), node(2), node(7), node(1, { disk: 'Outdated' })];
  const a = chooseCandidate({ selfId: 2, nodes });
  const b = chooseCandidate({ selfId: 2, nodes: [...nodes].reverse() });
  expect(b).toEqual(a);
  expect(a.candidates.map((n) => n.nodeId)).toEqual([2, 4, 7]);
});

test('nodes that see the same facts never both pick themselves', () => {
  const DISKS: CandidateDiskState[] = ['UpToDate', 'UpToDate', 'Outdated', 'Inconsistent', 'Consistent'];
  for (let seed = 1; seed <= 5000; seed++) {
    const r = seededRandom(seed);
    const count = 2 + Math.floor(r() * 4);
    const ids = Array.from({ length: count }, (_, i) => i * 3 + Math.floor(r() * 3));
    const facts = ids.map((nodeId) => {
      const hasDisk = r() < 0.8;
      return { nodeId, hasDisk, disk: hasDisk ? DISKS[Math.floor(r() * DISKS.length)]! : ('Diskless' as const), primary: r() < 0.1 };
    });
    // A group of nodes that all see each other (and nobody else).
    const group = new Set(ids.filter(() => r() < 0.7));
    const picked: number[] = [];
    for (const self of group) {
      const nodes: NodeView[] = facts.map((f) => ({
        nodeId: f.nodeId,
        name: `n${f.nodeId}`,
        disk: group.has(f.nodeId) ? f.disk : 'DUnknown',
        role: group.has(f.nodeId) ? (f.primary ? 'Primary' : 'Secondary') : 'Unknown',
        connected: group.has(f.nodeId) && f.nodeId !== self,
        hasDisk: f.hasDisk,
      }));
      if (chooseCandidate({ selfId: self, nodes }).promoteSelf) picked.push(self);
    }
    expect(picked.length, `seed ${seed}`).toBeLessThanOrEqual(1);
    const eligible = facts.filter((f) => group.has(f.nodeId) && f.hasDisk && f.disk === 'UpToDate');
    const anyPrimary = facts.some((f) => group.has(f.nodeId) && f.primary);
    // Exactly one picks itself when there is someone to pick and no Primary.
    expect(picked.length, `seed ${seed}`).toBe(eligible.length > 0 && !anyPrimary ? 1 : 0);
    if (picked.length === 1) expect(picked[0]).toBe(Math.min(...eligible.map((f) => f.nodeId)));
  }
});

test('two nodes that cannot see each other each pick themselves: quorum must decide', () => {
  const a = chooseCandidate({ selfId: 0, nodes: [node(0), node(1, { connected: false, disk: 'DUnknown', role: 'Unknown' })] });
  const b = chooseCandidate({ selfId: 1, nodes: [node(0, { connected: false, disk: 'DUnknown', role: 'Unknown' }), node(1)] });
  expect([a.promoteSelf, b.promoteSelf]).toEqual([true, true]);
});
