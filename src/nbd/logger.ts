/**
 * The logging the NBD server needs: a pino-compatible subset, so the daemon
 * passes its pino logger and tests pass nothing.
 */
export type NbdLogFn = (objOrMsg: object | string, msg?: string) => void;

export interface NbdLogger {
  trace: NbdLogFn;
  debug: NbdLogFn;
  info: NbdLogFn;
  warn: NbdLogFn;
  error: NbdLogFn;
  child(bindings: Record<string, unknown>): NbdLogger;
}

const noop: NbdLogFn = () => {};

/** A logger that drops everything. */
export const silentLogger: NbdLogger = {
  trace: noop,
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  child: () => silentLogger,
};
