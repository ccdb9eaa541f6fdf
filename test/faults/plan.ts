/**
 * What one fault run does, drawn from its seed: the kind of fault and its
 * timing. Pure, so a failed run is replayed exactly by its seed (the kind
 * is part of the plan; `planFor(seed, kind)` fixes it, `planFor(seed)`
 * draws it too).
 */
import { seededRandom } from '../helpers/seeded-random.js';

export const FAULT_KINDS = [
  // a node dies as in a power cut (kill -9 of its daemon)
  'kill-primary',
  'kill-secondary',
  'kill-witness',
  // every node crashes; the operator brings them back and promotes
  'kill-all',
  // the network
  'partition-primary',
  'partition-secondary',
  'one-way',
  'flapping',
  'slow-link',
  // the disk under a node
  'disk-error-primary',
  'disk-error-secondary',
  'full-disk',
  // a node dies again while it catches up
  'restart-during-resync',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface FaultPlan {
  seed: number;
  kind: FaultKind;
  /** Writes run this long before the fault. */
  beforeMs: number;
  /** The fault lasts this long (writes go on where the cluster still takes them). */
  holdMs: number;
  /** Requests the checker keeps in flight. */
  queueDepth: number;
  /** flapping: how many cut/heal cycles, and how long each half lasts. */
  flapCycles: number;
  flapHalfMs: number;
  /** disk faults: I/O calls of the disk that succeed before every further one fails. */
  diskFaultAfterCalls: number;
  /** slow-link: the link's rate, in kbit/s. */
  slowRateKbit: number;
  /** one-way: which direction is dropped. */
  oneWay: 'primary-to-secondary' | 'secondary-to-primary';
  /** After recovery, the new Primary takes writes this long (the returning node must get them too). */
  afterMs: number;
}

export function planFor(seed: number, kind?: FaultKind): FaultPlan {
  const rnd = seededRandom(seed);
  const between = (lo: number, hi: number): number => Math.floor(lo + rnd() * (hi - lo + 1));
  const drawn = FAULT_KINDS[Math.floor(rnd() * FAULT_KINDS.length)]!;
  return {
    seed,
    kind: kind ?? drawn,
    beforeMs: between(500, 2500),
    holdMs: between(2000, 5000),
    queueDepth: [1, 4, 8, 16][between(0, 3)]!,
    flapCycles: between(2, 4),
    flapHalfMs: between(300, 2500),
    diskFaultAfterCalls: between(200, 2000),
    slowRateKbit: [2_000, 8_000, 32_000][between(0, 2)]!,
    oneWay: rnd() < 0.5 ? 'primary-to-secondary' : 'secondary-to-primary',
    afterMs: between(500, 1500),
  };
}

export function isFaultKind(s: string): s is FaultKind {
  return (FAULT_KINDS as readonly string[]).includes(s);
}
