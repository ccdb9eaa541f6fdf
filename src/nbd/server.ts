/**
 * NbdServer: listeners (TCP or unix socket) that accept connections and hand
 * each one to an NbdSession. The daemon creates one server and one listener
 * per configured address; the resource layer supplies the exports.
 */
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import type { NbdAddress } from '../config/model.js';
import { MirrorError, describeError } from '../errors.js';
import { AllowList } from './allow-list.js';
import { ClientCertificateCheck } from './client-certificate.js';
import type { ListenerPolicy, NbdClientInfo, NbdExport, TlsMode } from './export.js';
import { silentLogger, type NbdLogger } from './logger.js';
import { NbdSession, type SessionHost } from './session.js';

/** How long a client still haggling may keep answering ERR_SHUTDOWN before we hang up. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 2000;
/** How long a client may haggle before it must have chosen an export. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;

export interface NbdServerOptions {
  logger?: NbdLogger;
  /** Grace period for handshaking clients at close() (ms). */
  shutdownGraceMs?: number;
  /** Drop a client that has not chosen an export within this many ms (0: never). */
  handshakeTimeoutMs?: number;
}

export interface NbdListener {
  /** Where it listens: the real port when 0 was asked for. */
  readonly address: NbdAddress;
  /** Clients in transmission on this listener. */
  clients(): NbdClientInfo[];
  /** Stop accepting, drain and close this listener's clients. */
  close(): Promise<void>;
}

export class NbdServer {
  private readonly log: NbdLogger;
  private readonly graceMs: number;
  private readonly handshakeTimeoutMs: number;
  private readonly listeners = new Set<Listener>();
  private nextClientId = 1;

  constructor(options: NbdServerOptions = {}) {
    this.log = options.logger ?? silentLogger;
    this.graceMs = options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS;
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  }

  /**
   * Listens on `address` and serves `exports` there; the first export is the
   * default for an empty export name. Rejects with a MirrorError
   * (ERR_ADDRESS_IN_USE, ERR_BAD_CONFIG or ERR_IO) saying what went wrong.
   */
  async listen(address: NbdAddress, policy: ListenerPolicy, exports: NbdExport[]): Promise<NbdListener> {
    const where = describeAddress(address);
    if (exports.length === 0) throw new MirrorError('ERR_BAD_CONFIG', `NBD listener ${where}: no exports`);
    let allow: AllowList;
    try {
      allow = new AllowList(address.kind === 'tcp' ? policy.allow : []);
    } catch (e) {
      throw new MirrorError('ERR_BAD_CONFIG', `NBD listener ${where}: ${describeError(e)}`);
    }
    let secureContext: tls.SecureContext | null = null;
    let clientCertificates: ClientCertificateCheck | null = null;
    if (policy.tls !== 'off') {
      if (!policy.tlsKey || !policy.tlsCert) {
        throw new MirrorError('ERR_BAD_CONFIG', `NBD listener ${where}: tls ${policy.tls} needs a key and a certificate`);
      }
      try {
        secureContext = tls.createSecureContext({ key: policy.tlsKey, cert: policy.tlsCert, ca: policy.tlsCa });
        if (policy.tlsCa) clientCertificates = new ClientCertificateCheck(policy.tlsCa);
      } catch (e) {
        throw new MirrorError('ERR_BAD_CONFIG', `NBD listener ${where}: bad TLS material: ${describeError(e)}`);
      }
    }
    if (address.kind === 'unix') await removeStaleSocket(address.path);

    const listener = new Listener(this, address, {
      tlsMode: policy.tls,
      secureContext,
      clientCertificates,
      allow,
      exports,
      log: this.log.child({ listener: where }),
      graceMs: this.graceMs,
      handshakeTimeoutMs: this.handshakeTimeoutMs,
    });
    await listener.start();
    this.listeners.add(listener);
    return listener;
  }

  /** New requests of the export's clients get ESHUTDOWN, in-flight ones finish, then they are closed. */
  async disconnectClients(exportName: string, reason: string): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const l of this.listeners) waits.push(l.disconnectExport(exportName, reason));
    await Promise.all(waits);
  }

  /** Closes every listener (see NbdListener.close). */
  async close(): Promise<void> {
    await Promise.all([...this.listeners].map((l) => l.close()));
  }

  /** @internal */
  allocateClientId(): number {
    return this.nextClientId++;
  }

  /** @internal */
  forget(listener: Listener): void {
    this.listeners.delete(listener);
  }
}

interface ListenerSettings {
  tlsMode: TlsMode;
  secureContext: tls.SecureContext | null;
  clientCertificates: ClientCertificateCheck | null;
  allow: AllowList;
  exports: readonly NbdExport[];
  log: NbdLogger;
  graceMs: number;
  handshakeTimeoutMs: number;
}

class Listener implements NbdListener, SessionHost {
  address: NbdAddress;
  readonly tlsMode: TlsMode;
  readonly secureContext: tls.SecureContext | null;
  readonly clientCertificates: ClientCertificateCheck | null;
  readonly exports: readonly NbdExport[];
  readonly handshakeTimeoutMs: number;
  private readonly allow: AllowList;
  private readonly log: NbdLogger;
  private readonly graceMs: number;
  private readonly server: net.Server;
  private readonly sessions = new Set<NbdSession>();
  private closing: Promise<void> | null = null;

  constructor(
    private readonly owner: NbdServer,
    requested: NbdAddress,
    settings: ListenerSettings,
  ) {
    this.address = requested;
    this.tlsMode = settings.tlsMode;
    this.secureContext = settings.secureContext;
    this.clientCertificates = settings.clientCertificates;
    this.exports = settings.exports;
    this.handshakeTimeoutMs = settings.handshakeTimeoutMs;
    this.allow = settings.allow;
    this.log = settings.log;
    this.graceMs = settings.graceMs;
    this.server = net.createServer((socket) => this.accept(socket));
    // Errors after listening (EMFILE on accept, say) must not crash the daemon.
    this.server.on('error', (e) => this.log.error({ err: describeError(e) }, 'listener error'));
  }

  start(): Promise<void> {
    const a = this.address;
    return new Promise((resolve, reject) => {
      const failed = (e: NodeJS.ErrnoException): void => {
        const where = describeAddress(a);
        if (e.code === 'EADDRINUSE') {
          reject(new MirrorError('ERR_ADDRESS_IN_USE', `cannot listen on ${where}: address already in use`, { address: where }));
        } else {
          reject(new MirrorError('ERR_IO', `cannot listen on ${where}: ${describeError(e)}`, { address: where }));
        }
      };
      this.server.once('error', failed);
      const ready = (): void => {
        this.server.removeListener('error', failed);
        const bound = this.server.address();
        if (a.kind === 'tcp' && bound !== null && typeof bound === 'object') {
          this.address = { kind: 'tcp', host: bound.address, port: bound.port };
        }
        this.log.info({ address: describeAddress(this.address) }, 'NBD listener ready');
        resolve();
      };
      if (a.kind === 'tcp') this.server.listen({ host: a.host, port: a.port }, ready);
      else this.server.listen({ path: a.path }, ready);
    });
  }

  clients(): NbdClientInfo[] {
    const out: NbdClientInfo[] = [];
    for (const s of this.sessions) if (s.inTransmission) out.push({ ...s.info });
    return out;
  }

  shuttingDown(): boolean {
    return this.closing !== null;
  }

  sessionClosed(session: NbdSession): void {
    this.sessions.delete(session);
  }

  disconnectExport(name: string, reason: string): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const s of this.sessions) if (s.serves(name)) waits.push(s.shutdown(reason, this.graceMs));
    return Promise.all(waits).then(() => undefined);
  }

  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closing = (async () => {
      const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
      await Promise.all([...this.sessions].map((s) => s.shutdown('server shutting down', this.graceMs)));
      await stopped;
      if (this.address.kind === 'unix') await fsp.rm(this.address.path, { force: true }).catch(() => undefined);
      this.owner.forget(this);
      this.log.info('NBD listener closed');
    })();
    return this.closing;
  }

  private accept(socket: net.Socket): void {
    // Until a session owns it, a socket error must still be caught.
    socket.on('error', noop);
    if (this.closing) {
      socket.destroy();
      return;
    }
    let remote = 'unix';
    if (this.address.kind === 'tcp') {
      const ip = socket.remoteAddress;
      remote = ip === undefined ? 'unknown' : ip.includes(':') ? `[${ip}]:${socket.remotePort}` : `${ip}:${socket.remotePort}`;
      if (!this.allow.allows(ip)) {
        this.log.warn({ remote }, 'client refused: address not in the allow-list');
        socket.destroy();
        return;
      }
      socket.setNoDelay(true);
    }
    const info: NbdClientInfo = { id: this.owner.allocateClientId(), remote, tls: false, connectedAt: Date.now() };
    const session = new NbdSession(socket, info, this, this.log);
    this.sessions.add(session);
    session.start();
  }
}

function noop(): void {}

export function describeAddress(a: NbdAddress): string {
  if (a.kind === 'unix') return a.path;
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/**
 * A unix socket path left behind by a dead process is replaced; one that a
 * live process answers on is "in use"; anything else there is not ours to
 * delete.
 */
async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = await fsp.lstat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new MirrorError('ERR_IO', `cannot listen on ${path}: ${describeError(e)}`);
  }
  if (!st.isSocket()) throw new MirrorError('ERR_IO', `cannot listen on ${path}: it exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new MirrorError('ERR_ADDRESS_IN_USE', `cannot listen on ${path}: address already in use`, { address: path });
  await fsp.rm(path, { force: true });
}
