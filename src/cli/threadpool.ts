/**
 * Imported first by the entry point. Node runs file I/O on libuv's thread
 * pool and reads UV_THREADPOOL_SIZE once, when the pool first starts.
 *
 * The default is one thread per CPU the process may use, at least
 * MIN_THREADPOOL_SIZE. Served from the page cache, a pread/pwrite takes a few
 * microseconds; what costs is waking a worker: with many idle workers every
 * request wakes a fresh one (about 10 µs on a small VM) and on a machine with
 * few cores that worker takes the event loop's core. Measured on 2 cores with
 * 4 KiB requests 32 deep, 16 threads gave 22-29k writes/s and 2 threads
 * 41-44k. A disk that is slow per request (cache misses on a device with a
 * deep queue) wants more threads in flight: set UV_THREADPOOL_SIZE for it.
 */
import { availableParallelism } from 'node:os';

export const MIN_THREADPOOL_SIZE = 2;
export const MAX_THREADPOOL_SIZE = 16;

export function defaultThreadpoolSize(cpus: number = availableParallelism()): number {
  return Math.min(MAX_THREADPOOL_SIZE, Math.max(MIN_THREADPOOL_SIZE, cpus));
}

if (process.env.UV_THREADPOOL_SIZE === undefined) {
  process.env.UV_THREADPOOL_SIZE = String(defaultThreadpoolSize());
}
