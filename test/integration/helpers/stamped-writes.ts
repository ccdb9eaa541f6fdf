/**
 * Writes that say which write they are, for the tests that kill a node
 * under load and then look for every acknowledged write: each 4 KiB block
 * holds its block number and a stamp, so a block read back shows whether
 * it holds that very write. The load runs over a raw NBD connection with
 * several requests in flight and ends, keeping what was acknowledged, when
 * the server goes away under it.
 */
import { promises as fsp } from 'node:fs';
import { expect } from 'vitest';
import { NBD_CMD_READ, NBD_CMD_WRITE } from '../../../src/nbd/constants.js';
import { RawClient, type Reply } from './nbd-raw-client.js';

export const BLOCK = 4096;

/** A block that says which write it is: the block number and a stamp, repeated. */
export function stamped(block: number, stamp: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  for (let at = 0; at < BLOCK; at += 8) {
    b.writeUInt32BE(block, at);
    b.writeUInt32BE(stamp, at + 4);
  }
  return b;
}

/** The error of a simple reply (these clients never negotiate structured replies). */
export function errorOf(r: Reply): number {
  if (r.header.kind !== 'simple') throw new Error('expected a simple reply');
  return r.header.error;
}

/** A raw client on export r0 of the NBD listener at host:port. */
export async function openExport(port: number, host = '127.0.0.1'): Promise<RawClient> {
  const c = await RawClient.connect({ kind: 'tcp', host, port });
  await c.negotiate({ name: 'r0' });
  return c;
}

/** Block numbers 0..blocks-1 in a scattered order, each once. */
export function scatteredOrder(blocks: number, first = 0): number[] {
  return Array.from({ length: blocks }, (_, i) => first + ((i * 7919) % blocks));
}

export interface WriteLoadOptions {
  /** The blocks in the order they are written, each once; the i-th write gets stamp i + 1. */
  order: readonly number[];
  /** Requests in flight. */
  queueDepth: number;
  /** No new writes after this long (the ones in flight are still waited for). */
  stopAfterMs?: number;
  /** Runs after each acknowledgement with how many there are (to pull a trigger). */
  onAcked?: (acked: number) => void;
  /** A write answered with an error fails the load (the default), or ends it as a lost connection does. */
  errorReply?: 'fail' | 'end';
}

export interface WriteLoadResult {
  /** Acknowledged writes: block -> stamp. */
  acked: Map<number, number>;
  /** Writes sent, acknowledged or not. */
  sent: number;
}

/** The connection broke: the server died or was cut off under the client. */
const CONNECTION_LOST = /closed|ECONNRESET|EPIPE|timeout|timed out/i;

/**
 * Stamped writes through `c` until every block is written, the time is up,
 * or the server goes away; what was acknowledged is what counts then. The
 * caller owns `c`.
 */
export async function stampedWriteLoad(c: RawClient, opts: WriteLoadOptions): Promise<WriteLoadResult> {
  const { order } = opts;
  const acked = new Map<number, number>();
  const inFlight = new Map<bigint, { block: number; stamp: number }>();
  const started = Date.now();
  let next = 0;
  let cookie = 1n;
  const send = (): void => {
    if (next >= order.length || (opts.stopAfterMs !== undefined && Date.now() - started >= opts.stopAfterMs)) return;
    const block = order[next]!;
    const stamp = next + 1;
    next++;
    inFlight.set(cookie, { block, stamp });
    c.request({ type: NBD_CMD_WRITE, cookie, offset: block * BLOCK, length: BLOCK }, stamped(block, stamp));
    cookie++;
  };
  for (let i = 0; i < opts.queueDepth; i++) send();
  try {
    while (inFlight.size > 0) {
      const r = await c.readReply(10_000);
      const w = inFlight.get(r.header.cookie);
      if (!w) throw new Error(`reply for unknown cookie ${r.header.cookie}`);
      inFlight.delete(r.header.cookie);
      if (errorOf(r) !== 0) {
        if (opts.errorReply === 'end') break;
        throw new Error(`write of block ${w.block} failed with error ${errorOf(r)}`);
      }
      acked.set(w.block, w.stamp);
      opts.onAcked?.(acked.size);
      send();
    }
  } catch (e) {
    if (!CONNECTION_LOST.test((e as Error).message)) throw e;
  }
  return { acked, sent: next };
}

/** Every acknowledged write reads back through `reader`, stamp and all; `where` names the node for the failure. */
export async function expectAckedReadBack(reader: RawClient, acked: Map<number, number>, where: string): Promise<void> {
  let checked = 0;
  let cookie = 1n;
  for (const [block, stamp] of acked) {
    reader.readLengths.set(cookie, BLOCK);
    reader.request({ type: NBD_CMD_READ, cookie, offset: block * BLOCK, length: BLOCK });
    const r = await reader.readReply();
    expect(errorOf(r)).toBe(0);
    if (!r.data.equals(stamped(block, stamp))) throw new Error(`acknowledged write of block ${block} (stamp ${stamp}) is missing on ${where}`);
    checked++;
    cookie++;
  }
  expect(checked).toBe(acked.size);
}

/** Acknowledged writes whose block does not hold the acknowledged data in a disk file. */
export async function ackedMissingFrom(diskPath: string, acked: Map<number, number>): Promise<string[]> {
  const fh = await fsp.open(diskPath, 'r');
  try {
    const buf = Buffer.alloc(BLOCK);
    const bad: string[] = [];
    for (const [block, stamp] of acked) {
      await fh.read(buf, 0, BLOCK, block * BLOCK);
      if (!buf.equals(stamped(block, stamp))) bad.push(`block ${block} (stamp ${stamp})`);
    }
    return bad;
  } finally {
    await fh.close();
  }
}
