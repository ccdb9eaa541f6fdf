/**
 * mulberry32: a small, seedable PRNG for fuzz and randomized tests, so a
 * failing input can be replayed from its seed. Returns numbers in [0, 1).
 * The checker's own (`mirrorbd check` draws its blocks with it).
 */
export { seededRandom } from '../../src/check/workload.js';
