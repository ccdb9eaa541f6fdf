/**
 * The states of one resource on one node and the only functions that change
 * them. Each state machine is a table of legal edges; `transition*` refuses an
 * edge the table does not list, so an illegal change is a bug caught where it
 * happens rather than a state nobody designed. docs/states.md draws the same
 * tables.
 */
import { MirrorError } from '../errors.js';

/**
 * The role of this node. Promoting: a promotion is being agreed with the
 * connected peers (two-phase commit) or its metadata written; the node still
 * serves nothing. Demoting: clients are being drained; peers still see a
 * Primary until it is done.
 */
export type Role = 'Primary' | 'Secondary' | 'Promoting' | 'Demoting';

/** DRBD's disk states. */
export type DiskState = 'Diskless' | 'Attaching' | 'Inconsistent' | 'Outdated' | 'Consistent' | 'UpToDate' | 'Failed';

export const ROLE_EDGES: Readonly<Record<Role, readonly Role[]>> = {
  // `primary`, or auto-promote after losing the Primary
  Secondary: ['Promoting'],
  // every peer agreed and the metadata says Primary / a peer refused, or quorum or disk said no
  Promoting: ['Primary', 'Secondary'],
  // `secondary` (or `down`) starts draining clients
  Primary: ['Demoting'],
  // drained / draining failed and the node stays Primary
  Demoting: ['Secondary', 'Primary'],
};

/** What peers and clients see: a Promoting node is not Primary yet, a Demoting one still is. */
export function visibleRole(role: Role): 'Primary' | 'Secondary' {
  return role === 'Primary' || role === 'Demoting' ? 'Primary' : 'Secondary';
}

export const DISK_EDGES: Readonly<Record<DiskState, readonly DiskState[]>> = {
  // attach starts reading metadata
  Diskless: ['Attaching'],
  // metadata read: the flags decide; a read error fails the attach
  Attaching: ['Inconsistent', 'Outdated', 'Consistent', 'UpToDate', 'Failed', 'Diskless'],
  // `primary --force` declares the data good; a sync (later) also ends here
  Inconsistent: ['UpToDate', 'Failed', 'Diskless'],
  Outdated: ['UpToDate', 'Inconsistent', 'Failed', 'Diskless'],
  Consistent: ['UpToDate', 'Outdated', 'Inconsistent', 'Failed', 'Diskless'],
  UpToDate: ['Outdated', 'Consistent', 'Inconsistent', 'Failed', 'Diskless'],
  // an I/O error: the only way on is to detach
  Failed: ['Diskless'],
};

function transition<S extends string>(kind: string, edges: Readonly<Record<S, readonly S[]>>, from: S, to: S): S {
  if (from === to) return to;
  if (!edges[from].includes(to)) {
    throw new MirrorError('ERR_INTERNAL', `illegal ${kind} transition ${from} -> ${to}`, { from, to });
  }
  return to;
}

export function transitionRole(from: Role, to: Role): Role {
  return transition('role', ROLE_EDGES, from, to);
}

export function transitionDisk(from: DiskState, to: DiskState): DiskState {
  return transition('disk', DISK_EDGES, from, to);
}

/** What the metadata flags say about the data when a disk is attached. */
export function diskStateFromFlags(flags: { consistent: boolean; wasUpToDate: boolean }): DiskState {
  if (!flags.consistent) return 'Inconsistent';
  return flags.wasUpToDate ? 'UpToDate' : 'Outdated';
}

/**
 * May this node become Primary? Null when yes, else the refusal. G4: without
 * --force only UpToDate data is promoted; --force promotes Inconsistent or
 * Outdated data (loudly: the caller logs it) but never a missing or failed disk.
 */
export function promotionRefusal(resource: string, disk: DiskState, force: boolean): MirrorError | null {
  if (disk === 'UpToDate') return null;
  if (disk === 'Diskless' || disk === 'Failed' || disk === 'Attaching') {
    return new MirrorError('ERR_NOT_UP_TO_DATE', `${resource}: cannot become Primary with disk ${disk}`, { disk });
  }
  if (force) return null;
  return new MirrorError(
    'ERR_NOT_UP_TO_DATE',
    `${resource}: local data is ${disk}, not UpToDate; use 'primary --force' if you know it is the data to keep`,
    { disk },
  );
}

/** May this node become Secondary? Connected NBD clients block it unless forced. */
export function demotionRefusal(resource: string, clients: number, force: boolean): MirrorError | null {
  if (clients === 0 || force) return null;
  return new MirrorError(
    'ERR_CLIENTS_CONNECTED',
    `${resource}: ${clients} NBD client(s) connected; disconnect them or use 'secondary --force' (they get ESHUTDOWN)`,
    { clients },
  );
}
