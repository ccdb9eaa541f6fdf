/**
 * Maps the errno string carried by an export's error (Node's style: 'EIO',
 * 'ENOSPC', ...) to the NBD error number sent on the wire. The NBD protocol
 * knows only a handful of values; anything else becomes EIO, which every
 * client treats as a plain I/O error.
 */
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
} from './constants.js';

const BY_NAME: ReadonlyMap<string, number> = new Map([
  ['EPERM', NBD_EPERM],
  // A read-only filesystem or device is "not permitted" to an NBD client.
  ['EROFS', NBD_EPERM],
  ['EACCES', NBD_EPERM],
  ['EIO', NBD_EIO],
  ['ENOMEM', NBD_ENOMEM],
  ['EINVAL', NBD_EINVAL],
  ['ENOSPC', NBD_ENOSPC],
  // The spec asks servers to report quota and file-size limits as ENOSPC.
  ['EDQUOT', NBD_ENOSPC],
  ['EFBIG', NBD_ENOSPC],
  ['EOVERFLOW', NBD_EOVERFLOW],
  ['ENOTSUP', NBD_ENOTSUP],
  ['EOPNOTSUPP', NBD_ENOTSUP],
  ['ESHUTDOWN', NBD_ESHUTDOWN],
]);

/** The NBD error number for an errno name; EIO for anything unknown. */
export function nbdErrnoFromName(name: string | undefined | null): number {
  if (!name) return NBD_EIO;
  return BY_NAME.get(name) ?? NBD_EIO;
}

/**
 * The NBD error number for whatever an export rejected with: its `errno`
 * property when that is a string (our contract), else its `code` (Node's fs
 * errors), else EIO.
 */
export function nbdErrnoFromError(err: unknown): number {
  if (err !== null && typeof err === 'object') {
    const e = err as { errno?: unknown; code?: unknown };
    if (typeof e.errno === 'string') return nbdErrnoFromName(e.errno);
    if (typeof e.code === 'string') return nbdErrnoFromName(e.code);
  }
  return NBD_EIO;
}

const NAMES: ReadonlyMap<number, string> = new Map([
  [NBD_EPERM, 'EPERM'],
  [NBD_EIO, 'EIO'],
  [NBD_ENOMEM, 'ENOMEM'],
  [NBD_EINVAL, 'EINVAL'],
  [NBD_ENOSPC, 'ENOSPC'],
  [NBD_EOVERFLOW, 'EOVERFLOW'],
  [NBD_ENOTSUP, 'ENOTSUP'],
  [NBD_ESHUTDOWN, 'ESHUTDOWN'],
]);

/** Readable name of an NBD error number, for logs and messages. */
export function nbdErrnoName(value: number): string {
  return NAMES.get(value) ?? `error ${value}`;
}
