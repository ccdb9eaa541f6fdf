/**
 * The checker's defaults, apart from the code that uses them: the CLI shows
 * them in its help without loading the NBD client and the workload.
 */

/** Blocks a new log writes to (64 MiB), or the export's, if smaller. */
export const DEFAULT_BLOCKS = 16_384;
/** Writes in flight. */
export const DEFAULT_QUEUE_DEPTH = 8;
/** A FLUSH after every this many writes. */
export const DEFAULT_FLUSH_EVERY = 64;
