/**
 * The CLI's side of the control socket: one request, one response.
 */
import net from 'node:net';
import { MirrorError, type ErrorCode } from '../errors.js';
import type { ControlRequest, ControlResponse } from '../daemon/control-protocol.js';

/** Distributes `Omit` over the request union, so each command keeps its fields. */
type WithoutId<T> = T extends unknown ? Omit<T, 'id'> : never;
export type ControlCall = WithoutId<ControlRequest>;

export const CONTROL_TIMEOUT_MS = 60_000;

let nextId = 1;

/** Send one request; rejects with the daemon's MirrorError, or ERR_DAEMON_UNREACHABLE. */
export function callDaemon(socketPath: string, call: ControlCall, timeoutMs = CONTROL_TIMEOUT_MS): Promise<unknown> {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    let buffered = '';
    let settled = false;
    const finish = (err: Error | null, value?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(
      () => finish(new MirrorError('ERR_DAEMON_UNREACHABLE', `no answer from the daemon at ${socketPath} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    timer.unref();
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${JSON.stringify({ id, ...call })}\n`));
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      const nl = buffered.indexOf('\n');
      if (nl < 0) return;
      let response: ControlResponse;
      try {
        response = JSON.parse(buffered.slice(0, nl)) as ControlResponse;
      } catch {
        finish(new MirrorError('ERR_INTERNAL', 'the daemon sent a malformed response'));
        return;
      }
      if (response.ok) finish(null, response.result);
      else finish(new MirrorError(response.error.code as ErrorCode, response.error.message, response.error.details));
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      finish(
        new MirrorError('ERR_DAEMON_UNREACHABLE', `no daemon at ${socketPath} (${e.code ?? e.message})`, { errno: e.code }),
      );
    });
    socket.on('close', () => finish(new MirrorError('ERR_DAEMON_UNREACHABLE', 'the daemon closed the control connection')));
  });
}

/** True when a daemon answers a ping on the socket. */
export async function daemonAnswers(socketPath: string, timeoutMs = 2000): Promise<boolean> {
  try {
    await callDaemon(socketPath, { cmd: 'ping' }, timeoutMs);
    return true;
  } catch {
    return false;
  }
}
