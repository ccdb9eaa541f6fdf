/**
 * On-disk metadata: layout, superblock codec, generation UUIDs, the store
 * that creates, opens and saves it on files and block devices, the per-peer
 * bitmaps (in memory, run-length coded for the wire, on disk) and the
 * activity log.
 */
export * from './flags.js';
export * from './layout.js';
export * from './superblock.js';
export * from './uuid.js';
export { formatMd, bytesWithUnit } from './format-md.js';
export { createMd, openMd, DEFAULT_AL_EXTENTS, type CreateMdOptions, type MetaHandle, type OpenMdOptions } from './metadata-store.js';
export * from './bitmap.js';
export * from './bitmap-rle.js';
export { BitmapStore } from './bitmap-store.js';
export * from './al-transaction.js';
export { replayAlRing, type AlRecovery } from './al-replay.js';
export { AlPlanner, type AlPlan } from './al-planner.js';
export { ActivityLog, type ActivityLogOptions, type ActivityLogStats, type AlJournal } from './activity-log.js';
export { metaAlJournal, readAlRing, recoverActivityLog } from './al-journal.js';
export { fileMetaIo, type MetaIo } from './meta-io.js';
