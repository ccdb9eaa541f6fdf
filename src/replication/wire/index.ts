/** The peer wire protocol codec (pure): docs/wire-protocol.md is its specification. */
export * from './constants.js';
export * from './packets.js';
export * from './encode.js';
export * from './decoder.js';
export * from './stream-gate.js';
export * from './auth.js';
export * from './negotiate.js';
export * from './runs.js';
