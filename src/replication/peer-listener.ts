/**
 * The resource's replication port (`address` of this node): accepts TCP
 * connections, runs the authenticated opening on each, and hands the channel
 * to the Peer its HELLO names. A stranger, a wrong secret or a protocol
 * violation closes that one connection, with the reason logged.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { TcpAddress } from '../config/model.js';
import { MirrorError } from '../errors.js';
import { PeerChannel } from './channel.js';
import { openChannel } from './opening.js';
import type { Peer, PeerTls } from './peer.js';

export interface PeerListenerOptions {
  address: TcpAddress;
  resource: string;
  ownNodeId: number;
  secret: string;
  integrity: boolean;
  timeoutMs: number;
  maxPacketBytes: number;
  peers: ReadonlyMap<number, Peer>;
  log: Logger;
  tls?: PeerTls | null;
}

export class PeerListener {
  private readonly server: net.Server;
  private readonly pending = new Set<PeerChannel>();

  constructor(private readonly o: PeerListenerOptions) {
    const t = o.tls;
    this.server = t
      ? tls.createServer({ key: t.key, cert: t.cert, ca: t.ca, requestCert: true, rejectUnauthorized: t.ca !== undefined }, (socket) =>
          this.accepted(socket),
        )
      : net.createServer((socket) => this.accepted(socket));
    if (t) this.server.on('tlsClientError', (e) => o.log.warn({ reason: e.message }, 'refused a peer connection: TLS handshake failed'));
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', (e: NodeJS.ErrnoException) => {
        const where = `${this.o.address.host}:${this.o.address.port}`;
        reject(
          new MirrorError(
            e.code === 'EADDRINUSE' ? 'ERR_ADDRESS_IN_USE' : 'ERR_IO',
            `${this.o.resource}: cannot listen for peers on ${where}: ${e.message}`,
          ),
        );
      });
      this.server.listen(this.o.address.port, this.o.address.host, () => resolve());
    });
  }

  async close(): Promise<void> {
    for (const ch of this.pending) ch.close('shutting down');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accepted(socket: net.Socket): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    const ch = new PeerChannel(socket, null, this.o.log.child({ remote }), this.o.maxPacketBytes);
    this.pending.add(ch);
    openChannel(ch, {
      resource: this.o.resource,
      ownNodeId: this.o.ownNodeId,
      secret: this.o.secret,
      integrity: this.o.integrity,
      timeoutMs: this.o.timeoutMs,
      isPeer: (id) => this.o.peers.has(id),
    }).then(
      (opened) => {
        this.pending.delete(ch);
        this.o.peers.get(opened.peerNodeId)?.acceptChannel(ch, opened);
      },
      (e: unknown) => {
        this.pending.delete(ch);
        this.o.log.warn({ remote, reason: (e as Error).message }, 'refused a peer connection');
      },
    );
  }
}
