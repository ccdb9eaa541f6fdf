/**
 * Automatic failover: which node should become Primary, from what this node
 * sees. Pure and deterministic, so nodes that see the same facts pick the
 * same node, and only that node promotes itself.
 *
 * A candidate is a node with a disk whose data is UpToDate, seen now (this
 * node, or a connected peer: the state of a peer that is not connected is
 * old news). Candidates are ranked by disk quality, then by lowest node-id.
 * Only UpToDate qualifies today, so the quality rank is a single step; the
 * table below is where a better grade (say, fewer blocks out of sync)
 * would go.
 *
 * This node should promote itself when it is the first candidate and no
 * node it sees is Primary. That is necessary, not sufficient: quorum
 * (quorum.ts) and the two-phase promotion still apply, because two nodes
 * that cannot see each other each see only themselves.
 */

/** DRBD's disk state names; `DUnknown` is what a peer's disk is when not connected. */
export type CandidateDiskState = 'Diskless' | 'Attaching' | 'Failed' | 'Inconsistent' | 'Outdated' | 'Consistent' | 'UpToDate' | 'DUnknown';

export interface NodeView {
  nodeId: number;
  name: string;
  disk: CandidateDiskState;
  role: 'Primary' | 'Secondary' | 'Unknown';
  /** Connected to this node now (this node itself counts as connected). */
  connected: boolean;
  /** Has a backing disk in the config (false: a witness). */
  hasDisk: boolean;
}

export interface CandidateInput {
  selfId: number;
  /** Every node this node knows about, itself included. */
  nodes: readonly NodeView[];
}

export interface CandidateChoice {
  /** Promotion candidates, best first. */
  candidates: NodeView[];
  /** This node is the first candidate and sees no Primary. */
  promoteSelf: boolean;
  /** A Primary this node sees, if any (itself included). */
  primary: NodeView | null;
  /** One line for the log. */
  reason: string;
}

/** Lower is better; states not listed here never qualify. */
const DISK_RANK: Partial<Record<CandidateDiskState, number>> = { UpToDate: 0 };

function seen(n: NodeView, selfId: number): boolean {
  return n.nodeId === selfId || n.connected;
}

export function rankCandidates(input: CandidateInput): NodeView[] {
  return input.nodes
    .filter((n) => seen(n, input.selfId) && n.hasDisk && DISK_RANK[n.disk] !== undefined)
    .sort((a, b) => DISK_RANK[a.disk]! - DISK_RANK[b.disk]! || a.nodeId - b.nodeId);
}

export function chooseCandidate(input: CandidateInput): CandidateChoice {
  const candidates = rankCandidates(input);
  // Lowest node-id first, so that two Primaries (a split brain) give the same answer everywhere.
  const primary = [...input.nodes].sort((a, b) => a.nodeId - b.nodeId).find((n) => seen(n, input.selfId) && n.role === 'Primary') ?? null;
  const first = candidates[0];
  let reason: string;
  if (primary !== null) reason = primary.nodeId === input.selfId ? 'this node is Primary' : `${primary.name} is Primary`;
  else if (first === undefined) reason = 'no UpToDate node in sight';
  else if (first.nodeId === input.selfId) reason = 'this node is the first UpToDate candidate';
  else reason = `${first.name} (node-id ${first.nodeId}) is the first UpToDate candidate`;
  const promoteSelf = primary === null && first !== undefined && first.nodeId === input.selfId;
  return { candidates, promoteSelf, primary, reason };
}
