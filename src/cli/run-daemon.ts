/**
 * `mirrorbd daemon`: run the node daemon in this process until SIGTERM or
 * SIGINT (or, for daemons `up` started, until the last resource is down).
 */
import type { Config } from '../config/model.js';
import { Daemon } from '../daemon/daemon.js';
import { createLogger } from '../daemon/logger.js';

export async function runDaemon(opts: { config: Config; runDir: string; node: string; exitWhenIdle: boolean }): Promise<void> {
  const log = createLogger(opts.node, opts.config.global.logLevel);
  const daemon = new Daemon({ node: opts.node, runDir: opts.runDir, log, exitWhenIdle: opts.exitWhenIdle });
  const stopped = new Promise<void>((resolve) => daemon.onStopped(resolve));
  await daemon.start();
  const onSignal = (signal: string) => (): void => {
    void daemon.shutdown(`signal ${signal}`);
  };
  process.on('SIGTERM', onSignal('SIGTERM'));
  process.on('SIGINT', onSignal('SIGINT'));
  process.on('SIGHUP', () => log.info('SIGHUP ignored; configuration is read at each up'));
  await stopped;
  log.flush();
  // Everything of ours is closed; do not let a straggling handle (a client
  // socket mid-teardown) keep a stopped daemon alive.
  setImmediate(() => process.exit(0));
}
