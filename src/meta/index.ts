/**
 * On-disk metadata: layout, superblock codec, generation UUIDs, and the store
 * that creates, opens and saves it on files and block devices.
 */
export * from './flags.js';
export * from './layout.js';
export * from './superblock.js';
export * from './uuid.js';
export { formatMd, bytesWithUnit } from './format-md.js';
export { createMd, openMd, DEFAULT_AL_EXTENTS, type CreateMdOptions, type MetaHandle, type OpenMdOptions } from './metadata-store.js';
