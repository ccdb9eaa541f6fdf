/**
 * The control socket's messages: one JSON object per line each way. Pure: no
 * sockets here. Every request carries an `id` echoed in its response so a
 * client may pipeline; a malformed line gets an ERR_BAD_COMMAND response
 * (id null when none could be read) and the connection stays usable.
 *
 *   -> {"id":1,"cmd":"primary","resource":"r0","force":true}
 *   <- {"id":1,"ok":true,"result":{...}}
 *   <- {"id":1,"ok":false,"error":{"code":"ERR_NOT_UP_TO_DATE","message":"...","details":{}}}
 *
 * `events` answers once and then keeps the connection for the stream: one
 * {"event":{...}} line per state change, in order, until the client closes.
 */
import { MirrorError, type ErrorCode } from '../errors.js';

/** Longest request line accepted; a status request is ~100 bytes. */
export const MAX_CONTROL_LINE_BYTES = 64 * 1024;

export type ControlRequest =
  | { id: number; cmd: 'ping' }
  | { id: number; cmd: 'up'; resource: string; configFile: string }
  | { id: number; cmd: 'down'; resource: string }
  | { id: number; cmd: 'primary'; resource: string; force: boolean }
  | { id: number; cmd: 'secondary'; resource: string; force: boolean }
  | { id: number; cmd: 'connect'; resource: string; discardMyData: boolean }
  | { id: number; cmd: 'verify'; resource: string }
  | { id: number; cmd: 'attach'; resource: string }
  | { id: number; cmd: 'detach'; resource: string }
  | { id: number; cmd: 'invalidate'; resource: string }
  | { id: number; cmd: 'invalidate-remote'; resource: string }
  | { id: number; cmd: 'pause-sync'; resource: string }
  | { id: number; cmd: 'resume-sync'; resource: string }
  | { id: number; cmd: 'outdate'; resource: string }
  | { id: number; cmd: 'resume-io'; resource: string }
  | { id: number; cmd: 'new-current-uuid'; resource: string; clearBitmap: boolean }
  | { id: number; cmd: 'disconnect'; resource: string }
  | { id: number; cmd: 'status'; resource: string | null }
  | { id: number; cmd: 'events'; resource: string | null }
  | { id: number; cmd: 'shutdown' };

export type ControlCommand = ControlRequest['cmd'];

export interface ControlErrorBody {
  code: ErrorCode;
  message: string;
  details: Record<string, unknown>;
}

export type ControlResponse =
  | { id: number | null; ok: true; result: unknown }
  | { id: number | null; ok: false; error: ControlErrorBody };

const SIMPLE_RESOURCE_COMMANDS = [
  'down',
  'connect',
  'disconnect',
  'attach',
  'detach',
  'verify',
  'invalidate',
  'invalidate-remote',
  'pause-sync',
  'resume-sync',
  'outdate',
  'resume-io',
] as const;
const RESOURCE_COMMANDS = new Set<string>(['up', 'primary', 'secondary', 'new-current-uuid', ...SIMPLE_RESOURCE_COMMANDS]);
const FORCE_COMMANDS = new Set(['primary', 'secondary']);
const ALL_COMMANDS = new Set<string>(['ping', 'status', 'events', 'shutdown', ...RESOURCE_COMMANDS]);

export type DecodedRequest = { ok: true; request: ControlRequest } | { ok: false; id: number | null; error: MirrorError };

function bad(id: number | null, message: string): DecodedRequest {
  return { ok: false, id, error: new MirrorError('ERR_BAD_COMMAND', message) };
}

/** Parse and validate one request line (without its newline). */
export function decodeRequest(line: string): DecodedRequest {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return bad(null, 'control request is not valid JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return bad(null, 'control request must be a JSON object');
  const o = raw as Record<string, unknown>;
  const id = typeof o.id === 'number' && Number.isSafeInteger(o.id) ? o.id : null;
  if (id === null) return bad(null, 'control request needs an integer "id"');
  if (typeof o.cmd !== 'string' || !ALL_COMMANDS.has(o.cmd)) {
    return bad(id, `unknown command ${JSON.stringify(o.cmd)}; expected one of ${[...ALL_COMMANDS].join(', ')}`);
  }
  const cmd = o.cmd;
  if (RESOURCE_COMMANDS.has(cmd) && (typeof o.resource !== 'string' || o.resource.length === 0)) {
    return bad(id, `"${cmd}" needs a "resource" name`);
  }
  if (FORCE_COMMANDS.has(cmd) && o.force !== undefined && typeof o.force !== 'boolean') {
    return bad(id, '"force" must be true or false');
  }
  switch (cmd) {
    case 'ping':
    case 'shutdown':
      return { ok: true, request: { id, cmd } };
    case 'up':
      if (typeof o.configFile !== 'string' || o.configFile.length === 0) return bad(id, '"up" needs a "configFile"');
      return { ok: true, request: { id, cmd, resource: o.resource as string, configFile: o.configFile } };
    case 'connect':
      if (o.discardMyData !== undefined && typeof o.discardMyData !== 'boolean') return bad(id, '"discardMyData" must be true or false');
      return { ok: true, request: { id, cmd, resource: o.resource as string, discardMyData: o.discardMyData === true } };
    case 'down':
    case 'disconnect':
    case 'verify':
    case 'attach':
    case 'detach':
    case 'invalidate':
    case 'invalidate-remote':
    case 'pause-sync':
    case 'resume-sync':
    case 'outdate':
    case 'resume-io':
      return { ok: true, request: { id, cmd, resource: o.resource as string } };
    case 'new-current-uuid':
      if (o.clearBitmap !== undefined && typeof o.clearBitmap !== 'boolean') return bad(id, '"clearBitmap" must be true or false');
      return { ok: true, request: { id, cmd, resource: o.resource as string, clearBitmap: o.clearBitmap === true } };
    case 'primary':
    case 'secondary':
      return { ok: true, request: { id, cmd, resource: o.resource as string, force: o.force === true } };
    case 'status':
    case 'events':
      if (o.resource !== undefined && o.resource !== null && typeof o.resource !== 'string') return bad(id, '"resource" must be a string');
      return { ok: true, request: { id, cmd, resource: typeof o.resource === 'string' ? o.resource : null } };
    default:
      return bad(id, `unknown command ${cmd}`);
  }
}

export function encodeResponse(response: ControlResponse): string {
  return `${JSON.stringify(response)}\n`;
}

export function errorResponse(id: number | null, e: unknown): ControlResponse {
  if (e instanceof MirrorError) return { id, ok: false, error: { code: e.code, message: e.message, details: e.details } };
  const message = e instanceof Error ? e.message : String(e);
  return { id, ok: false, error: { code: 'ERR_INTERNAL', message, details: {} } };
}

/**
 * Splits a byte stream into lines, refusing a line longer than the limit
 * before buffering it all (a client that never sends a newline cannot make
 * the daemon grow without bound).
 */
export class LineSplitter {
  private pending = '';

  constructor(private readonly maxLineBytes: number = MAX_CONTROL_LINE_BYTES) {}

  /** Lines completed by this chunk; throws ERR_BAD_COMMAND when a line is too long. */
  push(chunk: string): string[] {
    this.pending += chunk;
    const lines = this.pending.split('\n');
    this.pending = lines.pop() ?? '';
    if (Buffer.byteLength(this.pending) > this.maxLineBytes || lines.some((l) => Buffer.byteLength(l) > this.maxLineBytes)) {
      this.pending = '';
      throw new MirrorError('ERR_BAD_COMMAND', `control request longer than ${this.maxLineBytes} bytes`);
    }
    return lines.filter((l) => l.trim().length > 0);
  }
}
