/**
 * Something the checker reads blocks from: an NBD export (by URI) or a file
 * or block device (by path, e.g. a node's backing disk after `down`). With
 * internal metadata the data area starts at offset 0 of the disk, so block
 * N is at N * 4096 on the disk just as on the export.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { sizeOf } from '../../native-free-io/device-size.js';
import { MirrorError, describeError } from '../errors.js';
import { NbdClient } from './nbd-client.js';
import { looksLikeNbdUri, parseNbdUri } from './nbd-uri.js';

export interface BlockSource {
  /** The URI or path, for messages. */
  readonly name: string;
  readonly sizeBytes: number;
  /** Largest read to ask for at once. */
  readonly maxReadBytes: number;
  read(offset: number, length: number): Promise<Buffer>;
  close(): Promise<void>;
}

/** Reads of files go in pieces of at most this. */
const FILE_MAX_READ_BYTES = 1024 * 1024;

/** Opens a URI (nbd://, nbd+unix://) or a path, read-only. */
export async function openBlockSource(target: string, o: { connectTimeoutMs?: number } = {}): Promise<BlockSource> {
  if (looksLikeNbdUri(target)) {
    const parsed = parseNbdUri(target);
    if (!parsed.ok) throw new MirrorError('ERR_IO', parsed.reason, { target });
    return nbdSource(await NbdClient.connect(parsed.uri, { timeoutMs: o.connectTimeoutMs }));
  }
  return fileSource(target);
}

export function nbdSource(client: NbdClient): BlockSource {
  return {
    name: client.uri.text,
    sizeBytes: client.sizeBytes,
    maxReadBytes: client.maxRequestBytes,
    read: async (offset, length) => {
      try {
        return await client.read(offset, length);
      } catch (e) {
        throw new MirrorError('ERR_IO', `${client.uri.text}: read of ${length} bytes at ${offset}: ${describeError(e)}`, { target: client.uri.text, offset });
      }
    },
    close: () => client.close(),
  };
}

async function fileSource(path: string): Promise<BlockSource> {
  let handle: FileHandle;
  try {
    handle = await fsp.open(path, 'r');
  } catch (e) {
    throw new MirrorError('ERR_IO', `${path}: cannot open: ${describeError(e)}`, { target: path });
  }
  let sizeBytes: number;
  try {
    sizeBytes = (await sizeOf(handle)).size;
  } catch (e) {
    await handle.close();
    throw new MirrorError('ERR_IO', `${path}: cannot find the size: ${describeError(e)}`, { target: path });
  }
  return {
    name: path,
    sizeBytes,
    maxReadBytes: FILE_MAX_READ_BYTES,
    read: async (offset, length) => {
      const b = Buffer.alloc(length);
      let done = 0;
      try {
        while (done < length) {
          const { bytesRead } = await handle.read(b, done, length - done, offset + done);
          if (bytesRead === 0) throw new Error('unexpected end of file');
          done += bytesRead;
        }
      } catch (e) {
        throw new MirrorError('ERR_IO', `${path}: read of ${length} bytes at ${offset}: ${describeError(e)}`, { target: path, offset });
      }
      return b;
    },
    close: () => handle.close(),
  };
}
