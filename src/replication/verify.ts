/**
 * Online verify: the node that starts it (VerifyS) walks the whole data
 * area and asks the peer (VerifyT) for a digest of each range (OV_REQUEST);
 * it compares each answer with the digest of its own range. A range that
 * differs is asked again block by block, and every 4 KiB block that differs
 * is marked out of sync in the bitmap for that peer. Nothing is copied: the
 * marked blocks move with the next resync (disconnect and connect, as DRBD
 * does). Also used by checksum-based resync (csums-alg).
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import CRC32C from 'crc-32/crc32c.js';
import type { BlockStore } from '../../native-free-io/block-store.js';
import { BITMAP_BLOCK_BYTES, type Bitmap } from '../meta/index.js';
import type { Packet } from './wire/index.js';

export type DigestAlg = 'crc32c' | 'md5' | 'sha1' | 'sha256';

export function digest(alg: DigestAlg, data: Buffer): Buffer {
  if (alg === 'crc32c') {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(CRC32C.buf(data) >>> 0, 0);
    return b;
  }
  return createHash(alg).update(data).digest();
}

/** First pass: ranges of this size; a mismatch is narrowed down to 4 KiB blocks. */
export const VERIFY_RANGE_BYTES = 256 * 1024;
export const VERIFY_IN_FLIGHT = 8;

export interface VerifyProgress {
  totalBytes: number;
  doneBytes: number;
  /** 4 KiB blocks found different so far. */
  outOfSyncBlocks: number;
  startedAtMs: number;
  finished: boolean;
}

export interface VerifyIo {
  send(p: Packet): void;
}

interface Pending {
  offset: number;
  length: number;
  /** A block-by-block re-check of a range that differed. */
  fine: boolean;
}

export class VerifySource {
  readonly progress: VerifyProgress;
  private cursor = 0;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly fineQueue: number[] = [];
  /** Answers received whose local side is still being read and compared. */
  private comparing = 0;
  private stopped = false;

  constructor(
    private readonly store: BlockStore,
    /** Verify only below this size (the smaller of the two disks). */
    private limitBytes: number,
    private readonly bitmap: Bitmap,
    private readonly alg: DigestAlg,
    private readonly io: VerifyIo,
    private readonly onDone: (p: VerifyProgress) => void,
    private readonly log: Logger,
  ) {
    this.limitBytes = Math.min(limitBytes > 0 ? limitBytes : store.size, store.size);
    this.progress = { totalBytes: this.limitBytes, doneBytes: 0, outOfSyncBlocks: 0, startedAtMs: Date.now(), finished: false };
  }

  start(): void {
    this.pump();
  }

  stop(): void {
    this.stopped = true;
  }

  handle(p: Packet): boolean {
    if (p.kind !== 'ov-reply') return false;
    const req = this.pending.get(p.id);
    if (!req) return true;
    this.pending.delete(p.id);
    // Still outstanding until compared: a difference found late must not
    // arrive after the verify has declared itself finished.
    this.comparing++;
    void this.compare(req, p.digest).finally(() => {
      this.comparing--;
      this.pump();
    });
    return true;
  }

  private async compare(req: Pending, theirs: Buffer): Promise<void> {
    if (this.stopped) return;
    let ours: Buffer;
    try {
      ours = digest(this.alg, await this.store.read(req.offset, req.length));
    } catch (e) {
      this.log.warn({ offset: req.offset, err: (e as Error).message }, 'verify: local read failed');
      ours = Buffer.alloc(0);
    }
    const same = ours.equals(theirs);
    if (!req.fine) this.progress.doneBytes += req.length;
    if (!same) {
      if (req.fine || req.length <= BITMAP_BLOCK_BYTES) {
        this.bitmap.setRange(req.offset, req.length);
        this.progress.outOfSyncBlocks += Math.ceil(req.length / BITMAP_BLOCK_BYTES);
      } else {
        for (let at = req.offset; at < req.offset + req.length; at += BITMAP_BLOCK_BYTES) this.fineQueue.push(at);
      }
    }
  }

  private pump(): void {
    if (this.stopped || this.progress.finished) return;
    while (this.pending.size + this.comparing < VERIFY_IN_FLIGHT) {
      let req: Pending;
      const fine = this.fineQueue.shift();
      if (fine !== undefined) {
        req = { offset: fine, length: Math.min(BITMAP_BLOCK_BYTES, this.limitBytes - fine), fine: true };
      } else if (this.cursor < this.limitBytes) {
        req = { offset: this.cursor, length: Math.min(VERIFY_RANGE_BYTES, this.limitBytes - this.cursor), fine: false };
        this.cursor += req.length;
      } else {
        break;
      }
      const id = this.nextId++;
      this.pending.set(id, req);
      this.io.send({ kind: 'ov-request', id, offset: req.offset, length: req.length });
    }
    if (this.pending.size === 0 && this.comparing === 0 && this.fineQueue.length === 0 && this.cursor >= this.limitBytes) {
      this.progress.finished = true;
      this.log.info({ outOfSyncBlocks: this.progress.outOfSyncBlocks, ms: Date.now() - this.progress.startedAtMs }, 'verify finished');
      this.onDone(this.progress);
    }
  }
}

/** VerifyT: answer each OV_REQUEST with the digest of the local range. */
export async function answerVerify(store: BlockStore, alg: DigestAlg, p: { id: number; offset: number; length: number }, io: VerifyIo): Promise<void> {
  let d: Buffer;
  try {
    if (p.length <= 0 || p.offset + p.length > store.size) throw new Error('range beyond the disk');
    d = digest(alg, await store.read(p.offset, p.length));
  } catch {
    // An empty digest never matches: the range gets marked.
    d = Buffer.alloc(0);
  }
  io.send({ kind: 'ov-reply', id: p.id, offset: p.offset, length: p.length, digest: d });
}
