/**
 * The control socket: `<run-dir>/<node>.sock`, a unix socket only root (the
 * owner) may open (mode 0600), speaking the JSON lines of control-protocol.ts.
 */
import net from 'node:net';
import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import type { MirrorEvent, Subscriber } from './event-bus.js';
import {
  LineSplitter,
  decodeRequest,
  encodeResponse,
  errorResponse,
  type ControlRequest,
  type ControlResponse,
} from './control-protocol.js';

export type ControlHandler = (request: ControlRequest) => Promise<unknown>;

/** Subscribes a connection to the event stream; returns the unsubscribe function. */
export type EventSubscribe = (resource: string | null, sub: Subscriber) => () => void;

/** A subscriber whose unsent events pass this is too slow and is dropped. */
export const MAX_EVENT_BACKLOG_BYTES = 4 * 1024 * 1024;

export const CONTROL_SOCKET_MODE = 0o600;

export class ControlServer {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(
    private readonly path: string,
    private readonly handler: ControlHandler,
    private readonly log: Logger,
    private readonly subscribe: EventSubscribe,
  ) {
    this.server = net.createServer((socket) => this.accept(socket));
  }

  async listen(): Promise<void> {
    // Create the socket with no permissions for group and others from the
    // start, so there is no window in which another user could connect.
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        this.server.once('error', reject);
        this.server.listen(this.path, () => {
          this.server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(oldMask);
    }
    await fsp.chmod(this.path, CONTROL_SOCKET_MODE);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await fsp.rm(this.path, { force: true });
  }

  private accept(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.setEncoding('utf8');
    const splitter = new LineSplitter();
    const send = (r: ControlResponse): void => {
      if (!socket.destroyed) socket.write(encodeResponse(r));
    };
    socket.on('data', (chunk: string) => {
      let lines: string[];
      try {
        lines = splitter.push(chunk);
      } catch (e) {
        send(errorResponse(null, e));
        socket.end();
        return;
      }
      for (const line of lines) {
        const decoded = decodeRequest(line);
        if (!decoded.ok) {
          this.log.warn({ reason: decoded.error.message }, 'malformed control request');
          send(errorResponse(decoded.id, decoded.error));
          continue;
        }
        const { request } = decoded;
        if (request.cmd === 'events') {
          this.streamEvents(socket, request.id, request.resource);
          continue;
        }
        this.handler(request).then(
          (result) => send({ id: request.id, ok: true, result: result ?? null }),
          (e: unknown) => send(errorResponse(request.id, e)),
        );
      }
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => this.sockets.delete(socket));
  }

  private streamEvents(socket: net.Socket, id: number, resource: string | null): void {
    const sub: Subscriber = {
      resource,
      deliver: (e: MirrorEvent) => {
        if (socket.destroyed) return true;
        socket.write(`${JSON.stringify({ event: e })}\n`);
        return socket.writableLength <= MAX_EVENT_BACKLOG_BYTES;
      },
      drop: (reason) => {
        socket.end(encodeResponse({ id, ok: false, error: { code: 'ERR_BAD_COMMAND', message: reason, details: {} } }));
      },
    };
    const unsubscribe = this.subscribe(resource, sub);
    socket.once('close', unsubscribe);
    socket.write(encodeResponse({ id, ok: true, result: { subscribed: true } }));
  }
}
