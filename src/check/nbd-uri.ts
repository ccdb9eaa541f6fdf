/**
 * NBD URIs as the NBD project's doc/uri.md writes them, the subset the
 * checker speaks: `nbd://HOST[:PORT]/EXPORT` (TCP, port 10809 by default)
 * and `nbd+unix:///EXPORT?socket=PATH`. The export name is the path without
 * its leading slash, percent-decoded. TLS (`nbds://`) is not supported.
 * Pure: a string in, an address out.
 */
import type { NbdAddress } from '../config/model.js';

export const NBD_DEFAULT_PORT = 10809;

export interface NbdUri {
  address: NbdAddress;
  exportName: string;
  /** The URI as given, for messages. */
  text: string;
}

export type NbdUriResult = { ok: true; uri: NbdUri } | { ok: false; reason: string };

/** True when `s` looks like an NBD URI at all (as opposed to a file path). */
export function looksLikeNbdUri(s: string): boolean {
  return /^nbds?(\+[a-z]+)?:\/\//i.test(s);
}

export function parseNbdUri(text: string): NbdUriResult {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    return { ok: false, reason: `not a URI: ${text}` };
  }
  let exportName: string;
  try {
    exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  } catch {
    return { ok: false, reason: `bad percent-encoding in the export name: ${u.pathname}` };
  }
  switch (u.protocol) {
    case 'nbd:': {
      if (u.hostname === '') return { ok: false, reason: `no host in ${text}` };
      if (u.search !== '') return { ok: false, reason: `unsupported query in ${text}` };
      const port = u.port === '' ? NBD_DEFAULT_PORT : Number(u.port);
      // URL keeps IPv6 literals bracketed; net.connect wants them bare.
      const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
      return { ok: true, uri: { address: { kind: 'tcp', host, port }, exportName, text } };
    }
    case 'nbd+unix:': {
      if (u.hostname !== '') return { ok: false, reason: `nbd+unix URIs have no host (nbd+unix:///EXPORT?socket=PATH): ${text}` };
      const socket = u.searchParams.get('socket');
      if (socket === null || socket === '') return { ok: false, reason: `no ?socket=PATH in ${text}` };
      return { ok: true, uri: { address: { kind: 'unix', path: socket }, exportName, text } };
    }
    case 'nbds:':
    case 'nbds+unix:':
      return { ok: false, reason: `TLS (${u.protocol.slice(0, -1)}) is not supported by the checker; use nbd:// or nbd+unix://` };
    default:
      return { ok: false, reason: `unsupported scheme ${u.protocol.slice(0, -1)} (nbd:// or nbd+unix://)` };
  }
}
