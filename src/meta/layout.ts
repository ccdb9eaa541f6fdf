/**
 * Where metadata lives on disk (pure arithmetic).
 *
 *   internal:  [ data ............ ][ activity log ][ bitmap ][ superblock ]
 *              0                   ^dataSizeBytes            ^last 4 KiB-aligned 4 KiB
 *   external:  meta device [ superblock ][ activity log ][ bitmap ]  from offset 0;
 *              data = the whole data disk rounded down to 4 KiB
 *
 * The superblock sits at the very end of an internal device, as in DRBD, so
 * it is found from the device size alone. Everything is 4 KiB aligned so
 * each area can be written without read-modify-write on 4Kn disks.
 */
import { MirrorError } from '../errors.js';

export const MD_BLOCK_BYTES = 4096;
export const SUPERBLOCK_BYTES = 4096;
/** The activity log ring: 8 transactions of 4 KiB, DRBD's default stripe. */
export const AL_BYTES = 32 * 1024;
/** One bitmap bit covers this much data. */
export const BITMAP_BYTES_PER_BIT = 4096;
/** A device must leave at least this much for data; less is surely a mistake. */
export const MIN_DATA_BYTES = 1024 * 1024;
/** Peer slots: 32 node-ids, minus this node. */
export const MAX_PEERS = 31;

export interface LayoutRequest {
  /** The data disk's size (internal: the disk that also holds the metadata). */
  deviceSizeBytes: number;
  /** The external meta device's size; required when `internal` is false. */
  metaDeviceSizeBytes?: number;
  internal: boolean;
  /** Bitmap slots to reserve, 1..31 (one per peer this node may ever have). */
  maxPeers: number;
}

export interface MdLayout {
  /** Bytes of user data at the start of the data disk. */
  dataSizeBytes: number;
  /** Offset of the superblock on the device that holds the metadata. */
  superblockOffset: number;
  alOffset: number;
  alSizeBytes: number;
  bitmapOffset: number;
  /** One slot's bitmap; slot i starts at bitmapOffset + i * bitmapBytesPerPeer. */
  bitmapBytesPerPeer: number;
  bitmapBytes: number;
  /** Superblock + activity log + bitmap. */
  mdSizeBytes: number;
}

export function alignDown(n: number, to = MD_BLOCK_BYTES): number {
  return n - (n % to);
}

export function alignUp(n: number, to = MD_BLOCK_BYTES): number {
  return alignDown(n + to - 1, to);
}

/** Bitmap bytes for one peer covering `dataBytes`: 1 bit per 4 KiB, in whole 4 KiB blocks. */
export function bitmapBytesFor(dataBytes: number): number {
  return alignUp(Math.ceil(Math.ceil(dataBytes / BITMAP_BYTES_PER_BIT) / 8));
}

function checkArgs(req: LayoutRequest): void {
  const sizes = [req.deviceSizeBytes, req.metaDeviceSizeBytes ?? 0];
  if (!sizes.every((s) => Number.isSafeInteger(s) && s >= 0)) throw new RangeError(`device sizes must be byte counts, got ${sizes.join(', ')}`);
  if (!Number.isInteger(req.maxPeers) || req.maxPeers < 1 || req.maxPeers > MAX_PEERS) {
    throw new RangeError(`maxPeers must be 1..${MAX_PEERS}, got ${req.maxPeers}`);
  }
  if (!req.internal && req.metaDeviceSizeBytes === undefined) throw new RangeError('external metadata needs metaDeviceSizeBytes');
}

function tooSmall(what: string, have: number, need: number, req: LayoutRequest): never {
  throw new MirrorError(
    'ERR_MD_TOO_SMALL',
    `${what} is too small for metadata: it has ${have} bytes, ${need} bytes are needed (metadata for ${req.maxPeers} peer slot(s) plus at least 1 MiB of data)`,
    { haveBytes: have, needBytes: need, maxPeers: req.maxPeers, internal: req.internal },
  );
}

/**
 * The internal bitmap is sized for the whole device rather than for the data
 * that remains after the metadata: never short, and at most one 4 KiB block
 * per slot larger than needed.
 */
function internalLayout(req: LayoutRequest): MdLayout {
  const aligned = alignDown(req.deviceSizeBytes);
  const bitmapBytesPerPeer = bitmapBytesFor(aligned);
  const bitmapBytes = bitmapBytesPerPeer * req.maxPeers;
  const mdSizeBytes = SUPERBLOCK_BYTES + AL_BYTES + bitmapBytes;
  if (aligned < mdSizeBytes + MIN_DATA_BYTES) {
    // The smallest device that fits: its bitmap grows with it, so step up to the fixed point.
    const fixed = MIN_DATA_BYTES + SUPERBLOCK_BYTES + AL_BYTES;
    let need = fixed + bitmapBytesFor(MIN_DATA_BYTES) * req.maxPeers;
    for (let next = fixed + bitmapBytesFor(need) * req.maxPeers; next !== need; next = fixed + bitmapBytesFor(need) * req.maxPeers) {
      need = next;
    }
    tooSmall('the disk', req.deviceSizeBytes, need, req);
  }
  const superblockOffset = aligned - SUPERBLOCK_BYTES;
  const bitmapOffset = superblockOffset - bitmapBytes;
  const alOffset = bitmapOffset - AL_BYTES;
  return {
    dataSizeBytes: alOffset,
    superblockOffset,
    alOffset,
    alSizeBytes: AL_BYTES,
    bitmapOffset,
    bitmapBytesPerPeer,
    bitmapBytes,
    mdSizeBytes,
  };
}

function externalLayout(req: LayoutRequest): MdLayout {
  const dataSizeBytes = alignDown(req.deviceSizeBytes);
  if (dataSizeBytes < MIN_DATA_BYTES) tooSmall('the disk', req.deviceSizeBytes, MIN_DATA_BYTES, req);
  const bitmapBytesPerPeer = bitmapBytesFor(dataSizeBytes);
  const bitmapBytes = bitmapBytesPerPeer * req.maxPeers;
  const mdSizeBytes = SUPERBLOCK_BYTES + AL_BYTES + bitmapBytes;
  const metaSize = req.metaDeviceSizeBytes!;
  if (metaSize < mdSizeBytes) tooSmall('the external meta device', metaSize, mdSizeBytes, req);
  return {
    dataSizeBytes,
    superblockOffset: 0,
    alOffset: SUPERBLOCK_BYTES,
    alSizeBytes: AL_BYTES,
    bitmapOffset: SUPERBLOCK_BYTES + AL_BYTES,
    bitmapBytesPerPeer,
    bitmapBytes,
    mdSizeBytes,
  };
}

/** The layout for a device, or ERR_MD_TOO_SMALL saying how much is needed. */
export function computeLayout(req: LayoutRequest): MdLayout {
  checkArgs(req);
  return req.internal ? internalLayout(req) : externalLayout(req);
}
