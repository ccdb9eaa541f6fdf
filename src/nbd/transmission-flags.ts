/**
 * The 16-bit transmission flags an export is advertised with: only what it
 * really does (clients act on each flag), and SEND_DF only where structured
 * replies make DF meaningful. Pure.
 */
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_ROTATIONAL,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
} from './constants.js';
import type { ExportFeatures } from './export.js';

export function transmissionFlags(f: ExportFeatures, structuredReplies: boolean): number {
  let flags = NBD_FLAG_HAS_FLAGS;
  if (f.readOnly) flags |= NBD_FLAG_READ_ONLY;
  if (f.canFlush) flags |= NBD_FLAG_SEND_FLUSH;
  if (f.canFua) flags |= NBD_FLAG_SEND_FUA;
  if (f.rotational) flags |= NBD_FLAG_ROTATIONAL;
  // Write-type commands are not offered on a read-only export.
  if (!f.readOnly && f.canTrim) flags |= NBD_FLAG_SEND_TRIM;
  if (!f.readOnly && f.canWriteZeroes) {
    flags |= NBD_FLAG_SEND_WRITE_ZEROES;
    // FAST_ZERO is meaningless (and forbidden) without WRITE_ZEROES.
    if (f.canFastZero) flags |= NBD_FLAG_SEND_FAST_ZERO;
  }
  if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
  if (f.canMultiConn) flags |= NBD_FLAG_CAN_MULTI_CONN;
  if (f.canCache) flags |= NBD_FLAG_SEND_CACHE;
  return flags;
}
