/**
 * Keeps WRITE requests in flight on an NBD connection that is already in
 * transmission (after test/helpers/nbd-go.ts; simple replies, since that
 * client negotiates no structured replies), and records each reply's error
 * until the server closes the connection. A demotion with `--force` must
 * answer the requests it did not execute with ESHUTDOWN and then close.
 */
import type net from 'node:net';

const NBD_REQUEST_MAGIC = 0x25609513;
const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
const NBD_CMD_WRITE = 1;
export const NBD_ESHUTDOWN = 108;

export interface WriteStream {
  /** Reply errors seen so far, by NBD errno (0: success). */
  readonly replies: Map<number, number>;
  /** Resolves when the server has closed the connection (or `timeoutMs` passed: then closed is false). */
  readonly ended: Promise<{ closed: boolean; unanswered: number }>;
  /** Stop sending new requests. */
  stopSending(): void;
}

export function streamWrites(socket: net.Socket, opts: { depth: number; lengthBytes: number; spanBytes: number; timeoutMs: number }): WriteStream {
  const replies = new Map<number, number>();
  const inFlight = new Set<bigint>();
  let next = 1n;
  let sending = true;
  let buf = Buffer.alloc(0);
  const payload = Buffer.alloc(opts.lengthBytes, 0x5e);

  const send = (): void => {
    while (sending && inFlight.size < opts.depth && !socket.destroyed) {
      const handle = next++;
      const offset = (Number(handle) * opts.lengthBytes) % (opts.spanBytes - opts.lengthBytes);
      const header = Buffer.alloc(28);
      header.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
      header.writeUInt16BE(0, 4);
      header.writeUInt16BE(NBD_CMD_WRITE, 6);
      header.writeBigUInt64BE(handle, 8);
      header.writeBigUInt64BE(BigInt(offset - (offset % 4096)), 16);
      header.writeUInt32BE(opts.lengthBytes, 24);
      inFlight.add(handle);
      socket.write(Buffer.concat([header, payload]));
    }
  };

  const ended = new Promise<{ closed: boolean; unanswered: number }>((resolve) => {
    const timer = setTimeout(() => {
      sending = false;
      socket.destroy();
      resolve({ closed: false, unanswered: inFlight.size });
    }, opts.timeoutMs);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ closed: true, unanswered: inFlight.size });
    });
  });
  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 16) {
      if (buf.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) {
        socket.destroy(new Error(`unexpected reply magic 0x${buf.readUInt32BE(0).toString(16)}`));
        return;
      }
      const error = buf.readUInt32BE(4);
      inFlight.delete(buf.readBigUInt64BE(8));
      buf = buf.subarray(16);
      replies.set(error, (replies.get(error) ?? 0) + 1);
      // Once refused, the server is going away: send nothing more.
      if (error !== 0) sending = false;
    }
    send();
  });
  send();
  return {
    replies,
    ended,
    stopSending: () => {
      sending = false;
    },
  };
}
