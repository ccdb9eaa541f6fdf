/**
 * A real mirrorbd daemon (single node, Primary) under attack by several
 * concurrent fuzzing clients for a bounded time, while one well-behaved
 * client keeps writing and reading back its own region. The attackers send
 * mutated option haggling, mutated transmission requests after a real GO,
 * slow drips, half-closed sockets and huge lengths. Afterwards: the good
 * client never saw an error or a wrong byte, the daemon is alive and still
 * serves, and its memory stayed bounded.
 *
 * Attackers never write into the good client's region: their write-like
 * requests (WRITE, TRIM, WRITE_ZEROES) are moved above it before sending,
 * without changing the framing (requestHeaderPositions).
 */
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_GO,
  NBD_OPTS_MAGIC,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
} from '../../src/nbd/constants.js';
import { encodeInfoRequest, encodeOption } from '../../src/nbd/handshake-codec.js';
import { encodeRequest } from '../../src/nbd/request-decoder.js';
import { Rng } from '../fuzz/fuzz-kit.js';
import { randomStream as fuzzOptionStream } from '../fuzz/nbd-handshake.js';
import { fuzzRequestStream, requestHeaderPositions } from '../fuzz/nbd-request.js';
import { startPrimary, type StartedNode } from '../helpers/single-node.js';
import { RawClient } from './helpers/nbd-raw-client.js';

const ATTACK_MS = 5000;
const SEED = 0x6d62_f022;
/** The good client owns [0, GOOD_REGION); attackers' writes land above it. */
const GOOD_REGION = 8 * 1024 * 1024;
const RSS_GROWTH_LIMIT = 256 * 1024 * 1024;
const ATTACKERS = 6;

let node: StartedNode;
let pid: number;
/** Attackers that got through a real GO before fuzzing the transmission phase. */
let reachedTransmission = 0;

beforeAll(async () => {
  node = await startPrimary({ sizeBytes: 64 * 1024 * 1024 });
  const p = await node.daemonPid();
  if (p === null) throw new Error('no daemon pid');
  pid = p;
}, 60_000);

afterAll(async () => {
  await node?.stop();
});

async function rssBytes(p: number): Promise<number> {
  const status = await fsp.readFile(`/proc/${p}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (m === null) throw new Error('no VmRSS');
  return Number(m[1]) * 1024;
}

function alive(p: number): boolean {
  try {
    process.kill(p, 0);
    return true;
  } catch {
    return false;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A raw socket that ignores whatever the server says and how it ends. */
function rawSocket(): Promise<net.Socket> {
  return new Promise((resolve) => {
    const s = net.connect({ host: node.host, port: node.port });
    s.on('error', () => {});
    s.on('data', () => {});
    s.once('connect', () => resolve(s));
    s.once('close', () => resolve(s));
  });
}

function closeSoon(s: net.Socket, rng: Rng): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      s.destroy();
      resolve();
    };
    s.once('close', () => resolve());
    if (rng.chance(0.3)) s.end(); // half-close: the server sees EOF mid-stream
    setTimeout(done, rng.range(0, 150));
  });
}

/** Moves every write-like request of a stream above the good region (framing unchanged). */
function keepOutOfGoodRegion(stream: Buffer, extended: boolean, rng: Rng): Buffer {
  const b = Buffer.from(stream);
  for (const { at, type } of requestHeaderPositions(b, extended)) {
    if (type === NBD_CMD_WRITE || type === NBD_CMD_TRIM || type === NBD_CMD_WRITE_ZEROES || type > 7) {
      const hi = b.readUInt32BE(at + 16);
      const lo = b.readUInt32BE(at + 20);
      if (hi === 0 && lo < GOOD_REGION) b.writeUInt32BE(GOOD_REGION + rng.int(GOOD_REGION) * 4, at + 20);
    }
  }
  return b;
}

/** Reads the structured reply to one READ: the data, or throws on an error chunk. */
async function readData(c: RawClient, cookie: bigint, offset: number, length: number): Promise<Buffer> {
  c.request({ type: NBD_CMD_READ, cookie, offset, length });
  const out = Buffer.alloc(length);
  for (;;) {
    const r = await c.readReply(10_000);
    if (r.header.kind === 'simple') throw new Error('simple reply after structured replies were agreed');
    if (r.header.cookie !== cookie) throw new Error(`reply for cookie ${r.header.cookie}, expected ${cookie}`);
    if (r.header.type & 0x8000) throw new Error(`READ at ${offset} failed: error chunk type ${r.header.type}`);
    if (r.header.type === NBD_REPLY_TYPE_OFFSET_DATA) {
      const at = Number(r.data.readBigUInt64BE(0)) - offset;
      r.data.copy(out, at, 8);
    } // OFFSET_HOLE leaves zeroes, NONE ends
    if (r.header.flags & NBD_REPLY_FLAG_DONE) return out;
  }
}

type Attack = (rng: Rng) => Promise<void>;

const attacks: Record<string, Attack> = {
  /** Mutated option haggling, in pieces. */
  async handshake(rng) {
    const s = await rawSocket();
    const stream = fuzzOptionStream(rng);
    for (let at = 0; at < stream.length && !s.destroyed; ) {
      const n = 1 + rng.length(300);
      s.write(stream.subarray(at, at + n));
      at += n;
      if (rng.chance(0.2)) await sleep(rng.int(5));
    }
    await closeSoon(s, rng);
  },
  /** A real GO, then mutated requests (huge lengths, bad magics, wrong flags). */
  async transmission(rng) {
    let c: RawClient;
    try {
      c = await RawClient.connect({ kind: 'tcp', host: node.host, port: node.port });
    } catch {
      return;
    }
    try {
      const extended = rng.chance(0.5);
      await c.negotiate({ structured: rng.chance(0.5), extended });
      reachedTransmission++;
      for (let i = 0; i < 1 + rng.int(4) && !c.socket.destroyed; i++) {
        c.write(keepOutOfGoodRegion(fuzzRequestStream(rng, extended, 32 * 1024 * 1024), extended, rng));
        await sleep(rng.int(10));
      }
    } catch {
      // The server may close on a violation at any point: that is its job.
    }
    await closeSoon(c.socket, rng);
  },
  /** A handshake dripped a byte at a time, then dropped (or left half-closed). */
  async drip(rng) {
    const s = await rawSocket();
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    const stream = Buffer.concat([flags, encodeOption(NBD_OPT_GO, encodeInfoRequest('', []))]);
    const upTo = rng.int(stream.length);
    for (let i = 0; i < upTo && !s.destroyed; i++) {
      s.write(stream.subarray(i, i + 1));
      await sleep(rng.range(1, 20));
    }
    await closeSoon(s, rng);
  },
  /** Lengths at the top of their ranges: options, compact and extended requests. */
  async huge(rng) {
    if (rng.chance(0.5)) {
      const s = await rawSocket();
      const h = Buffer.alloc(20);
      h.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE, 0);
      NBD_OPTS_MAGIC.copy(h, 4);
      h.writeUInt32BE(rng.pick([NBD_OPT_GO, 1, 9, 0x7fffffff]), 12);
      h.writeUInt32BE(rng.pick([0xffffffff, 0x10001, 0x7fffffff]), 16);
      s.write(h);
      s.write(Buffer.alloc(rng.int(70_000), 0x41));
      await closeSoon(s, rng);
      return;
    }
    let c: RawClient;
    try {
      c = await RawClient.connect({ kind: 'tcp', host: node.host, port: node.port });
    } catch {
      return;
    }
    try {
      const extended = rng.chance(0.5);
      await c.negotiate({ structured: true, extended });
      reachedTransmission++;
      const length = extended ? rng.pick([2n ** 64n - 1n, 2n ** 53n, 2n ** 32n, 33n * 1024n * 1024n]) : BigInt(rng.pick([0xffffffff, 33 * 1024 * 1024, 64 * 1024 * 1024 + 1]));
      const type = rng.pick([NBD_CMD_WRITE, NBD_CMD_READ, NBD_CMD_WRITE_ZEROES]);
      c.write(encodeRequest({ type, flags: extended && type === NBD_CMD_WRITE ? 1 << 5 : 0, cookie: 1n, offset: BigInt(GOOD_REGION), length }, extended));
      // Part of the announced payload, then stop sending.
      c.write(Buffer.alloc(rng.int(256 * 1024)));
    } catch {
      // closed by the server
    }
    await closeSoon(c.socket, rng);
  },
};

describe('fuzzing clients against a live daemon', () => {
  it(`serves a well-behaved client correctly for ${ATTACK_MS} ms of attack`, async () => {
    const rssBefore = await rssBytes(pid);
    let rssMax = rssBefore;
    const stopAt = Date.now() + ATTACK_MS;
    const attacked: Record<string, number> = {};

    const attacker = async (index: number): Promise<void> => {
      const names = Object.keys(attacks);
      for (let n = 0; Date.now() < stopAt; n++) {
        const rng = new Rng((SEED ^ Math.imul(index + 1, 0x9e3779b9) ^ n) >>> 0);
        const name = names[(index + n) % names.length]!;
        attacked[name] = (attacked[name] ?? 0) + 1;
        await attacks[name]!(rng);
      }
    };

    const sampler = (async () => {
      while (Date.now() < stopAt) {
        rssMax = Math.max(rssMax, await rssBytes(pid));
        await sleep(100);
      }
    })();

    // The good client: writes a block, reads it back, and now and then re-reads an older one.
    const good = await RawClient.connect({ kind: 'tcp', host: node.host, port: node.port });
    await good.negotiate({ structured: true });
    const written = new Map<number, Buffer>();
    const rng = new Rng(SEED);
    let ops = 0;
    const goodClient = (async () => {
      let cookie = 1n;
      const readBack = async (offset: number, want: Buffer): Promise<void> => {
        const got = await readData(good, cookie++, offset, want.length);
        expect(got.equals(want), `wrong data read back at ${offset}`).toBe(true);
        ops++;
      };
      while (Date.now() < stopAt) {
        const size = 4096 * (1 + rng.int(16));
        const offset = 4096 * rng.int((GOOD_REGION - size) / 4096);
        const payload = Buffer.alloc(size, rng.bytes(1 + rng.int(97)));
        const k = cookie++;
        good.request({ type: NBD_CMD_WRITE, cookie: k, offset, length: size }, payload);
        const w = await good.readReply(10_000);
        expect(w.header.cookie).toBe(k);
        expect(w.header.kind === 'simple' ? w.header.error : w.header.type & 0x8000, `WRITE at ${offset} failed`).toBe(0);
        // Overlapping older writes are superseded: keep the map consistent by dropping them.
        for (const [o, b] of written) if (o < offset + size && offset < o + b.length) written.delete(o);
        written.set(offset, payload);
        ops++;
        await readBack(offset, payload);
        if (written.size > 1 && rng.chance(0.3)) {
          const entries = [...written];
          const [o, b] = entries[rng.int(entries.length)]!;
          await readBack(o, b);
        }
      }
    })();

    await Promise.all([goodClient, sampler, ...Array.from({ length: ATTACKERS }, (_, i) => attacker(i))]);
    good.destroy();

    // Still alive, still serving, memory bounded.
    expect(alive(pid)).toBe(true);
    const after = await RawClient.connect({ kind: 'tcp', host: node.host, port: node.port });
    await after.negotiate({ structured: true });
    let n = 100n;
    for (const [o, b] of [...written].slice(0, 20)) {
      expect((await readData(after, n++, o, b.length)).equals(b), `data at ${o} changed after the attack`).toBe(true);
    }
    after.destroy();
    rssMax = Math.max(rssMax, await rssBytes(pid));
    const status = await node.cli('status', 'r0', '--json');
    expect(status.code).toBe(0);
    console.log(
      `fuzz-server: ${ops} good operations; attacks ${JSON.stringify(attacked)} (${reachedTransmission} past GO); daemon RSS ${(rssBefore / 2 ** 20).toFixed(0)} -> max ${(rssMax / 2 ** 20).toFixed(0)} MiB`,
    );
    expect(ops).toBeGreaterThan(20);
    expect(reachedTransmission).toBeGreaterThan(0);
    expect(rssMax - rssBefore).toBeLessThan(RSS_GROWTH_LIMIT);
  }, 60_000);
});
