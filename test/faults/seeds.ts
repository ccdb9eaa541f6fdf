/**
 * Which runs a fault file makes: the base seed (MIRRORBD_FAULT_SEED, else
 * a random one, printed so that the whole set can be replayed), the kinds
 * (MIRRORBD_FAULT_KINDS, comma-separated; default all) and, for the soak,
 * the number of runs (MIRRORBD_FAULT_RUNS).
 */
import { randomInt } from 'node:crypto';
import { FAULT_KINDS, isFaultKind, type FaultKind } from './plan.js';

export function baseSeed(): number {
  const raw = process.env.MIRRORBD_FAULT_SEED;
  if (raw === undefined || raw === '') return randomInt(1, 2 ** 31);
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`MIRRORBD_FAULT_SEED must be a whole number, not "${raw}"`);
  return n;
}

export function kinds(): FaultKind[] {
  const raw = process.env.MIRRORBD_FAULT_KINDS;
  if (raw === undefined || raw === '') return [...FAULT_KINDS];
  const out = raw.split(',').map((s) => s.trim());
  const unknown = out.filter((k) => !isFaultKind(k));
  if (unknown.length > 0) throw new Error(`MIRRORBD_FAULT_KINDS: unknown ${unknown.join(', ')} (known: ${FAULT_KINDS.join(', ')})`);
  return out as FaultKind[];
}

export function soakRuns(): number {
  const n = Number(process.env.MIRRORBD_FAULT_RUNS ?? '20');
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`MIRRORBD_FAULT_RUNS must be a positive whole number, not "${process.env.MIRRORBD_FAULT_RUNS}"`);
  return n;
}
