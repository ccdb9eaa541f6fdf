/**
 * Bitmaps on disk: loads and saves the bitmap of one peer slot in the
 * metadata's bitmap area. Slot i's image starts at
 * bitmapOffset + i × bitmapBytesPerPeer on the device holding the metadata
 * (the disk itself when internal, the meta device when external).
 *
 * A save writes only the 4 KiB pages changed since the last save (see
 * Bitmap's dirty pages), then fdatasyncs once; a resolved save is on stable
 * storage. Pages are 4 KiB aligned on disk because the slot is, so no write
 * needs a read-modify-write on 4Kn devices.
 */
import assert from 'node:assert';
import { BITMAP_PAGE_BYTES, Bitmap } from './bitmap.js';
import type { MdLayout } from './layout.js';
import type { MetaIo } from './meta-io.js';

/** Reads go in pieces of this size, so loading a large bitmap needs no second full-size buffer. */
const LOAD_PIECE_BYTES = 1024 * 1024;

export class BitmapStore {
  constructor(
    private readonly io: MetaIo,
    private readonly layout: MdLayout,
    /** Slots the metadata reserves (the superblock's maxPeers). */
    readonly slots: number,
  ) {
    assert(Number.isInteger(slots) && slots >= 1 && layout.bitmapBytesPerPeer * slots <= layout.bitmapBytes, 'bitmap store: slots beyond the bitmap area');
    // Cannot fail for a layout from computeLayout/layoutOf; guards hand-made ones.
    assert(new Bitmap(layout.dataSizeBytes).byteLength <= layout.bitmapBytesPerPeer, 'bitmap store: a slot is too small for the data');
  }

  /** Device offset of slot `slot`'s image. */
  slotOffset(slot: number): number {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.slots) throw new RangeError(`bitmap slot ${slot} is not 0..${this.slots - 1}`);
    return this.layout.bitmapOffset + slot * this.layout.bitmapBytesPerPeer;
  }

  /** The bitmap stored in `slot`; no page is dirty. */
  async load(slot: number): Promise<Bitmap> {
    const base = this.slotOffset(slot);
    const bitmap = new Bitmap(this.layout.dataSizeBytes);
    for (let at = 0; at < bitmap.byteLength; at += LOAD_PIECE_BYTES) {
      const piece = await this.io.read(base + at, Math.min(LOAD_PIECE_BYTES, bitmap.byteLength - at));
      bitmap.loadImage(at, piece);
    }
    return bitmap;
  }

  /**
   * Writes the dirty pages of `bitmap` to `slot`, then fdatasync. With
   * `range` (data bytes), only the dirty pages holding that range's bits:
   * what the activity log needs before an extent leaves it. Returns the
   * number of pages written. On failure the pages count as dirty again.
   */
  async save(slot: number, bitmap: Bitmap, range?: { offset: number; length: number }): Promise<number> {
    const base = this.slotOffset(slot);
    if (bitmap.dataSizeBytes !== this.layout.dataSizeBytes) {
      throw new RangeError(`a bitmap of ${bitmap.dataSizeBytes} bytes of data cannot be saved for ${this.layout.dataSizeBytes}`);
    }
    const { first, end } = range === undefined ? { first: 0, end: bitmap.pageCount } : bitmap.pagesOfRange(range.offset, range.length);
    // Taken before the first await: a bit set while the writes run dirties its page again,
    // so it goes out with the next save at the latest.
    const pages = bitmap.takeDirtyPages(first, end);
    if (pages.length === 0) return 0;
    try {
      for (const p of pages) await this.io.write(base + p * BITMAP_PAGE_BYTES, bitmap.pageImage(p));
      await this.io.sync();
    } catch (e) {
      bitmap.markPagesDirty(pages);
      throw e;
    }
    return pages.length;
  }

  /** Writes the whole image of `bitmap` (e.g. after create or a full sync). */
  async saveAll(slot: number, bitmap: Bitmap): Promise<number> {
    bitmap.markAllDirty();
    return this.save(slot, bitmap);
  }
}
