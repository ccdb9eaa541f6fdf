/**
 * The one table of the config language: which sections exist, where they may
 * appear, which keys each holds, what values a key takes, its default, and
 * the field of the parsed model it fills. The resolver, the formatter and the
 * docs all read this table, so a new setting is a new row here.
 */
import { configError } from '../errors.js';
import type { Token } from './lexer.js';
import {
  DEFAULT_MAX_PAYLOAD_BYTES,
  DEFAULT_RUN_DIR,
  MAX_MAX_PAYLOAD_BYTES,
} from './model.js';
import * as v from './values.js';

export interface KeyRule {
  key: string;
  /** Property of the parsed model it sets (NetOptions.pingIntMs, ...). */
  field: string;
  type: v.ValueType<unknown>;
  /** Several values per statement; the statement may repeat and the values add up. */
  list?: true;
  /** Value when nobody set the key; `undefined` means the field stays absent. */
  default?: unknown;
}

export type OptionSectionName = 'net' | 'disk' | 'nbd' | 'options' | 'handlers';
export type SectionName = 'global' | 'common' | 'resource' | 'on' | OptionSectionName;

export interface SectionRule {
  /** Takes a name before `{` (`resource r0`, `on alpha`). */
  takesName: boolean;
  keys: readonly KeyRule[];
  sections: readonly SectionName[];
  /**
   * Rules across keys, run on the merged values of a resource. `at` tells
   * where a field was set (undefined: it has its default).
   */
  check?: (values: Readonly<Record<string, unknown>>, at: (field: string) => Token | undefined) => void;
}

/** Option sections in the order they are printed; `common` and `resource` hold them all. */
export const OPTION_SECTIONS: readonly OptionSectionName[] = ['net', 'disk', 'nbd', 'options', 'handlers'];

const SECONDS = 1000;

/** DRBD's handler names that mirrorbd runs (each value is a command line). */
export const HANDLER_NAMES = [
  'fence-peer',
  'split-brain',
  'before-promote',
  'after-promote',
  'after-demote',
  'quorum-lost',
  'out-of-sync',
  'before-resync-target',
  'after-resync-target',
] as const;
export type HandlerName = (typeof HANDLER_NAMES)[number];

/** A command line; long enough for any sane script invocation. */
const MAX_COMMAND_CHARS = 1024;

export const TOP_LEVEL: SectionRule = {
  takesName: false,
  keys: [{ key: 'include', field: 'include', type: v.path, list: true }],
  sections: ['global', 'common', 'resource'],
};

export const SECTIONS: Readonly<Record<SectionName, SectionRule>> = {
  global: {
    takesName: false,
    sections: [],
    keys: [
      { key: 'run-dir', field: 'runDir', type: v.path, default: DEFAULT_RUN_DIR },
      {
        key: 'log-level',
        field: 'logLevel',
        type: v.keyword(['trace', 'debug', 'info', 'warn', 'error', 'fatal']),
        default: 'info',
      },
    ],
  },
  common: { takesName: false, keys: [], sections: OPTION_SECTIONS },
  resource: {
    takesName: true,
    // The default meta-disk of the resource's nodes; `on` sections may override it.
    keys: [{ key: 'meta-disk', field: 'metaDisk', type: v.metaDisk, default: 'internal' }],
    sections: [...OPTION_SECTIONS, 'on'],
  },
  on: {
    takesName: true,
    sections: [],
    keys: [
      { key: 'node-id', field: 'nodeId', type: v.integer(0, 31) },
      { key: 'disk', field: 'disk', type: v.diskPath },
      { key: 'meta-disk', field: 'metaDisk', type: v.metaDisk },
      { key: 'address', field: 'address', type: v.optional(v.tcpAddress), default: null },
      { key: 'nbd-address', field: 'nbdAddress', type: v.optional(v.nbdAddress), default: null },
    ],
  },
  net: {
    takesName: false,
    sections: [],
    keys: [
      { key: 'protocol', field: 'protocol', type: v.keyword(['A', 'B', 'C']), default: 'C' },
      { key: 'ping-int', field: 'pingIntMs', type: v.seconds(1 * SECONDS, 120 * SECONDS, false), default: 10 * SECONDS },
      { key: 'ping-timeout', field: 'pingTimeoutMs', type: v.seconds(100, 30 * SECONDS, true), default: 500 },
      { key: 'connect-int', field: 'connectIntMs', type: v.seconds(1 * SECONDS, 120 * SECONDS, false), default: 10 * SECONDS },
      { key: 'timeout', field: 'timeoutMs', type: v.seconds(100, 60 * SECONDS, true), default: 6 * SECONDS },
      { key: 'ko-count', field: 'koCount', type: v.integer(0, 200), default: 7 },
      // DRBD caps the secret at 64 characters; so do we, so configs move both ways.
      { key: 'shared-secret', field: 'sharedSecret', type: v.optional(v.text(1, 64)), default: null },
      { key: 'cram-hmac-alg', field: 'cramHmacAlg', type: v.keyword(['sha256']), default: 'sha256' },
      // A crc32c of every replicated block, checked by the receiver.
      { key: 'data-integrity-alg', field: 'dataIntegrityAlg', type: v.keyword(['none', 'crc32c']), default: 'none' },
      // Online verify compares digests of both sides' blocks.
      { key: 'verify-alg', field: 'verifyAlg', type: v.keyword(['crc32c', 'md5', 'sha1', 'sha256']), default: 'crc32c' },
      // Checksum-based resync: only blocks whose digests differ move ('none': off).
      { key: 'csums-alg', field: 'csumsAlg', type: v.keyword(['none', 'crc32c', 'md5', 'sha1', 'sha256']), default: 'none' },
      // TLS on the replication link: both sides present certificates; with
      // tls-ca each accepts only peers whose certificate that CA signed.
      { key: 'tls', field: 'tls', type: v.yesNo, default: false },
      { key: 'tls-key', field: 'tlsKeyFile', type: v.optional(v.path), default: null },
      { key: 'tls-cert', field: 'tlsCertFile', type: v.optional(v.path), default: null },
      { key: 'tls-ca', field: 'tlsCaFile', type: v.optional(v.path), default: null },
      // The role manager (docs/config.md, "Roles, fencing and split brain").
      { key: 'fencing', field: 'fencing', type: v.keyword(['dont-care', 'resource-only', 'resource-and-stonith']), default: 'dont-care' },
      // Whether discard-node-NAME names a node of the resource is checked once the nodes are known.
      { key: 'after-sb-0pri', field: 'afterSb0pri', type: v.afterSb0pri, default: v.AFTER_SB_DISCONNECT },
      { key: 'after-sb-1pri', field: 'afterSb1pri', type: v.keyword(['disconnect', 'consensus', 'discard-secondary']), default: 'disconnect' },
      // Both nodes wrote as Primary: only the operator may throw one side's writes away.
      { key: 'after-sb-2pri', field: 'afterSb2pri', type: v.keyword(['disconnect']), default: 'disconnect' },
    ],
    check: (values, at) => {
      if (values.tls !== true) return;
      for (const [field, key] of [['tlsKeyFile', 'tls-key'], ['tlsCertFile', 'tls-cert']] as const) {
        if (values[field] === null) {
          const tok = at('tls')!;
          throw configError(tok.file, tok.line, tok.column, `found 'tls yes' without '${key}', expected tls-key and tls-cert for TLS between peers`);
        }
      }
    },
  },
  disk: {
    takesName: false,
    sections: [],
    keys: [
      // Bare numbers are KiB/s, as in DRBD.
      { key: 'resync-rate', field: 'resyncRateBytesPerSec', type: v.size(1024, 1024 ** 4, 1024), default: 100 * 1024 ** 2 },
      // The 32 KiB activity-log area holds at most 6216 (docs/metadata.md).
      { key: 'al-extents', field: 'alExtents', type: v.integer(7, 6216), default: 1237 },
      { key: 'on-io-error', field: 'onIoError', type: v.keyword(['detach', 'pass_on']), default: 'detach' },
      // The dynamic resync controller (DRBD's c-*): 0 keeps the fixed resync-rate.
      { key: 'c-plan-ahead', field: 'cPlanAheadMs', type: v.seconds(0, 30 * SECONDS, true), default: 0 },
      { key: 'c-delay-target', field: 'cDelayTargetMs', type: v.seconds(10, 10 * SECONDS, true), default: 100 },
      { key: 'c-min-rate', field: 'cMinRateBytesPerSec', type: v.size(1024, 1024 ** 4, 1024), default: 4 * 1024 ** 2 },
      { key: 'c-max-rate', field: 'cMaxRateBytesPerSec', type: v.size(1024, 1024 ** 4, 1024), default: 1024 ** 3 },
    ],
  },
  nbd: {
    takesName: false,
    sections: [],
    keys: [
      { key: 'tls', field: 'tls', type: v.keyword(['off', 'optional', 'required']), default: 'off' },
      { key: 'tls-key', field: 'tlsKeyFile', type: v.optional(v.path), default: null },
      { key: 'tls-cert', field: 'tlsCertFile', type: v.optional(v.path), default: null },
      { key: 'tls-ca', field: 'tlsCaFile', type: v.optional(v.path), default: null },
      { key: 'allow', field: 'allow', type: v.addressOrCidr, list: true, default: [] },
      {
        key: 'max-payload',
        field: 'maxPayloadBytes',
        type: v.size(64 * 1024, MAX_MAX_PAYLOAD_BYTES, 1),
        default: DEFAULT_MAX_PAYLOAD_BYTES,
      },
      // NBD carries the description in a reply of at most 4 KiB.
      { key: 'description', field: 'description', type: v.optional(v.text(0, 4096)), default: null },
    ],
    check: (values, at) => {
      if (values.tls === 'off') return;
      for (const [field, key] of [['tlsKeyFile', 'tls-key'], ['tlsCertFile', 'tls-cert']] as const) {
        if (values[field] === null) {
          const tok = at('tls')!;
          throw configError(tok.file, tok.line, tok.column, `found 'tls ${String(values.tls)}' without '${key}', expected tls-key and tls-cert when tls is not off`);
        }
      }
    },
  },
  options: {
    takesName: false,
    sections: [],
    keys: [
      { key: 'quorum', field: 'quorum', type: v.quorum, default: 'off' },
      { key: 'on-no-quorum', field: 'onNoQuorum', type: v.keyword(['suspend-io', 'io-error']), default: 'suspend-io' },
      { key: 'auto-promote', field: 'autoPromote', type: v.yesNo, default: true },
      // A resource option in DRBD 9 as well (in tenths of a second there; seconds here, like every duration).
      { key: 'twopc-timeout', field: 'twopcTimeoutMs', type: v.seconds(1 * SECONDS, 600 * SECONDS, true), default: 30 * SECONDS },
      // DRBD has no such limit; a hung notify script must not hold up the handlers queued behind it.
      { key: 'handler-timeout', field: 'handlerTimeoutMs', type: v.seconds(100, 3600 * SECONDS, true), default: 60 * SECONDS },
    ],
  },
  handlers: {
    takesName: false,
    sections: [],
    keys: HANDLER_NAMES.map((h) => ({ key: h, field: h, type: v.text(1, MAX_COMMAND_CHARS) })),
  },
};

/** The defaults of a section, as a fresh object (lists are copied, never shared). */
export function sectionDefaults(rule: SectionRule): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of rule.keys) {
    if (k.default !== undefined) out[k.field] = Array.isArray(k.default) ? [...k.default] : k.default;
  }
  return out;
}
