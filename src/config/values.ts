/**
 * The kinds of values a config key can take (sizes, durations, addresses,
 * keywords...). Each kind parses one token, refusing it with
 * "found X, expected Y" at the token's position, and prints a value back in a
 * form it parses to the same thing. Pure.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { configError } from '../errors.js';
import type { AfterSb0pri, NbdAddress, QuorumSetting, TcpAddress } from './model.js';
import { describeToken, type Token } from './lexer.js';

export interface ValueType<T> {
  /** What a good value looks like, for messages and docs. */
  readonly expected: string;
  parse(tok: Token): T;
  /** The value as config text (unquoted; the formatter quotes), or null: leave the key out. */
  format(value: T): string | null;
}

export function bad(tok: Token, expected: string): never {
  throw configError(tok.file, tok.line, tok.column, `found ${describeToken(tok)}, expected ${expected}`);
}

/** More digits than this cannot be a sane count and would lose precision. */
const MAX_DIGITS = 15;

export function keyword<const K extends string>(choices: readonly K[]): ValueType<K> {
  const last = choices[choices.length - 1]!;
  const expected = choices.length === 1 ? last : choices.length <= 3 ? `${choices.slice(0, -1).join(', ')} or ${last}` : `one of ${choices.join(', ')}`;
  return {
    expected,
    parse: (tok) => ((choices as readonly string[]).includes(tok.text) ? (tok.text as K) : bad(tok, expected)),
    format: (v) => v,
  };
}

export const yesNo: ValueType<boolean> = {
  expected: 'yes or no',
  parse: (tok) => (tok.text === 'yes' ? true : tok.text === 'no' ? false : bad(tok, 'yes or no')),
  format: (v) => (v ? 'yes' : 'no'),
};

function parseCount(tok: Token, expected: string): number {
  if (!/^[0-9]+$/.test(tok.text) || tok.text.length > MAX_DIGITS) bad(tok, expected);
  return Number(tok.text);
}

export function integer(min: number, max: number): ValueType<number> {
  const expected = `a whole number from ${min} to ${max}`;
  return {
    expected,
    parse: (tok) => {
      const n = parseCount(tok, expected);
      return n >= min && n <= max ? n : bad(tok, expected);
    },
    format: (v) => String(v),
  };
}

const KIB = 1024;
/** Size suffixes (1024-based, as DRBD), largest first so printing picks the shortest exact form. */
const SIZE_UNITS: ReadonlyArray<readonly [string, number]> = [
  ['G', KIB ** 3],
  ['M', KIB ** 2],
  ['K', KIB],
];

/** Sizes print with the largest suffix that divides them exactly. */
function formatSize(bytes: number): string {
  for (const [suffix, factor] of SIZE_UNITS) {
    if (bytes % factor === 0) return `${bytes / factor}${suffix}`;
  }
  return String(bytes);
}

/**
 * A size in bytes. `unitBytes` is what a bare number counts: 1 for most
 * sizes, 1024 for resync-rate, whose bare numbers DRBD reads as KiB.
 */
export function size(min: number, max: number, unitBytes: 1 | 1024): ValueType<number> {
  const bare = unitBytes === 1 ? 'bytes' : 'KiB';
  const expected = `a size from ${formatSize(min)} to ${formatSize(max)} (a number of ${bare}, or with suffix K, M or G)`;
  return {
    expected,
    parse: (tok) => {
      const m = /^([0-9]+)([KkMmGg]?)$/.exec(tok.text);
      if (m === null || m[1]!.length > MAX_DIGITS) return bad(tok, expected);
      const suffix = m[2]!.toUpperCase();
      const factor = suffix === '' ? unitBytes : SIZE_UNITS.find(([s]) => s === suffix)![1];
      const bytes = Number(m[1]) * factor;
      return Number.isSafeInteger(bytes) && bytes >= min && bytes <= max ? bytes : bad(tok, expected);
    },
    format: formatSize,
  };
}

/**
 * A duration written in seconds, stored in milliseconds. With `decimals` up to
 * three digits after the point are allowed (0.5 = 500 ms), which is exactly
 * what milliseconds can hold, so printing never rounds.
 */
export function seconds(minMs: number, maxMs: number, decimals: boolean): ValueType<number> {
  const expected = `${decimals ? 'seconds (up to 3 decimals)' : 'whole seconds'} from ${minMs / 1000} to ${maxMs / 1000}`;
  const shape = decimals ? /^([0-9]+)(?:\.([0-9]{1,3}))?$/ : /^([0-9]+)()$/;
  return {
    expected,
    parse: (tok) => {
      const m = shape.exec(tok.text);
      if (m === null || m[1]!.length > MAX_DIGITS) return bad(tok, expected);
      const ms = Number(m[1]) * 1000 + Number((m[2] ?? '').padEnd(3, '0'));
      return ms >= minMs && ms <= maxMs ? ms : bad(tok, expected);
    },
    format: (ms) => String(ms / 1000),
  };
}

/** Free text (commands, descriptions, secrets). */
export function text(minChars: number, maxChars: number): ValueType<string> {
  const expected = minChars > 0 ? `text of ${minChars} to ${maxChars} characters` : `text of at most ${maxChars} characters`;
  return {
    expected,
    parse: (tok) => (tok.text.length >= minChars && tok.text.length <= maxChars ? tok.text : bad(tok, expected)),
    format: (v) => v,
  };
}

export const path: ValueType<string> = {
  expected: 'a path',
  parse: (tok) => (tok.text.length > 0 ? tok.text : bad(tok, 'a path')),
  format: (v) => v,
};

/** A value that may be absent: absent prints nothing. */
export function optional<T>(type: ValueType<T>): ValueType<T | null> {
  return { expected: type.expected, parse: (tok) => type.parse(tok), format: (v) => (v === null ? null : type.format(v)) };
}

function isPlainName(text: string): boolean {
  return /^[A-Za-z0-9_.-]{1,64}$/.test(text) && !/^\.+$/.test(text);
}

/** Resource and node names end up in file names (pid files, sockets), so they are plain. */
export const name: ValueType<string> = {
  expected: 'a name of letters, digits, _ . and - (at most 64, not only dots)',
  parse: (tok) => (isPlainName(tok.text) ? tok.text : bad(tok, name.expected)),
  format: (v) => v,
};

export const metaDisk: ValueType<string> = {
  expected: "'internal' or the path of a metadata device",
  parse: (tok) => (tok.text.length > 0 ? tok.text : bad(tok, metaDisk.expected)),
  format: (v) => v,
};

/** `disk none;` marks a diskless node (null). */
export const diskPath: ValueType<string | null> = {
  expected: "the path of the backing disk, or 'none'",
  parse: (tok) => (tok.text === 'none' ? null : tok.text.length > 0 ? tok.text : bad(tok, diskPath.expected)),
  format: (v) => v ?? 'none',
};

export const quorum: ValueType<QuorumSetting> = {
  expected: 'off, majority, all or a number of votes from 1 to 32',
  parse: (tok) => {
    if (tok.text === 'off' || tok.text === 'majority' || tok.text === 'all') return tok.text;
    const n = /^[0-9]{1,2}$/.test(tok.text) ? Number(tok.text) : 0;
    return n >= 1 && n <= 32 ? n : bad(tok, quorum.expected);
  },
  format: (v) => String(v),
};

const DISCARD_NODE = 'discard-node-';
const AFTER_SB_0PRI_WORDS = ['disconnect', 'discard-younger-primary', 'discard-older-primary', 'discard-zero-changes', 'discard-least-changes'] as const;

/** The default: values are frozen, so resources may share one object. */
export const AFTER_SB_DISCONNECT: AfterSb0pri = Object.freeze({ policy: 'disconnect' });

/**
 * `after-sb-0pri`: a policy word, or `discard-node-NAME`. Only the shape of
 * NAME is checked here; that it is a node of the resource is checked when
 * the resource's nodes are known.
 */
export const afterSb0pri: ValueType<AfterSb0pri> = {
  expected: `one of ${AFTER_SB_0PRI_WORDS.join(', ')}, or ${DISCARD_NODE}NODE`,
  parse: (tok) => {
    if ((AFTER_SB_0PRI_WORDS as readonly string[]).includes(tok.text)) {
      return Object.freeze({ policy: tok.text as (typeof AFTER_SB_0PRI_WORDS)[number] });
    }
    if (tok.text.startsWith(DISCARD_NODE)) {
      const node = tok.text.slice(DISCARD_NODE.length);
      if (isPlainName(node)) return Object.freeze({ policy: 'discard-node', node });
    }
    return bad(tok, afterSb0pri.expected);
  },
  format: (v) => (v.policy === 'discard-node' ? `${DISCARD_NODE}${v.node}` : v.policy),
};

// --- addresses -------------------------------------------------------------

const ADDRESS_EXPECTED = 'an address HOST:PORT (IPv4, host name, or IPv6 in brackets as in [::1]:7789)';
const PORT_EXPECTED = 'a port from 1 to 65535';
const HOST_LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;

function isHostName(host: string): boolean {
  const labels = host.split('.');
  // An all-digit last label would make 192.0.2.300 a "host name".
  return host.length <= 253 && labels.every((l) => HOST_LABEL.test(l)) && !/^[0-9]+$/.test(labels[labels.length - 1]!);
}

function parsePort(tok: Token, digits: string): number {
  const port = /^[0-9]{1,5}$/.test(digits) ? Number(digits) : 0;
  return port >= 1 && port <= 65535 ? port : bad(tok, `${PORT_EXPECTED} in ${ADDRESS_EXPECTED}`);
}

function parseTcp(tok: Token, textValue: string): TcpAddress {
  if (textValue.startsWith('[')) {
    const close = textValue.indexOf(']');
    const host = close > 0 ? textValue.slice(1, close) : '';
    if (!isIPv6(host) || textValue[close + 1] !== ':') return bad(tok, ADDRESS_EXPECTED);
    return { host, port: parsePort(tok, textValue.slice(close + 2)) };
  }
  const colon = textValue.lastIndexOf(':');
  if (colon < 0) return bad(tok, ADDRESS_EXPECTED);
  const host = textValue.slice(0, colon);
  if (host.includes(':')) return bad(tok, `${ADDRESS_EXPECTED}; an IPv6 address needs brackets`);
  if (!isIPv4(host) && !isHostName(host)) return bad(tok, ADDRESS_EXPECTED);
  return { host, port: parsePort(tok, textValue.slice(colon + 1)) };
}

export function formatTcp(a: TcpAddress): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

export const tcpAddress: ValueType<TcpAddress> = {
  expected: ADDRESS_EXPECTED,
  parse: (tok) => parseTcp(tok, tok.text),
  format: formatTcp,
};

/** Linux's sun_path holds 108 bytes including the terminating NUL. */
const MAX_UNIX_PATH_BYTES = 107;

export const nbdAddress: ValueType<NbdAddress> = {
  expected: `${ADDRESS_EXPECTED}, or unix:PATH`,
  parse: (tok) => {
    if (tok.text.startsWith('unix:')) {
      const p = tok.text.slice('unix:'.length);
      const bytes = Buffer.byteLength(p);
      return bytes > 0 && bytes <= MAX_UNIX_PATH_BYTES
        ? { kind: 'unix', path: p }
        : bad(tok, `unix:PATH with a path of 1 to ${MAX_UNIX_PATH_BYTES} bytes`);
    }
    return { kind: 'tcp', ...parseTcp(tok, tok.text) };
  },
  format: (a) => (a.kind === 'unix' ? `unix:${a.path}` : formatTcp(a)),
};

const CIDR_EXPECTED = 'an IPv4 or IPv6 address, or a CIDR such as 192.0.2.0/24 or 2001:db8::/32';

export const addressOrCidr: ValueType<string> = {
  expected: CIDR_EXPECTED,
  parse: (tok) => {
    const [addr = '', prefix, extra] = tok.text.split('/');
    const maxPrefix = isIPv4(addr) ? 32 : isIPv6(addr) ? 128 : -1;
    if (maxPrefix < 0 || extra !== undefined) return bad(tok, CIDR_EXPECTED);
    if (prefix === undefined) return tok.text;
    const bits = /^[0-9]{1,3}$/.test(prefix) ? Number(prefix) : -1;
    return bits >= 0 && bits <= maxPrefix ? tok.text : bad(tok, `a prefix length from 0 to ${maxPrefix} in ${CIDR_EXPECTED}`);
  },
  format: (v) => v,
};
