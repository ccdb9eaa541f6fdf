/**
 * The one catalog of mirrorbd's errors. Every error a user can see carries a
 * stable `code` (scripts match on it; the message may be reworded). Wire-level
 * numbers (NBD errno values, exit statuses) are data mapped at the edges, not
 * here.
 */

export type ErrorCode =
  // configuration
  | 'ERR_BAD_CONFIG'
  | 'ERR_NO_SUCH_RESOURCE'
  | 'ERR_NODE_NOT_IN_RESOURCE'
  // metadata
  | 'ERR_MD_EXISTS'
  | 'ERR_MD_TOO_SMALL'
  | 'ERR_MD_MISSING'
  | 'ERR_MD_CORRUPT'
  // roles and states
  | 'ERR_ROLE'
  | 'ERR_NOT_UP_TO_DATE'
  | 'ERR_CLIENTS_CONNECTED'
  | 'ERR_ALREADY_UP'
  | 'ERR_NOT_UP'
  | 'ERR_TWO_PRIMARIES'
  | 'ERR_BUSY'
  | 'ERR_NO_QUORUM'
  | 'ERR_FENCING'
  | 'ERR_SPLIT_BRAIN'
  | 'ERR_NOT_CONNECTED'
  // daemon and control plane
  | 'ERR_DAEMON_UNREACHABLE'
  | 'ERR_DAEMON_RUNNING'
  | 'ERR_BAD_COMMAND'
  | 'ERR_IO'
  | 'ERR_ADDRESS_IN_USE'
  | 'ERR_INTERNAL';

export class MirrorError extends Error {
  readonly code: ErrorCode;
  /** Extra machine-readable facts (offsets, paths, node names). */
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.name = 'MirrorError';
    this.code = code;
    this.details = details;
  }

  toJSON(): { code: ErrorCode; message: string; details: Record<string, unknown> } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

export function isMirrorError(e: unknown): e is MirrorError {
  return e instanceof MirrorError;
}

/** A config problem, located at file:line:column. */
export function configError(file: string, line: number, column: number, message: string): MirrorError {
  return new MirrorError('ERR_BAD_CONFIG', `${file}:${line}:${column}: ${message}`, { file, line, column });
}

/** Errors from elsewhere (fs, net) become a message without a stack for users. */
export function describeError(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}
