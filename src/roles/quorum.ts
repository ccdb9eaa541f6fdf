/**
 * Whether this node's partition has quorum (`options { quorum ...; }`).
 * Pure: the caller says who exists, who is reachable, who left gracefully
 * and whether quorum was held before; this says yes or no and why.
 *
 * The rule, after DRBD 9's quorum calculation:
 *
 *  - Voters are the nodes with a disk, minus those that left gracefully
 *    (`down` or a stopping daemon, which says goodbye; an operator's
 *    `disconnect` does not count as leaving; a node that is reachable
 *    again votes again). This node always votes when it has a
 *    disk. Leaving gracefully is what lets the last node standing keep
 *    quorum: with three nodes, one goes down cleanly (2 voters, 2 needed),
 *    then another (1 voter, 1 needed).
 *  - Votes are the voters reachable now, this node included.
 *  - Needed: `majority` floor(voters / 2) + 1, `all` every voter, a number
 *    N exactly N; `off` always has quorum.
 *  - Diskless nodes (witnesses, `disk none;`) are not voters but break
 *    ties: with `majority`, an even number of voters and exactly one vote
 *    missing (half the voters reachable), quorum is kept if more than half
 *    of the diskless nodes that have not left are reachable (this node
 *    counts when it is diskless) and quorum was held before. So in the
 *    usual two data nodes and a witness, the data node that still sees the
 *    witness keeps quorum and the other loses it.
 *
 * Why the tie-break only keeps and never regains: a witness holds no data,
 * so it cannot tell a node that was cut off while the other side wrote on.
 * A data node that lost quorum and then finds only the witness may hold
 * stale data; it waits for another data node (DRBD: "a node that has lost
 * quorum cannot regain quorum by connecting to a diskless node").
 *
 * Two disjoint partitions never both have quorum: two majorities of the
 * voters intersect; a majority and a tie need more than all voters; two
 * ties need a strict majority of the diskless nodes each. (This assumes
 * reachability is mutual and transitive. When it is not, say a witness
 * sees both data nodes that cannot see each other, both may count a
 * majority; promotion is then still a two-phase change that the witness
 * answers, and it refuses a second Primary.)
 */
import type { QuorumSetting } from '../config/model.js';

export interface QuorumNode {
  nodeId: number;
  /** `disk none;`: a witness, which breaks ties but does not vote. */
  diskless: boolean;
}

export interface QuorumInput {
  setting: QuorumSetting;
  selfId: number;
  /** Every node of the resource, this one included. */
  nodes: readonly QuorumNode[];
  /** Node-ids connected now (this node counts whether listed or not). */
  reachable: Iterable<number>;
  /** Node-ids that left gracefully and are not reachable now. */
  leftGracefully: Iterable<number>;
  /** This node had quorum just before this evaluation. */
  hadQuorum: boolean;
}

export interface QuorumResult {
  have: boolean;
  /** Reachable voters, this node included. */
  votes: number;
  /** Votes a quorum takes (0 with quorum off). */
  needed: number;
  /** Nodes with a disk that have not left gracefully. */
  voters: number;
  /** One line: `2 of 3 votes, 2 needed (majority)`. */
  reason: string;
}

export function votesNeeded(setting: QuorumSetting, voters: number): number {
  if (setting === 'off') return 0;
  if (setting === 'majority') return Math.floor(voters / 2) + 1;
  if (setting === 'all') return voters;
  return setting;
}

export function calcQuorum(input: QuorumInput): QuorumResult {
  const reachable = new Set(input.reachable);
  reachable.add(input.selfId);
  const left = new Set(input.leftGracefully);
  // Reachable again means back: it counts again. This node never "left" from its own view.
  const present = input.nodes.filter((n) => reachable.has(n.nodeId) || !left.has(n.nodeId));

  const dataNodes = present.filter((n) => !n.diskless);
  const voters = dataNodes.length;
  const votes = dataNodes.filter((n) => reachable.has(n.nodeId)).length;
  const needed = votesNeeded(input.setting, voters);
  const counted = `${votes} of ${voters} votes, ${needed} needed (${input.setting})`;

  if (input.setting === 'off') return { have: true, votes, needed, voters, reason: 'quorum off' };
  if (votes >= needed) return { have: true, votes, needed, voters, reason: counted };

  const witnesses = present.filter((n) => n.diskless);
  const witnessesReachable = witnesses.filter((n) => reachable.has(n.nodeId)).length;
  const tie = input.setting === 'majority' && voters % 2 === 0 && voters > 0 && votes === needed - 1;
  if (tie && witnessesReachable * 2 > witnesses.length) {
    const reached = `${witnessesReachable} of ${witnesses.length} diskless nodes reachable`;
    if (input.hadQuorum) return { have: true, votes, needed, voters, reason: `${counted}; tie broken: ${reached}` };
    return { have: false, votes, needed, voters, reason: `${counted}; ${reached}, but a tie-break only keeps quorum held before` };
  }
  return { have: false, votes, needed, voters, reason: counted };
}
