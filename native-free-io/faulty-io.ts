/**
 * Fault injection for tests: a PositionalIo that behaves like the one it
 * wraps until a chosen number of calls, then fails every further matching
 * call with a chosen errno, as a dying disk would. Never used unless a test
 * asks for it (see docs/storage.md).
 */
import type { PositionalIo } from './positional-io.js';

export type FaultOp = 'read' | 'write' | 'datasync' | 'any';

export interface FaultRule {
  op: FaultOp;
  /** Matching calls that still succeed before the first failure. */
  afterCalls: number;
  /** e.g. 'EIO', 'ENOSPC'. */
  errno: string;
}

export function isFaultRule(v: unknown): v is FaultRule {
  const r = v as Partial<FaultRule> | null;
  return (
    typeof r === 'object' &&
    r !== null &&
    ['read', 'write', 'datasync', 'any'].includes(r.op as string) &&
    Number.isSafeInteger(r.afterCalls) &&
    (r.afterCalls as number) >= 0 &&
    typeof r.errno === 'string' &&
    /^E[A-Z0-9]+$/.test(r.errno)
  );
}

export function faultyIo(base: PositionalIo, rule: FaultRule): PositionalIo {
  let calls = 0;
  const fails = (op: Exclude<FaultOp, 'any'>): boolean => {
    if (rule.op !== 'any' && rule.op !== op) return false;
    calls++;
    return calls > rule.afterCalls;
  };
  const failure = (op: string): Error =>
    Object.assign(new Error(`${rule.errno}: injected ${op} failure`), { code: rule.errno });
  return {
    read: (fd, buffer, at, length, position) => (fails('read') ? Promise.reject(failure('read')) : base.read(fd, buffer, at, length, position)),
    write: (fd, buffer, at, length, position) => (fails('write') ? Promise.reject(failure('write')) : base.write(fd, buffer, at, length, position)),
    datasync: (fd) => (fails('datasync') ? Promise.reject(failure('datasync')) : base.datasync(fd)),
    writev: base.writev
      ? (fd, buffers, position) => (fails('write') ? Promise.reject(failure('writev')) : base.writev!(fd, buffers, position))
      : undefined,
    writevSync: base.writevSync
      ? (fd, buffers, position) => {
          if (fails('write')) throw failure('writev');
          return base.writevSync!(fd, buffers, position);
        }
      : undefined,
  };
}
