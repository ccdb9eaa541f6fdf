/**
 * The checker's defaults, apart from the code that uses them: the CLI shows
 * them in its help without loading the NBD client and the workload.
 */

/** Blocks a new log covers unless told otherwise, or the export's, if fewer (64 MiB: blocks get rewritten, verify stays quick). */
export const DEFAULT_BLOCKS = 16_384;
/** Writes in flight. */
export const DEFAULT_QUEUE_DEPTH = 8;
/** A FLUSH after every this many writes. */
export const DEFAULT_FLUSH_EVERY = 64;
