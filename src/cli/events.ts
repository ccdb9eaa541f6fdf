/**
 * `mirrorbd events`: follow the daemon's ordered stream of state changes
 * until interrupted. --json prints each event as one JSON line (stable,
 * docs/events.md); otherwise one readable line per event.
 */
import net from 'node:net';
import { MirrorError } from '../errors.js';
import type { MirrorEvent } from '../daemon/event-bus.js';

export function formatEvent(e: MirrorEvent): string {
  const { seq, timeMs, resource, type, ...rest } = e;
  const fields = Object.entries(rest)
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k}:${typeof v === 'object' ? JSON.stringify(v) : String(v)}`);
  return [String(seq), new Date(timeMs).toISOString(), resource, type, ...fields].join(' ');
}

export function followEvents(socketPath: string, resource: string | null, json: boolean, out: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    let buffered = '';
    let subscribed = false;
    const stop = (): void => {
      socket.destroy();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${JSON.stringify({ id: 1, cmd: 'events', resource })}\n`));
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        const msg = JSON.parse(line) as { event?: MirrorEvent; ok?: boolean; error?: { code: string; message: string } };
        if (msg.event) {
          if (resource === null || msg.event.resource === resource) out(json ? JSON.stringify(msg.event) : formatEvent(msg.event));
        } else if (msg.ok === false) {
          socket.destroy();
          reject(new MirrorError('ERR_DAEMON_UNREACHABLE', msg.error?.message ?? 'event stream refused'));
          return;
        } else {
          subscribed = true;
          // On stderr, so stdout stays the stream: scripts (and tests) know
          // from here on that no event is missed.
          process.stderr.write(`following events${resource === null ? '' : ` of ${resource}`} (Ctrl-C to stop)\n`);
        }
      }
    });
    socket.on('error', (e: NodeJS.ErrnoException) => reject(new MirrorError('ERR_DAEMON_UNREACHABLE', `no daemon at ${socketPath} (${e.code ?? e.message})`)));
    socket.on('close', () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      if (subscribed || socket.destroyed) resolve();
    });
  });
}
