/**
 * The daemon's pino logger: JSON lines on stdout (a terminal, systemd's
 * journal, or `<run-dir>/<node>.log` when `up` started the daemon).
 */
import pino, { type Logger } from 'pino';
import type { GlobalOptions } from '../config/model.js';

export function createLogger(node: string, level: GlobalOptions['logLevel']): Logger {
  return pino({ level, base: { node, pid: process.pid } });
}
