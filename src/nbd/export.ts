/**
 * What the NBD server serves. The server knows this interface and nothing of
 * resources, roles or replication: the resource layer implements it.
 *
 * Errors: an operation that fails rejects with an Error carrying an `errno`
 * string property (e.g. 'EIO', 'ENOSPC', 'EPERM', 'ESHUTDOWN'); the server maps
 * it to an NBD error number at the wire. Anything else becomes EIO.
 */
import type { Extent } from '../../native-free-io/block-store.js';

export type { Extent };

export type TlsMode = 'off' | 'optional' | 'required';

export interface ExportFeatures {
  readOnly: boolean;
  canFlush: boolean;
  canFua: boolean;
  canTrim: boolean;
  canWriteZeroes: boolean;
  canFastZero: boolean;
  canCache: boolean;
  /** FLUSH on any connection covers writes completed on every connection. */
  canMultiConn: boolean;
  rotational: boolean;
}

export interface BlockSizeConstraints {
  minimum: number;
  preferred: number;
  /** Largest READ/WRITE payload accepted (the advertised maximum). */
  maximum: number;
}

export interface NbdExport {
  /** Export name (the resource name). */
  readonly name: string;
  readonly description: string;
  /** Current size in bytes. */
  size(): number;
  features(): ExportFeatures;
  blockSize(): BlockSizeConstraints;
  /**
   * Null when a client may open the export now; otherwise the reason it may
   * not (e.g. "r0 is Secondary on beta; the Primary is alpha"). Checked at
   * INFO, GO and EXPORT_NAME.
   */
  openRefusal(): string | null;

  /**
   * Resolves exactly `length` bytes. `into`, when given, is a buffer of
   * exactly `length` bytes the server lends for the data: the export may read
   * into it and resolve it (or a view of it), or ignore it and resolve a
   * buffer of its own. The server takes `into` back once the promise settles
   * (it reuses it for later reads once the reply is sent), so the export must
   * neither touch it afterwards nor hand it to anyone who would.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  /**
   * `data` belongs to the export from the call on: it is a view of bytes
   * received from the client (or a copy of them) that the server never
   * writes to again, so the export may keep it after the promise settles,
   * e.g. queued for a peer.
   */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /**
   * Optional: write() with the payload given as consecutive `parts` adding
   * up to its length, as it arrived from the socket (no copy). Owned as in
   * write(). Without it the server concatenates the parts into one buffer
   * and calls write().
   */
  writev?(offset: number, parts: readonly Buffer[], fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, opts: { noHole: boolean; fua: boolean; fastZero: boolean }): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  cache(offset: number, length: number): Promise<void>;
  /** base:allocation of [offset, offset+length): in order, nonempty, may run past the end of the range. */
  extents(offset: number, length: number): Promise<Extent[]>;

  /** The server tells the export when a client session opens or closes, for status and role checks. */
  clientOpened(client: NbdClientInfo): void;
  clientClosed(client: NbdClientInfo): void;
}

export interface NbdClientInfo {
  /** Unique per server process. */
  id: number;
  /** "127.0.0.1:45678", "[::1]:45678" or "unix". */
  remote: string;
  tls: boolean;
  connectedAt: number;
}

/** Per-listener policy, from the resource's nbd settings. */
export interface ListenerPolicy {
  tls: TlsMode;
  /** PEM material, required when tls is not 'off'. */
  tlsKey?: Buffer;
  tlsCert?: Buffer;
  tlsCa?: Buffer;
  /** Client addresses or CIDRs allowed; empty means everyone. */
  allow: string[];
}
