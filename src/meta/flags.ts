/**
 * The flag bits kept in metadata: one table each for the device and for a
 * peer slot. The codec, dump-md and the docs all read these tables.
 */

/** Device flags (the superblock's `flags`), after DRBD's MDF_* bits. */
export const MD_FLAGS = {
  /** The data is a consistent state (not mid-resync): clear = Inconsistent. */
  CONSISTENT: 1 << 0,
  /** The data was UpToDate when last known (clear with CONSISTENT = Outdated). */
  WAS_UP_TO_DATE: 1 << 1,
  /** The node was Primary (set on promotion, cleared on demotion). */
  PRIMARY_IND: 1 << 2,
  /** Primary when it went down without demoting: its activity log extents must be resynced. */
  CRASHED_PRIMARY: 1 << 3,
  /** The activity log was cleanly emptied at shutdown: nothing to replay. */
  AL_CLEAN: 1 << 4,
} as const;

/** Per-peer-slot flags, after DRBD's MDF_PEER_* bits. */
export const PEER_FLAGS = {
  /** We were connected to this peer when the superblock was written. */
  PEER_CONNECTED: 1 << 0,
  /** The peer's data is known to be Outdated (it may not be promoted). */
  PEER_OUTDATED: 1 << 1,
  /** The next resync with this peer copies everything, whatever the bitmap says. */
  PEER_FULL_SYNC: 1 << 2,
  /** We have had a connection with this peer at some point. */
  PEER_DEVICE_SEEN: 1 << 3,
  /**
   * This slot's bitmap UUID was set while this node was Primary: it lost the
   * peer and went on writing (split-brain policies discard-younger/older-primary
   * read it, as DRBD reads the role bit of its bitmap UUID).
   */
  BITMAP_WHILE_PRIMARY: 1 << 4,
} as const;

export type MdFlagName = keyof typeof MD_FLAGS;
export type PeerFlagName = keyof typeof PEER_FLAGS;

export const KNOWN_MD_FLAGS = Object.values(MD_FLAGS).reduce((a, b) => a | b, 0);
export const KNOWN_PEER_FLAGS = Object.values(PEER_FLAGS).reduce((a, b) => a | b, 0);

/** The names of the bits set in `flags`, in table order; unknown bits as hex. */
export function flagNames(flags: number, table: Readonly<Record<string, number>>): string[] {
  const names = Object.entries(table).filter(([, bit]) => (flags & bit) !== 0).map(([n]) => n);
  const known = Object.values(table).reduce((a, b) => a | b, 0);
  const unknown = (flags & ~known) >>> 0;
  if (unknown !== 0) names.push(`0x${unknown.toString(16)}`);
  return names;
}
