/**
 * The resource's replication port (`address` of this node): accepts TCP
 * connections, runs the authenticated opening on each, and hands the channel
 * to the Peer its HELLO names. A connection from an address that is no
 * peer's, a stranger, a wrong secret or a protocol violation closes that one
 * connection, with the reason logged.
 */
import { lookup } from 'node:dns/promises';
import net, { BlockList, isIP } from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { TcpAddress } from '../config/model.js';
import { MirrorError } from '../errors.js';
import { PeerChannel } from './channel.js';
import { openChannel } from './opening.js';
import type { Peer, PeerTls } from './peer.js';

export interface PeerListenerOptions {
  address: TcpAddress;
  /** The other nodes' `address`: only their hosts may connect. */
  peerAddresses: readonly TcpAddress[];
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
  private readonly sources: PeerSources;
  private closing = false;

  constructor(private readonly o: PeerListenerOptions) {
    this.sources = new PeerSources(o.peerAddresses);
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
    this.closing = true;
    for (const ch of this.pending) ch.close('shutting down');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accepted(socket: net.Socket): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    // Until a channel owns the socket, a reset must not go unhandled.
    socket.on('error', noop);
    void this.sources.admits(socket.remoteAddress).then((admitted) => {
      if (!admitted) {
        const reason = `${socket.remoteAddress ?? 'an unknown address'} is not the address of a peer of ${this.o.resource}`;
        this.o.log.warn({ remote, reason }, 'refused a peer connection');
        socket.destroy();
      } else if (this.closing) {
        socket.destroy();
      } else if (!socket.destroyed) {
        this.open(socket, remote);
      }
    });
  }

  private open(socket: net.Socket, remote: string): void {
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

function noop(): void {}

/**
 * Where peers may connect from: the hosts of the other nodes' `address`
 * (DRBD refuses other sources too). A node's connection to a peer leaves
 * from the address its route picks, on a replication link its own
 * `address`. Checked before a byte is read (with `tls yes`, after the TLS
 * handshake), so a stranger cannot even make us parse a HELLO. A host name
 * is looked up at each connection (DNS may change); an unspecified address
 * (0.0.0.0, ::) in a peer's `address` says nothing about its source, so it
 * admits every source.
 */
class PeerSources {
  private readonly ips = new BlockList();
  private readonly names: string[] = [];
  private readonly everyone: boolean;

  constructor(addresses: readonly TcpAddress[]) {
    let everyone = false;
    for (const { host } of addresses) {
      const ip = plainIp(host);
      const family = isIP(ip);
      if (family === 0) this.names.push(host);
      else if (ip === '0.0.0.0' || ip === '::') everyone = true;
      else this.ips.addAddress(ip, family === 4 ? 'ipv4' : 'ipv6');
    }
    this.everyone = everyone;
  }

  async admits(address: string | undefined): Promise<boolean> {
    if (this.everyone) return true;
    if (address === undefined) return false;
    const ip = plainIp(address);
    const family = isIP(ip);
    if (family === 0) return false;
    if (this.ips.check(ip, family === 4 ? 'ipv4' : 'ipv6')) return true;
    for (const name of this.names) {
      const found = await lookup(name, { all: true }).catch(() => []);
      if (found.some((a) => plainIp(a.address) === ip)) return true;
    }
    return false;
  }
}

/** An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d; brackets come from `[v6]:port` configs. */
function plainIp(address: string): string {
  const bare = address.startsWith('[') && address.endsWith(']') ? address.slice(1, -1) : address;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(bare);
  return mapped ? mapped[1]! : bare;
}
