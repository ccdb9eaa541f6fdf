/**
 * Imported first by the entry point. Node runs file I/O on libuv's thread
 * pool, 4 threads unless UV_THREADPOOL_SIZE says otherwise, and reads the
 * variable once, when the pool first starts; a block device served to
 * clients with deep queues needs more I/O in flight than 4.
 */
export const DEFAULT_THREADPOOL_SIZE = 16;

if (process.env.UV_THREADPOOL_SIZE === undefined) {
  process.env.UV_THREADPOOL_SIZE = String(DEFAULT_THREADPOOL_SIZE);
}
