/**
 * What the security suite shares: a daemon's log read back as records, a
 * disk searched for an attacker's bytes, test certificates made with
 * openssl, a raw peer-protocol client and a raw TCP connection from a chosen
 * source address (127.0.0.2 and friends are all local on Linux loopback).
 *
 * Waiting is bounded by deadlines that fail with what was seen; no check
 * here asserts that something took a given time.
 */
import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { daemonPaths } from '../../src/daemon/run-dir.js';
import {
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_GO,
  NBD_REP_ACK,
  NBD_REP_FLAG_ERROR,
} from '../../src/nbd/constants.js';
import { decodeOptionReply, encodeInfoRequest, encodeOption, type OptionReply } from '../../src/nbd/handshake-codec.js';
import { encodeRequest } from '../../src/nbd/request-decoder.js';
import { OWN_FEATURES } from '../../src/replication/opening.js';
import {
  PROTOCOL_VERSION_MAX,
  PROTOCOL_VERSION_MIN,
  PacketDecoder,
  encodePacket,
  type Channel,
  type HelloPacket,
  type Packet,
} from '../../src/replication/wire/index.js';

const WAIT_MS = 20_000;
const POLL_MS = 50;

// ---------------------------------------------------------------------------
// the daemon's log

/** One pino line of a daemon log. */
export interface LogRecord {
  level: number;
  msg: string;
  [field: string]: unknown;
}

/** pino's number for warn. */
export const LOG_WARN = 40;

/** Every parsable record of `<run-dir>/<node>.log` (written when `up` started the daemon). */
export async function logRecords(runDir: string, node: string): Promise<LogRecord[]> {
  const text = await fsp.readFile(daemonPaths(runDir, node).log, 'utf8').catch(() => '');
  const out: LogRecord[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as LogRecord);
    } catch {
      // a line being written right now
    }
  }
  return out;
}

/** The log's records once `count` of them match, or fail naming `what` with the log's tail. */
export async function waitForLog(
  runDir: string,
  node: string,
  what: string,
  match: (r: LogRecord) => boolean,
  count = 1,
): Promise<LogRecord[]> {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const all = await logRecords(runDir, node);
    const hits = all.filter(match);
    if (hits.length >= count) return hits;
    if (Date.now() > deadline) {
      const tail = all.slice(-15).map((r) => JSON.stringify(r)).join('\n');
      throw new Error(`${node}'s log never showed ${count} x ${what}; its last lines:\n${tail}`);
    }
    await sleep(POLL_MS);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------
// disks

/** Whether `needle` occurs anywhere in the file (read in 1 MiB pieces that overlap by the needle). */
export async function fileContains(file: string, needle: Buffer): Promise<boolean> {
  const fh = await fsp.open(file, 'r');
  try {
    const piece = Buffer.alloc(1024 * 1024 + needle.length);
    const step = piece.length - needle.length + 1;
    for (let at = 0; ; at += step) {
      const { bytesRead } = await fh.read(piece, 0, piece.length, at);
      if (bytesRead === 0) return false;
      if (piece.subarray(0, bytesRead).includes(needle)) return true;
      if (bytesRead < piece.length) return false;
    }
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------
// certificates

export interface TlsFiles {
  dir: string;
  caCert: string;
  serverKey: string;
  serverCert: string;
  /** A directory as libnbd wants it for `tls-certificates=`: `ca-cert.pem` inside. */
  clientCertDir: string;
}

function openssl(args: string[]): void {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

/**
 * A CA and a server certificate it signed for 127.0.0.1 and localhost
 * (P-256 keys: quick to make), in `dir`.
 */
export async function makeTlsFiles(dir: string, name = 'test'): Promise<TlsFiles> {
  await fsp.mkdir(dir, { recursive: true });
  const f = (n: string): string => path.join(dir, `${name}-${n}`);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(['req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', `/CN=mirrorbd ${name} CA`]);
  openssl(['req', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=localhost']);
  await fsp.writeFile(
    f('server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n',
  );
  openssl([
    'x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-out', f('server.pem'), '-days', '2', '-extfile', f('server.ext'),
  ]);
  const clientCertDir = f('client');
  await fsp.mkdir(clientCertDir, { recursive: true });
  await fsp.copyFile(f('ca.pem'), path.join(clientCertDir, 'ca-cert.pem'));
  return { dir, caCert: f('ca.pem'), serverKey: f('server.key'), serverCert: f('server.pem'), clientCertDir };
}

// ---------------------------------------------------------------------------
// raw connections

/** A TCP connection that keeps what it received: read exactly, or see it close. */
export class RawConnection {
  private chunks: Buffer[] = [];
  private total = 0;
  private wake: (() => void) | null = null;
  private ended = false;
  /** Every byte received, also after reads took them. */
  receivedBytes = 0;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.total += c.length;
      this.receivedBytes += c.length;
      this.notify();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.ended = true;
        this.notify();
        resolve();
      }),
    );
  }

  /** Connects to host:port from `localAddress` (default: the kernel's choice). */
  static open(host: string, port: number, localAddress?: string): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host, port, localAddress });
      s.once('error', reject);
      s.once('connect', () => {
        s.removeListener('error', reject);
        s.setNoDelay(true);
        resolve(new RawConnection(s));
      });
    });
  }

  /** Connects to a unix socket. */
  static openPath(socketPath: string): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ path: socketPath });
      s.once('error', reject);
      s.once('connect', () => {
        s.removeListener('error', reject);
        resolve(new RawConnection(s));
      });
    });
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Bytes received and not read yet. */
  get pending(): number {
    return this.total;
  }

  get isClosed(): boolean {
    return this.ended;
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  /** Exactly n bytes; rejects when the connection ends first or the deadline passes. */
  async read(n: number): Promise<Buffer> {
    const deadline = Date.now() + WAIT_MS;
    while (this.total < n) {
      if (this.ended) throw new Error(`connection closed after ${this.total} of ${n} bytes`);
      if (Date.now() > deadline) throw new Error(`no ${n} bytes within ${WAIT_MS} ms (have ${this.total})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, POLL_MS);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.total = all.length - n;
    return Buffer.from(all.subarray(0, n));
  }

  destroy(): void {
    this.socket.destroy();
  }

  // --- NBD over this connection ---------------------------------------------

  /** Reads the greeting and answers with fixed newstyle and no zeroes. */
  async nbdGreeting(): Promise<Buffer> {
    const g = await this.read(18);
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    this.write(flags);
    return g;
  }

  async nbdOptionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    const len = h.readUInt32BE(16);
    const body = len > 0 ? await this.read(len) : Buffer.alloc(0);
    return decodeOptionReply(Buffer.concat([h, body]))!.reply;
  }

  /** GO for `name`: the replies up to the ACK or an error. */
  async nbdGo(name: string): Promise<OptionReply[]> {
    this.write(encodeOption(NBD_OPT_GO, encodeInfoRequest(name, [])));
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.nbdOptionReply();
      out.push(r);
      if (r.type === NBD_REP_ACK || (r.type & NBD_REP_FLAG_ERROR) !== 0) return out;
    }
  }
}

/** A connection that the server closed without sending anything, from its first byte on. */
export async function closedWithoutAByte(c: RawConnection): Promise<boolean> {
  await c.closed;
  return c.receivedBytes === 0;
}

// ---------------------------------------------------------------------------
// the peer protocol, raw

/** A client of a node's replication port that sends whatever it is told and decodes what comes back. */
export class PeerWire {
  readonly packets: Packet[] = [];
  private readonly decoder = new PacketDecoder({ channel: 'any', phase: 'unchecked' });
  private waiter: (() => void) | null = null;

  private constructor(readonly conn: RawConnection) {
    conn.socket.on('data', (c: Buffer) => {
      this.decoder.push(c);
      for (let p = this.decoder.next(); p !== null; p = this.decoder.next()) this.packets.push(p);
      this.notify();
    });
    void conn.closed.then(() => this.notify());
  }

  static async open(host: string, port: number, localAddress?: string): Promise<PeerWire> {
    return new PeerWire(await RawConnection.open(host, port, localAddress));
  }

  private notify(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** All the packets in one TCP write, as an attacker would pipeline them. */
  send(...ps: Packet[]): void {
    this.conn.write(Buffer.concat(ps.flatMap((p) => encodePacket(p))));
  }

  /** The first received packet that matches, once it is there; fails if the connection ends first. */
  async waitFor(what: string, match: (p: Packet) => boolean): Promise<Packet> {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const p = this.packets.find(match);
      if (p) return p;
      if (this.conn.isClosed) throw new Error(`the connection closed before ${what}; got ${this.kinds().join(', ')}`);
      if (Date.now() > deadline) throw new Error(`no ${what} within ${WAIT_MS} ms; got ${this.kinds().join(', ')}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, POLL_MS);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  kinds(): string[] {
    return this.packets.map((p) => p.kind);
  }

  /** The reason of the DISCONNECT the node sent, if any. */
  disconnectReason(): string | null {
    const d = this.packets.find((p) => p.kind === 'disconnect');
    return d && d.kind === 'disconnect' ? d.reason : null;
  }
}

/** A HELLO as node `nodeId` of resource r0 would send it opening `channel` of session `sessionId`. */
export function helloAs(nodeId: number, sessionId: bigint, channel: Channel = 'data'): HelloPacket {
  return {
    kind: 'hello',
    protocolMin: PROTOCOL_VERSION_MIN,
    protocolMax: PROTOCOL_VERSION_MAX,
    features: OWN_FEATURES,
    sessionId,
    nodeId,
    channel,
    resource: 'r0',
  };
}

// ---------------------------------------------------------------------------
// a well-behaved NBD client, for "it still serves"

/** Writes `data` at `offset` of export r0 (GO, WRITE, one simple reply, DISC); fails on any refusal or error. */
export async function nbdWrite(host: string, port: number, offset: number, data: Buffer, localAddress?: string): Promise<void> {
  const c = await RawConnection.open(host, port, localAddress);
  try {
    await c.nbdGreeting();
    const go = await c.nbdGo('r0');
    if (go.at(-1)!.type !== NBD_REP_ACK) throw new Error(`GO refused: ${go.at(-1)!.data.toString()}`);
    c.write(Buffer.concat([encodeRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset, length: data.length }), data]));
    const reply = await c.read(16);
    if (reply.readUInt32BE(4) !== 0) throw new Error(`WRITE failed with NBD error ${reply.readUInt32BE(4)}`);
    c.write(encodeRequest({ type: NBD_CMD_DISC, cookie: 2n, offset: 0, length: 0 }));
  } finally {
    c.destroy();
  }
}

/** Reads `length` bytes at `offset` of export r0 (GO, READ with simple replies). */
export async function nbdRead(host: string, port: number, offset: number, length: number, localAddress?: string): Promise<Buffer> {
  const c = await RawConnection.open(host, port, localAddress);
  try {
    await c.nbdGreeting();
    const go = await c.nbdGo('r0');
    if (go.at(-1)!.type !== NBD_REP_ACK) throw new Error(`GO refused: ${go.at(-1)!.data.toString()}`);
    c.write(encodeRequest({ type: NBD_CMD_READ, cookie: 1n, offset, length }));
    const reply = await c.read(16);
    if (reply.readUInt32BE(4) !== 0) throw new Error(`READ failed with NBD error ${reply.readUInt32BE(4)}`);
    return await c.read(length);
  } finally {
    c.destroy();
  }
}
