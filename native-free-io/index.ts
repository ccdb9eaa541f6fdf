/** The storage layer's public API: the contract and the stores that keep it. */
export { BlockStoreError } from './block-store.js';
export type { BlockStore, BlockStoreCapabilities, ByteRange, Extent, WriteZeroesOptions } from './block-store.js';
export { FileStore, DEFAULT_MAX_IN_FLIGHT, MAX_CHUNK_BYTES } from './file-store.js';
export type { FileStoreOptions } from './file-store.js';
export { MemoryStore, MEMORY_CHUNK_BYTES } from './memory-store.js';
export type { MemoryStoreOp } from './memory-store.js';
export { nodePositionalIo } from './positional-io.js';
export type { PositionalIo } from './positional-io.js';
export { sizeOf } from './device-size.js';
export type { OpenFile, SizedFile } from './device-size.js';
export { checkRange, isByteCount } from './range-check.js';
export { checkRuns, piecesLength, piecesOfRuns, writePieces } from './scattered.js';
export { faultyIo, isFaultRule } from './faulty-io.js';
export type { FaultOp, FaultRule } from './faulty-io.js';
