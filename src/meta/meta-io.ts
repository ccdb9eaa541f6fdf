/**
 * Positioned reads and writes on the device that holds the metadata, as an
 * interface so the bitmap store and the activity log journal can be tested
 * with a hook that counts or fails I/O. fileMetaIo() is the real one.
 */
import type { FileHandle } from 'node:fs/promises';
import { MirrorError, describeError } from '../errors.js';

export interface MetaIo {
  /** Exactly `length` bytes at `offset` (zeroes past the end of the device). */
  read(offset: number, length: number): Promise<Buffer>;
  /** All of `data` at `offset`; durable only after sync(). */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** fdatasync: everything written before is on stable storage. */
  sync(): Promise<void>;
}

export function metaIoError(path: string, what: string, e: unknown): MirrorError {
  return new MirrorError('ERR_IO', `${path}: cannot ${what}: ${describeError(e)}`, {
    path,
    reason: (e as NodeJS.ErrnoException).code ?? describeError(e),
  });
}

/** MetaIo on an open file or block device; failures are ERR_IO naming the path and offset. */
export function fileMetaIo(handle: FileHandle, path: string): MetaIo {
  return {
    async read(offset, length) {
      const buf = Buffer.alloc(length);
      let done = 0;
      try {
        while (done < length) {
          const { bytesRead } = await handle.read(buf, done, length - done, offset + done);
          if (bytesRead === 0) break; // past the end: the rest stays zero
          done += bytesRead;
        }
      } catch (e) {
        throw metaIoError(path, `read ${length} bytes at ${offset}`, e);
      }
      return buf;
    },
    async write(offset, data) {
      let done = 0;
      try {
        while (done < data.length) {
          const { bytesWritten } = await handle.write(data, done, data.length - done, offset + done);
          done += bytesWritten;
        }
      } catch (e) {
        throw metaIoError(path, `write ${data.length} bytes at ${offset}`, e);
      }
    },
    async sync() {
      try {
        await handle.datasync();
      } catch (e) {
        throw metaIoError(path, 'flush to stable storage', e);
      }
    },
  };
}
