/** Every fuzz target, by name: what the bounded CI test and the long runner iterate over. */
import { fuzzConfig } from './config.js';
import type { FuzzTarget } from './fuzz-kit.js';
import { fuzzAlTransaction } from './meta-al-transaction.js';
import { fuzzBitmapRle } from './meta-bitmap-rle.js';
import { fuzzSuperblock } from './meta-superblock.js';
import { fuzzNbdHandshake } from './nbd-handshake.js';
import { fuzzNbdRequests } from './nbd-request.js';
import { fuzzPeerPackets } from './peer-packet.js';

export interface NamedTarget {
  name: string;
  run: FuzzTarget;
  /** Inputs for the bounded CI run (sized so all targets together take a few seconds). */
  ciIterations: number;
}

export const FUZZ_TARGETS: readonly NamedTarget[] = [
  { name: 'nbd-handshake', run: fuzzNbdHandshake, ciIterations: 4000 },
  { name: 'nbd-request', run: fuzzNbdRequests, ciIterations: 3000 },
  { name: 'peer-packet', run: fuzzPeerPackets, ciIterations: 3000 },
  { name: 'config', run: fuzzConfig, ciIterations: 400 },
  { name: 'meta-superblock', run: fuzzSuperblock, ciIterations: 4000 },
  { name: 'meta-bitmap-rle', run: fuzzBitmapRle, ciIterations: 1500 },
  { name: 'meta-al-transaction', run: fuzzAlTransaction, ciIterations: 4000 },
];
