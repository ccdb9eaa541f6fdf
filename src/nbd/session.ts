/**
 * One NBD connection: option haggling, then transmission.
 *
 * Phases (the only legal moves):
 *   Handshake    -> TlsUpgrade (STARTTLS acked), Transmission (GO / EXPORT_NAME), Closed
 *   TlsUpgrade   -> Handshake (TLS up), Closed
 *   Transmission -> Closed
 * Closed is entered only from the socket's 'close' event, whatever caused it.
 *
 * The session owns its socket. Decoding and encoding live in the pure codecs
 * (handshake-codec, request-decoder, reply-codec); replies leave through one
 * ReplyWriter so frames never interleave. Nothing a client sends can throw out
 * of here: protocol violations close this connection only, and failed
 * requests become error replies.
 */
import type { Socket } from 'node:net';
import tls from 'node:tls';
import { describeError } from '../errors.js';
import {
  BASE_ALLOCATION,
  MAX_SAFE_BYTES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_PAYLOAD_LEN,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_KNOWN_CLIENT_FLAGS,
  NBD_MAX_EXTENTS,
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
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_BLOCK_STATUS_EXT,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
} from './constants.js';
import { nbdErrnoFromError, nbdErrnoName } from './errno.js';
import type { Extent, NbdClientInfo, NbdExport } from './export.js';
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
import {
  ERROR_PAYLOAD_FIXED,
  ReplyMode,
  blockStatusPayloadSize,
  errorMessageBytes,
  writeBlockStatusPayload,
  writeChunkHeader,
  writeErrorPayload,
  writeOffset,
  writeSimpleReply,
} from './reply-codec.js';
import { PayloadProblem, RequestDecoder, type NbdRequest } from './request-decoder.js';
import { ReplyWriter } from './reply-writer.js';
import { blockStatusDescriptors } from './block-status.js';
import { transmissionFlags } from './transmission-flags.js';
import type { TlsMode } from './export.js';

/** Requests in flight per connection before we stop reading (backpressure). */
export const MAX_REQUESTS_IN_FLIGHT = 64;
/** Payload bytes (READ lengths + WRITE payloads) in flight before we stop reading. */
export const MAX_BYTES_IN_FLIGHT = 64 * 1024 * 1024;
/** The context ID we hand out for base:allocation (IDs are per connection). */
const BASE_ALLOCATION_ID = 1;
/** Block sizes we advertise (see docs/nbd.md): any byte alignment works. */
const BLOCK_MINIMUM = 1;
const BLOCK_PREFERRED = 4096;
/** Largest header we ever put in the slab: extended chunk + error payload + message + offset. */
const MAX_FRAME_HEADER = 32 + ERROR_PAYLOAD_FIXED + 4096 + 8;

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

export class NbdSession {
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
  private dec: RequestDecoder | null = null;
  private writer: ReplyWriter | null = null;
  private mode = ReplyMode.Simple;
  private maxPayload = 0;
  private inFlight = 0;
  private bytesInFlight = 0;
  private paused = false;
  private pumping = false;
  /** No more requests are executed: set by DISC (stop reading) or shutdown (ESHUTDOWN). */
  private draining: 'disc' | 'shutdown' | null = null;
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
      if (this.draining === null) this.draining = 'shutdown';
      this.maybeFinishDrain();
      // Requests may be waiting in the decoder behind a full window.
      this.pump();
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
        if (this.draining === 'disc') return; // nothing after DISC is acted on
        this.dec!.push(chunk);
        this.pump();
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
    if (this.metaExport !== exp.name) this.metaExport = null;
    this.maxPayload = exp.blockSize().maximum;
    this.mode = this.extended ? ReplyMode.Extended : this.structured ? ReplyMode.Structured : ReplyMode.Simple;
    this.dec = new RequestDecoder({ extended: this.extended, maxPayload: this.maxPayload });
    this.writer = new ReplyWriter(this.socket, {
      onBlocked: () => this.updateFlow(),
      onDrained: () => this.updateFlow(),
    });
    this.log.debug({ export: exp.name, flags, mode: this.mode }, 'transmission');
    try {
      exp.clientOpened(this.info);
    } catch (e) {
      this.log.error({ err: describeError(e) }, 'export.clientOpened threw');
    }
    // Requests may have arrived together with the option that ended haggling.
    for (const chunk of this.hs.takeRemaining()) this.dec.push(chunk);
    this.pump();
  }

  // ---------------------------------------------------------------------------
  // transmission: flow control

  private blocked(): boolean {
    return (
      this.inFlight >= MAX_REQUESTS_IN_FLIGHT || this.bytesInFlight >= MAX_BYTES_IN_FLIGHT || this.writer!.blocked
    );
  }

  /** Decode and dispatch as many requests as the window allows. */
  private pump(): void {
    if (this.pumping || this.phase !== Phase.Transmission) return;
    this.pumping = true;
    try {
      const dec = this.dec!;
      while (this.draining !== 'disc' && !this.blocked() && this.phase === Phase.Transmission) {
        const req = dec.next();
        if (req === null) {
          if (dec.violation !== null) this.hardClose(dec.violation);
          break;
        }
        this.dispatch(req);
      }
    } finally {
      this.pumping = false;
    }
    this.updateFlow();
  }

  /** Pause the socket while the window is full or the writer is blocked; resume otherwise. */
  private updateFlow(): void {
    if (this.phase !== Phase.Transmission) return;
    const blocked = this.blocked();
    if (blocked && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!blocked && this.paused) {
      this.paused = false;
      this.socket.resume();
      this.pump();
    }
  }

  // ---------------------------------------------------------------------------
  // transmission: requests

  private dispatch(req: NbdRequest): void {
    if (req.type === NBD_CMD_DISC) {
      // No reply; finish what is in flight, then close.
      this.log.debug('client sent DISC');
      this.draining = 'disc';
      this.maybeFinishDrain();
      return;
    }
    this.inFlight++;
    this.bytesInFlight += weightOf(req);
    if (this.draining === 'shutdown') {
      return this.replyError(req, NBD_ESHUTDOWN, 'server is shutting down');
    }
    const exp = this.export!;
    const f = exp.features();
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
    const size = exp.size();
    // FUA is accepted on every command (clients set it liberally) once advertised.
    let allowed = f.canFua ? NBD_CMD_FLAG_FUA : 0;
    if (this.extended && req.type === NBD_CMD_WRITE) allowed |= NBD_CMD_FLAG_PAYLOAD_LEN;
    if (req.payloadProblem === PayloadProblem.TooLarge) {
      return this.replyError(req, NBD_EINVAL, `payload of ${req.length} bytes exceeds the maximum of ${this.maxPayload}`);
    }
    if (req.payloadProblem === PayloadProblem.Unexpected) {
      return this.replyError(req, NBD_EINVAL, 'this command takes no payload');
    }
    try {
      switch (req.type) {
        case NBD_CMD_READ: {
          if (this.mode !== ReplyMode.Simple) allowed |= NBD_CMD_FLAG_DF;
          if (req.flags & ~allowed) return this.badFlags(req);
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_EINVAL, 'read beyond the end of the export');
          if (req.length > this.maxPayload) {
            const errno = req.flags & NBD_CMD_FLAG_DF ? NBD_EOVERFLOW : NBD_EINVAL;
            return this.replyError(req, errno, `read of ${req.length} bytes exceeds the maximum of ${this.maxPayload}`);
          }
          if (req.length === 0) return this.replyRead(req, EMPTY);
          exp.read(req.offset, req.length).then(
            (data) => this.replyRead(req, data),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        case NBD_CMD_WRITE: {
          if (req.flags & ~allowed) return this.badFlags(req);
          if (f.readOnly) return this.replyError(req, NBD_EPERM, 'the export is read-only');
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_ENOSPC, 'write beyond the end of the export');
          if (req.length === 0) return this.replyOk(req);
          exp.write(req.offset, req.payload!, fua).then(
            () => this.replyOk(req),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        case NBD_CMD_FLUSH: {
          if (req.flags & ~allowed) return this.badFlags(req);
          if (!f.canFlush) return this.replyError(req, NBD_EINVAL, 'FLUSH is not supported');
          if (req.offset !== 0 || req.length !== 0) return this.replyError(req, NBD_EINVAL, 'FLUSH needs offset and length 0');
          exp.flush().then(
            () => this.replyOk(req),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        case NBD_CMD_TRIM: {
          if (req.flags & ~allowed) return this.badFlags(req);
          if (f.readOnly) return this.replyError(req, NBD_EPERM, 'the export is read-only');
          if (!f.canTrim) return this.replyError(req, NBD_EINVAL, 'TRIM is not supported');
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_EINVAL, 'trim beyond the end of the export');
          if (req.length === 0) return this.replyOk(req);
          exp.trim(req.offset, req.length, fua).then(
            () => this.replyOk(req),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        case NBD_CMD_WRITE_ZEROES: {
          allowed |= NBD_CMD_FLAG_NO_HOLE;
          if (f.canFastZero) allowed |= NBD_CMD_FLAG_FAST_ZERO;
          if (req.flags & ~allowed) return this.badFlags(req);
          if (f.readOnly) return this.replyError(req, NBD_EPERM, 'the export is read-only');
          if (!f.canWriteZeroes) return this.replyError(req, NBD_EINVAL, 'WRITE_ZEROES is not supported');
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_ENOSPC, 'write beyond the end of the export');
          if (req.length === 0) return this.replyOk(req);
          const opts = {
            noHole: (req.flags & NBD_CMD_FLAG_NO_HOLE) !== 0,
            fua,
            fastZero: (req.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0,
          };
          exp.writeZeroes(req.offset, req.length, opts).then(
            () => this.replyOk(req),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        case NBD_CMD_CACHE: {
          if (req.flags & ~allowed) return this.badFlags(req);
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_EINVAL, 'cache beyond the end of the export');
          // A prefetch hint: without support it is a successful no-op.
          if (req.length === 0 || !f.canCache) return this.replyOk(req);
          exp.cache(req.offset, req.length).then(
            () => this.replyOk(req),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        case NBD_CMD_BLOCK_STATUS: {
          allowed |= NBD_CMD_FLAG_REQ_ONE;
          if (req.flags & ~allowed) return this.badFlags(req);
          if (this.mode === ReplyMode.Simple || this.metaExport === null) {
            return this.replyError(req, NBD_EINVAL, 'no metadata context was negotiated');
          }
          if (req.length === 0) return this.replyError(req, NBD_EINVAL, 'BLOCK_STATUS of length 0');
          if (outOfRange(req.offset, req.length, size)) return this.replyError(req, NBD_EINVAL, 'block status beyond the end of the export');
          exp.extents(req.offset, req.length).then(
            (extents) => this.replyBlockStatus(req, extents),
            (e) => this.replyFailure(req, e),
          );
          return;
        }
        default:
          return this.replyError(req, NBD_EINVAL, `unknown command ${req.type}`);
      }
    } catch (e) {
      // An export that throws instead of rejecting still gets a reply.
      this.replyFailure(req, e);
    }
  }

  private badFlags(req: NbdRequest): void {
    this.replyError(req, NBD_EINVAL, `flags 0x${req.flags.toString(16)} are not valid for command ${req.type}`);
  }

  // ---------------------------------------------------------------------------
  // transmission: replies (each frame is appended whole, synchronously)

  private replyOk(req: NbdRequest): void {
    const w = this.writer!;
    const at = w.begin(MAX_FRAME_HEADER);
    if (this.mode === ReplyMode.Extended) {
      w.end(writeChunkHeader(this.mode, w.slab, at, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, req.cookieHi, req.cookieLo, req.offsetHi, req.offsetLo, 0));
    } else {
      // Structured mode may still answer payload-less commands simply.
      w.end(writeSimpleReply(w.slab, at, 0, req.cookieHi, req.cookieLo));
    }
    this.completed(req);
  }

  private replyRead(req: NbdRequest, data: Buffer): void {
    if (data.length !== req.length) {
      return this.replyError(req, NBD_EIO, `export returned ${data.length} bytes for a read of ${req.length}`);
    }
    const w = this.writer!;
    const at = w.begin(MAX_FRAME_HEADER);
    if (this.mode === ReplyMode.Simple) {
      w.end(writeSimpleReply(w.slab, at, 0, req.cookieHi, req.cookieLo));
    } else if (data.length === 0) {
      w.end(writeChunkHeader(this.mode, w.slab, at, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, req.cookieHi, req.cookieLo, req.offsetHi, req.offsetLo, 0));
    } else {
      // One OFFSET_DATA chunk covers the whole read (so DF always holds).
      let n = writeChunkHeader(this.mode, w.slab, at, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, req.cookieHi, req.cookieLo, req.offsetHi, req.offsetLo, 8 + data.length);
      n += writeOffset(w.slab, at + n, req.offset);
      w.end(n);
    }
    w.payload(data);
    this.completed(req);
  }

  private replyFailure(req: NbdRequest, e: unknown): void {
    const errno = nbdErrnoFromError(e);
    this.log.debug({ type: req.type, offset: req.offset, length: req.length, err: describeError(e) }, 'request failed');
    this.replyError(req, errno, describeError(e));
  }

  private replyError(req: NbdRequest, errno: number, message: string): void {
    const w = this.writer!;
    const at = w.begin(MAX_FRAME_HEADER);
    if (this.mode === ReplyMode.Simple) {
      w.end(writeSimpleReply(w.slab, at, errno, req.cookieHi, req.cookieLo));
    } else {
      const msg = errorMessageBytes(message || nbdErrnoName(errno));
      let n = writeChunkHeader(this.mode, w.slab, at, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, req.cookieHi, req.cookieLo, req.offsetHi, req.offsetLo, ERROR_PAYLOAD_FIXED + msg.length);
      n += writeErrorPayload(w.slab, at + n, errno, msg);
      w.end(n);
    }
    this.completed(req);
  }

  private replyBlockStatus(req: NbdRequest, extents: Extent[]): void {
    const { lengths, statuses } = blockStatusDescriptors(
      extents,
      req.offset,
      req.length,
      (req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0,
      NBD_MAX_EXTENTS,
    );
    if (lengths.length === 0) return this.replyError(req, NBD_EIO, 'the export reported no extents for the range');
    const count = lengths.length;
    const extended = this.mode === ReplyMode.Extended;
    const w = this.writer!;
    const payload = Buffer.allocUnsafe(blockStatusPayloadSize(extended, count));
    writeBlockStatusPayload(payload, 0, extended, BASE_ALLOCATION_ID, lengths, statuses, count);
    const at = w.begin(MAX_FRAME_HEADER);
    const type = extended ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT : NBD_REPLY_TYPE_BLOCK_STATUS;
    w.end(writeChunkHeader(this.mode, w.slab, at, NBD_REPLY_FLAG_DONE, type, req.cookieHi, req.cookieLo, req.offsetHi, req.offsetLo, payload.length));
    w.payload(payload);
    this.completed(req);
  }

  private completed(req: NbdRequest): void {
    this.inFlight--;
    this.bytesInFlight -= weightOf(req);
    if (this.draining !== null) this.maybeFinishDrain();
    else if (this.paused) this.updateFlow();
  }

  /** When draining and nothing is in flight: send what is queued, then close. */
  private maybeFinishDrain(): void {
    if (this.draining === null || this.inFlight > 0 || this.closing || this.phase !== Phase.Transmission) return;
    this.writer!.flush();
    this.endAfterWrites();
  }

  /**
   * end() sends what is queued, then FIN; destroy once it is out so a client
   * that never closes its side cannot hold the session open. A client that is
   * already gone (EPIPE) is handled by the error listener.
   */
  private endAfterWrites(): void {
    this.closing = true;
    const s = this.socket;
    s.pause();
    s.end(() => s.destroy());
  }
}

const EMPTY = Buffer.alloc(0);

/** Overflow-safe range check: offsets beyond 2^53 are never in range. */
function outOfRange(offset: number, length: number, size: number): boolean {
  return offset > MAX_SAFE_BYTES || offset > size || length > size - offset;
}

/** Bytes a request holds in memory while in flight (READ data or WRITE payload). */
function weightOf(req: NbdRequest): number {
  if (req.type === NBD_CMD_READ) return req.length <= MAX_BYTES_IN_FLIGHT ? req.length : 0;
  return req.payload ? req.payload.length : 0;
}
