/**
 * The metadata as text, for `mirrorbd dump-md`: every superblock field, UUIDs
 * in hex, flags by name, offsets and sizes in bytes with a readable unit.
 * Pure.
 */
import { MD_FLAGS, PEER_FLAGS, flagNames } from './flags.js';
import type { MdLayout } from './layout.js';
import type { Superblock } from './superblock.js';
import { formatUuid } from './uuid.js';

const UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

/** `1073741824 bytes (1 GiB)`; the exact count first, since offsets must be exact. */
export function bytesWithUnit(n: number): string {
  let value = n;
  let unit = '';
  for (const u of UNITS) {
    if (value < 1024) break;
    value /= 1024;
    unit = u;
  }
  if (unit === '') return `${n} bytes`;
  // Truncated, not rounded: 1023.996 MiB must not read as 1024.00 MiB.
  const shown = Number.isInteger(value) ? String(value) : (Math.floor(value * 100) / 100).toFixed(2);
  return `${n} bytes (${shown} ${unit})`;
}

function flagsText(flags: number, table: Readonly<Record<string, number>>): string {
  const names = flagNames(flags, table);
  return `${names.length > 0 ? names.join(' ') : 'none'} (0x${flags.toString(16)})`;
}

/** What the flags say about the data, in DRBD's disk-state words. */
function dataState(sb: Superblock): string {
  if ((sb.flags & MD_FLAGS.CONSISTENT) === 0) return 'Inconsistent';
  return (sb.flags & MD_FLAGS.WAS_UP_TO_DATE) !== 0 ? 'UpToDate (when last attached)' : 'Outdated';
}

export function formatMd(sb: Superblock, layout: MdLayout): string {
  const rows: Array<[string, string]> = [
    ['version', String(sb.version)],
    ['node-id', String(sb.nodeId)],
    ['placement', sb.internal ? 'internal' : 'external'],
    ['flags', flagsText(sb.flags, MD_FLAGS)],
    ['data-state', dataState(sb)],
    ['current-uuid', formatUuid(sb.currentUuid) + (sb.currentUuid === 0n ? ' (no data generation yet)' : '')],
    ['history-uuids', sb.historyUuids.map(formatUuid).join(' ')],
    ['generation', String(sb.generation)],
    ['device-size', bytesWithUnit(sb.deviceSizeBytes)],
    ['data-size', bytesWithUnit(layout.dataSizeBytes)],
    ['md-size', bytesWithUnit(layout.mdSizeBytes)],
    ['superblock-offset', bytesWithUnit(layout.superblockOffset)],
    ['al-offset', bytesWithUnit(layout.alOffset)],
    ['al-size', bytesWithUnit(layout.alSizeBytes)],
    ['al-extents', String(sb.alExtents)],
    ['bitmap-offset', bytesWithUnit(layout.bitmapOffset)],
    ['bitmap-bytes-per-peer', bytesWithUnit(layout.bitmapBytesPerPeer)],
    ['bitmap-bytes', bytesWithUnit(layout.bitmapBytes)],
    ['bitmap-bytes-per-bit', bytesWithUnit(sb.bitmapBytesPerBit)],
    ['max-peers', String(sb.maxPeers)],
    ['peer-slots-used', String(sb.peers.length)],
  ];
  sb.peers.forEach((p, i) => {
    rows.push([
      `peer-slot ${i}`,
      `node-id ${p.nodeId} bitmap-uuid ${formatUuid(p.bitmapUuid)} flags ${flagsText(p.flags, PEER_FLAGS)} bitmap-offset ${layout.bitmapOffset + i * layout.bitmapBytesPerPeer} agreed-size ${p.agreedSizeBytes ? bytesWithUnit(p.agreedSizeBytes) : 'none'}`,
    ]);
  });
  const width = Math.max(...rows.map(([k]) => k.length));
  return `${rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n')}\n`;
}
