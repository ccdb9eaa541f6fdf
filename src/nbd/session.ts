/**
 * One NBD connection: option haggling here, then transmission
 * (transmission.ts), which takes over the socket once an export is chosen.
 *
 * Phases (the only legal moves):
 *   Handshake    -> TlsUpgrade (STARTTLS acked), Transmission (GO / EXPORT_NAME), Closed
 *   TlsUpgrade   -> Handshake (TLS up), Closed
 *   Transmission -> Closed
 * Closed is entered only from the socket's 'close' event, whatever caused it.
 *
 * The session owns its socket and its life: it alone closes it, and
 * everything ends in finish() on the socket's 'close'. Decoding and encoding
 * live in the pure codecs (handshake-codec for the options). Nothing a client
 * sends can throw out of here: protocol violations close this connection
 * only.
 */
import type { Socket } from 'node:net';
import tls from 'node:tls';
import { describeError } from '../errors.js';
import {
  BASE_ALLOCATION,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_KNOWN_CLIENT_FLAGS,
  NBD_MAX_OPTIONS,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_EXTENDED_HEADERS,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ERR_EXT_HEADER_REQD,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
} from './constants.js';
import type { NbdClientInfo, NbdExport } from './export.js';
import {
  HandshakeDecoder,
  decodeNbdString,
  encodeAck,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContextReply,
  encodeOptionError,
  encodeServerReply,
  parseInfoRequest,
  parseMetaContextRequest,
} from './handshake-codec.js';
import type { NbdLogger } from './logger.js';
import type { ClientCertificateCheck } from './client-certificate.js';
import { ReplyMode } from './reply-codec.js';
import { BASE_ALLOCATION_ID, Transmission, type TransmissionHost } from './transmission.js';
import { transmissionFlags } from './transmission-flags.js';
import type { TlsMode } from './export.js';

export { MAX_BYTES_IN_FLIGHT, MAX_REQUESTS_IN_FLIGHT } from './transmission.js';
/** Block sizes we advertise (see docs/nbd.md): any byte alignment works. */
const BLOCK_MINIMUM = 1;
const BLOCK_PREFERRED = 4096;

const enum Phase {
  Handshake,
  TlsUpgrade,
  Transmission,
  Closed,
}

/** What a session needs from its listener. */
export interface SessionHost {
  readonly exports: readonly NbdExport[];
  readonly tlsMode: TlsMode;
  /** Null when TLS is off. */
  readonly secureContext: tls.SecureContext | null;
  /** When set, clients must present a certificate this accepts. */
  readonly clientCertificates: ClientCertificateCheck | null;
  /** A client that has not chosen an export after this long is dropped (0: never). */
  readonly handshakeTimeoutMs: number;
  /** Options are refused with ERR_SHUTDOWN and new requests with ESHUTDOWN. */
  shuttingDown(): boolean;
  sessionClosed(session: NbdSession): void;
}

export class NbdSession implements TransmissionHost {
  readonly info: NbdClientInfo;
  /** The export chosen by GO / EXPORT_NAME; null during the handshake. */
  export: NbdExport | null = null;
  /** Resolves when the socket has closed and the export was told. */
  readonly closed: Promise<void>;

  private phase = Phase.Handshake;
  private socket: Socket;
  private readonly raw: Socket;
  private readonly log: NbdLogger;
  private readonly host: SessionHost;
  private resolveClosed!: () => void;

  // --- negotiated state (wiped by STARTTLS) ---
  private fixedNewstyle = false;
  private noZeroes = false;
  private structured = false;
  private extended = false;
  /** Export whose base:allocation was selected with SET_META_CONTEXT, or null. */
  private metaExport: string | null = null;
  private optionCount = 0;

  // --- handshake ---
  private readonly hs = new HandshakeDecoder();

  // --- transmission ---
  private tx: Transmission | null = null;
  /** The socket is ending (ABORT, or transmission drained): nothing more is acted on. */
  private closing = false;
  private handshakeTimer: NodeJS.Timeout | null = null;

  private readonly onData = (chunk: Buffer): void => this.received(chunk);
  private readonly onError = (err: Error): void => this.socketError(err);
  private readonly onClose = (): void => this.finish();

  constructor(socket: Socket, info: NbdClientInfo, host: SessionHost, logger: NbdLogger) {
    this.raw = socket;
    this.socket = socket;
    this.info = info;
    this.host = host;
    this.log = logger.child({ client: info.id, remote: info.remote });
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  start(): void {
    const s = this.socket;
    s.on('data', this.onData);
    s.on('error', this.onError);
    s.on('close', this.onClose);
    this.log.debug('client connected');
    if (this.host.handshakeTimeoutMs > 0) {
      // A client that never picks an export must not hold a slot for ever.
      this.handshakeTimer = setTimeout(
        () => this.hardClose(`no export chosen within ${this.host.handshakeTimeoutMs} ms`),
        this.host.handshakeTimeoutMs,
      );
      this.handshakeTimer.unref();
    }
    s.write(encodeGreeting());
  }

  /** True while the session is in transmission with `name`. */
  serves(name: string): boolean {
    return this.phase === Phase.Transmission && this.export !== null && this.export.name === name;
  }

  get inTransmission(): boolean {
    return this.phase === Phase.Transmission;
  }

  /**
   * Stop serving: new requests get ESHUTDOWN, in-flight ones finish, then the
   * socket closes. A session still haggling gets ERR_SHUTDOWN for its
   * options (via the host) and is closed after `graceMs`.
   */
  shutdown(reason: string, graceMs: number): Promise<void> {
    if (this.phase === Phase.Closed) return this.closed;
    this.log.info({ reason }, 'disconnecting client');
    if (this.phase === Phase.Transmission) {
      this.tx!.shutdown();
    } else if (this.phase === Phase.TlsUpgrade) {
      this.socket.destroy();
    } else {
      const t = setTimeout(() => this.socket.destroy(), graceMs);
      t.unref();
      void this.closed.then(() => clearTimeout(t));
    }
    return this.closed;
  }

  /** Drop the connection now (protocol violation, refused export, server stopping). */
  hardClose(reason: string): void {
    if (this.phase !== Phase.Closed) this.log.warn({ reason }, 'dropping connection');
    this.socket.destroy();
  }

  // ---------------------------------------------------------------------------
  // socket events

  private received(chunk: Buffer): void {
    switch (this.phase) {
      case Phase.Handshake:
        if (this.closing) return;
        this.hs.push(chunk);
        this.haggle();
        return;
      case Phase.Transmission:
        this.tx!.received(chunk);
        return;
      case Phase.TlsUpgrade:
      case Phase.Closed:
        return;
    }
  }

  private socketError(err: Error): void {
    const code = (err as NodeJS.ErrnoException).code;
    // A client that goes away (EPIPE after ABORT, reset) is routine.
    if (code === 'EPIPE' || code === 'ECONNRESET') this.log.debug({ code }, 'socket closed by client');
    else this.log.warn({ err: describeError(err), code }, 'socket error');
    this.socket.destroy();
  }

  private finish(): void {
    if (this.phase === Phase.Closed) return;
    const wasServing = this.phase === Phase.Transmission;
    this.phase = Phase.Closed;
    this.clearHandshakeTimer();
    this.tx?.closed();
    this.raw.destroy();
    if (wasServing && this.export) {
      try {
        this.export.clientClosed(this.info);
      } catch (e) {
        this.log.error({ err: describeError(e) }, 'export.clientClosed threw');
      }
    }
    this.log.debug('client disconnected');
    this.host.sessionClosed(this);
    this.resolveClosed();
  }

  // ---------------------------------------------------------------------------
  // option haggling

  private haggle(): void {
    while (this.phase === Phase.Handshake && !this.closing && !this.socket.destroyed) {
      const ev = this.hs.next();
      if (ev === null) {
        if (this.hs.violation !== null) this.hardClose(this.hs.violation);
        return;
      }
      if (ev.kind === 'clientFlags') {
        if ((ev.flags & ~NBD_KNOWN_CLIENT_FLAGS) !== 0) {
          this.hardClose(`unknown client flags 0x${ev.flags.toString(16)}`);
          return;
        }
        this.fixedNewstyle = (ev.flags & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
        this.noZeroes = (ev.flags & NBD_FLAG_C_NO_ZEROES) !== 0;
        continue;
      }
      if (++this.optionCount > NBD_MAX_OPTIONS) {
        this.hardClose(`more than ${NBD_MAX_OPTIONS} options without choosing an export`);
        return;
      }
      this.handleOption(ev.option, ev.data);
    }
  }

  private reply(buf: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(buf);
  }

  private refuse(option: number, type: number, message: string): void {
    this.log.debug({ option, type: type >>> 0, message }, 'option refused');
    this.reply(encodeOptionError(option, type, message));
  }

  private handleOption(option: number, data: Buffer): void {
    this.log.trace({ option, length: data.length }, 'option');
    if (!this.fixedNewstyle && option !== NBD_OPT_EXPORT_NAME) {
      // Without fixed newstyle the client cannot read an error reply.
      this.hardClose(`option ${option} from a client that is not fixed newstyle`);
      return;
    }
    if (this.host.shuttingDown() && option !== NBD_OPT_ABORT) {
      if (option === NBD_OPT_EXPORT_NAME) this.hardClose('server shutting down');
      else this.refuse(option, NBD_REP_ERR_SHUTDOWN, 'server is shutting down');
      return;
    }
    const tlsRequired = this.host.tlsMode === 'required' && !this.info.tls;
    if (tlsRequired && option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
      if (option === NBD_OPT_EXPORT_NAME) this.hardClose('EXPORT_NAME before TLS on a TLS-only listener');
      else this.refuse(option, NBD_REP_ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
      return;
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        this.optExportName(data);
        return;
      case NBD_OPT_ABORT:
        this.reply(encodeAck(option));
        this.log.debug('client aborted the handshake');
        this.endAfterWrites();
        return;
      case NBD_OPT_LIST:
        if (data.length !== 0) return this.refuse(option, NBD_REP_ERR_INVALID, 'LIST takes no data');
        for (const exp of this.host.exports) this.reply(encodeServerReply(option, exp.name, exp.description));
        this.reply(encodeAck(option));
        return;
      case NBD_OPT_STARTTLS:
        this.optStartTls(data);
        return;
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        this.optInfoGo(option, data);
        return;
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.refuse(option, NBD_REP_ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        if (this.extended) return this.refuse(option, NBD_REP_ERR_EXT_HEADER_REQD, 'extended headers are already in use');
        if (this.structured) return this.refuse(option, NBD_REP_ERR_INVALID, 'structured replies already negotiated');
        this.structured = true;
        this.reply(encodeAck(option));
        return;
      case NBD_OPT_EXTENDED_HEADERS:
        if (data.length !== 0) return this.refuse(option, NBD_REP_ERR_INVALID, 'EXTENDED_HEADERS takes no data');
        if (this.extended) return this.refuse(option, NBD_REP_ERR_INVALID, 'extended headers already negotiated');
        this.extended = true;
        this.structured = true;
        this.reply(encodeAck(option));
        return;
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        this.optMetaContext(option, data);
        return;
      default:
        this.refuse(option, NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
        return;
    }
  }

  /** The export a name selects: the empty name means the listener's default (first). */
  private lookup(name: string): NbdExport | undefined {
    if (name === '') return this.host.exports[0];
    return this.host.exports.find((e) => e.name === name);
  }

  private optExportName(data: Buffer): void {
    // EXPORT_NAME cannot carry an error: every refusal is a hard disconnect.
    if (this.extended) return this.hardClose('EXPORT_NAME after extended headers');
    const name = decodeNbdString(data, 'export name');
    if (!name.ok) return this.hardClose(name.reason);
    const exp = this.lookup(name.value);
    if (!exp) return this.hardClose(`unknown export "${name.value}"`);
    const refusal = exp.openRefusal();
    if (refusal !== null) return this.hardClose(`export "${exp.name}" refused: ${refusal}`);
    const flags = this.flagsFor(exp);
    this.reply(encodeExportNameReply(exp.size(), flags, this.noZeroes));
    this.enterTransmission(exp, flags);
  }

  private optInfoGo(option: number, data: Buffer): void {
    const req = parseInfoRequest(data);
    if (req.kind === 'invalid') return this.refuse(option, NBD_REP_ERR_INVALID, req.reason);
    const exp = this.lookup(req.name);
    if (!exp) return this.refuse(option, NBD_REP_ERR_UNKNOWN, `no export named "${req.name}"`);
    // ERR_UNKNOWN ("export not available") is the closest fit for an export
    // that exists but cannot be opened now (say, on a Secondary); the message
    // says why.
    const refusal = exp.openRefusal();
    if (refusal !== null) return this.refuse(option, NBD_REP_ERR_UNKNOWN, refusal);
    const flags = this.flagsFor(exp);
    this.reply(encodeInfoExport(option, exp.size(), flags));
    if (req.infos.includes(NBD_INFO_NAME)) this.reply(encodeInfoString(option, NBD_INFO_NAME, exp.name));
    if (req.infos.includes(NBD_INFO_DESCRIPTION)) this.reply(encodeInfoString(option, NBD_INFO_DESCRIPTION, exp.description));
    // Always sent: clients that did not ask may use it, and ours are lenient.
    this.reply(encodeInfoBlockSize(option, BLOCK_MINIMUM, BLOCK_PREFERRED, exp.blockSize().maximum));
    this.reply(encodeAck(option));
    if (option === NBD_OPT_GO) this.enterTransmission(exp, flags);
  }

  private optMetaContext(option: number, data: Buffer): void {
    const set = option === NBD_OPT_SET_META_CONTEXT;
    // SET replaces the selection even when it fails.
    if (set) this.metaExport = null;
    const req = parseMetaContextRequest(data);
    if (req.kind === 'invalid') return this.refuse(option, NBD_REP_ERR_INVALID, req.reason);
    if (set && !this.structured) {
      return this.refuse(option, NBD_REP_ERR_INVALID, 'SET_META_CONTEXT needs structured replies first');
    }
    const exp = this.lookup(req.exportName);
    if (!exp) return this.refuse(option, NBD_REP_ERR_UNKNOWN, `no export named "${req.exportName}"`);
    let matched = false;
    if (set) {
      matched = req.queries.includes(BASE_ALLOCATION);
    } else {
      // Empty LIST query = everything; "base:" is the wildcard of its namespace.
      matched = req.queries.length === 0 || req.queries.some((q) => q === BASE_ALLOCATION || q === 'base:');
    }
    if (matched) {
      this.reply(encodeMetaContextReply(option, set ? BASE_ALLOCATION_ID : 0, BASE_ALLOCATION));
      if (set) this.metaExport = exp.name;
    }
    this.reply(encodeAck(option));
  }

  private optStartTls(data: Buffer): void {
    const option = NBD_OPT_STARTTLS;
    if (data.length !== 0) return this.refuse(option, NBD_REP_ERR_INVALID, 'STARTTLS takes no data');
    if (this.host.tlsMode === 'off' || this.host.secureContext === null) {
      return this.refuse(option, NBD_REP_ERR_POLICY, 'TLS is not enabled on this listener');
    }
    if (this.info.tls) return this.refuse(option, NBD_REP_ERR_INVALID, 'TLS is already active');
    this.reply(encodeAck(option));
    this.phase = Phase.TlsUpgrade;
    this.raw.pause();
    this.raw.removeListener('data', this.onData);
    // Bytes pipelined behind STARTTLS were sent in the clear and could be an
    // injection (nbdkit CVE-2021-3716): never act on them.
    if (this.hs.buffered() > 0 || this.raw.readableLength > 0) {
      this.hardClose('plaintext data after STARTTLS');
      return;
    }
    const certs = this.host.clientCertificates;
    const secure = new tls.TLSSocket(this.raw, {
      isServer: true,
      secureContext: this.host.secureContext,
      requestCert: certs !== null,
      rejectUnauthorized: certs !== null,
    });
    this.socket = secure;
    secure.on('error', this.onError);
    secure.on('close', this.onClose);
    secure.once('secure', () => {
      const refusal = certs === null ? null : certs.check(secure.getPeerX509Certificate());
      if (refusal !== null) {
        this.hardClose(`TLS client refused: ${refusal}`);
        return;
      }
      // TLS starts negotiation afresh: forget everything agreed in the clear.
      this.structured = false;
      this.extended = false;
      this.metaExport = null;
      this.info.tls = true;
      this.phase = Phase.Handshake;
      this.log.debug('TLS established');
      secure.on('data', this.onData);
    });
  }

  /** Transmission flags for `exp` in this session. */
  private flagsFor(exp: NbdExport): number {
    return transmissionFlags(exp.features(), this.structured);
  }

  private clearHandshakeTimer(): void {
    if (this.handshakeTimer !== null) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
  }

  private enterTransmission(exp: NbdExport, flags: number): void {
    this.phase = Phase.Transmission;
    this.clearHandshakeTimer();
    this.export = exp;
    const mode = this.extended ? ReplyMode.Extended : this.structured ? ReplyMode.Structured : ReplyMode.Simple;
    const tx = new Transmission(
      this.socket,
      exp,
      { mode, extended: this.extended, baseAllocation: this.metaExport === exp.name },
      this.log,
      this,
    );
    this.tx = tx;
    this.log.debug({ export: exp.name, flags, mode }, 'transmission');
    try {
      exp.clientOpened(this.info);
    } catch (e) {
      this.log.error({ err: describeError(e) }, 'export.clientOpened threw');
    }
    // Requests may have arrived together with the option that ended haggling.
    for (const chunk of this.hs.takeRemaining()) tx.received(chunk);
    tx.pump();
  }

  /**
   * end() sends what is queued, then FIN; destroy once it is out so a client
   * that never closes its side cannot hold the session open. A client that is
   * already gone (EPIPE) is handled by the error listener.
   */
  endAfterWrites(): void {
    this.closing = true;
    const s = this.socket;
    s.pause();
    s.end(() => s.destroy());
  }
}
