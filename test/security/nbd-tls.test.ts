/**
 * NBD with TLS, against running daemons (G8): a listener with `tls required`
 * serves nothing in the clear, and plaintext a client (or a meddler in the
 * middle) pipelines behind NBD_OPT_STARTTLS is never acted on. docs/nbd.md
 * ("TLS") says what the server does; the NBD spec's FORCEDTLS rules
 * (doc/proto.md, "TLS support") say what a client must see.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_TLS_REQD,
} from '../../src/nbd/constants.js';
import { encodeInfoRequest, encodeOption } from '../../src/nbd/handshake-codec.js';
import { encodeRequest } from '../../src/nbd/request-decoder.js';
import { startNode, type StartedNode } from '../helpers/single-node.js';
import { missingTools } from '../helpers/tools.js';
import { RawClient } from '../integration/helpers/nbd-raw-client.js';
import { explain, run } from '../interop/proc.js';
import { RawConnection, fileContains, makeTlsFiles, waitForLog, type LogRecord, type TlsFiles } from './support.js';

const noOpenssl = missingTools('openssl').length > 0;

interface NodeStatus {
  nbd: { clients: unknown[] };
}

/** Greeting, STARTTLS and its ACK, the TLS handshake, then GO on r0: transmission over TLS. */
async function upgradeAndGo(c: RawClient): Promise<void> {
  await c.greeting();
  expect((await c.option(NBD_OPT_STARTTLS))[0]!.type).toBe(NBD_REP_ACK);
  await c.startTls();
  const go = await c.option(NBD_OPT_GO, encodeInfoRequest('r0', []));
  expect(go.at(-1)!.type).toBe(NBD_REP_ACK);
}

async function nbdClients(n: StartedNode): Promise<unknown[]> {
  const r = await n.cli('status', 'r0', '--json');
  return (JSON.parse(r.stdout) as NodeStatus[])[0]!.nbd.clients;
}

const warned = (text: string) => (r: LogRecord): boolean => r.msg === 'dropping connection' && String(r.reason).includes(text);

describe.skipIf(noOpenssl)('an NBD listener with tls required', () => {
  let certDir: string;
  let files: TlsFiles;
  let node: StartedNode;

  beforeAll(async () => {
    certDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-security-tls-'));
    files = await makeTlsFiles(certDir);
    node = await startNode({ nbdSection: `tls required; tls-key ${files.serverKey}; tls-cert ${files.serverCert};` });
  });
  afterAll(async () => {
    await node?.stop();
    if (certDir) await fsp.rm(certDir, { recursive: true, force: true });
  });

  it('answers a plaintext client ERR_TLS_REQD to every option, and it cannot read a byte', async () => {
    const c = await RawConnection.open(node.host, node.port);
    await c.nbdGreeting();
    const options: Array<[number, Buffer | undefined]> = [
      [NBD_OPT_GO, encodeInfoRequest('r0', [])],
      [NBD_OPT_INFO, encodeInfoRequest('r0', [])],
      [NBD_OPT_GO, encodeInfoRequest('', [])],
      [NBD_OPT_LIST, undefined],
      [NBD_OPT_STRUCTURED_REPLY, undefined],
    ];
    for (const [option, data] of options) {
      c.write(encodeOption(option, data));
      const r = await c.nbdOptionReply();
      expect({ option: r.option, type: r.type >>> 0 }).toEqual({ option, type: NBD_REP_ERR_TLS_REQD });
    }
    // A READ as if transmission had begun: not an option, so the server hangs
    // up, with not one byte of the export sent.
    const before = c.receivedBytes;
    c.write(encodeRequest({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 4096 }));
    await c.closed;
    expect(c.receivedBytes).toBe(before);
    expect(await nbdClients(node)).toEqual([]);
  });

  it('drops a plaintext EXPORT_NAME (it has no error reply), logging why', async () => {
    const c = await RawConnection.open(node.host, node.port);
    await c.nbdGreeting();
    const before = c.receivedBytes;
    c.write(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('r0')));
    await c.closed;
    expect(c.receivedBytes).toBe(before);
    await waitForLog(node.runDir, 'alpha', 'the dropped EXPORT_NAME', warned('EXPORT_NAME before TLS'));
    expect(await nbdClients(node)).toEqual([]);
  });

  it('serves reads and writes once the client has upgraded with STARTTLS', async () => {
    const c = await RawClient.connect({ kind: 'tcp', host: node.host, port: node.port });
    try {
      await upgradeAndGo(c);
      const mark = randomBytes(4096);
      c.request({ type: NBD_CMD_WRITE, cookie: 1n, offset: 8192, length: mark.length }, mark);
      expect((await c.readReply()).header).toMatchObject({ kind: 'simple', error: 0 });
      c.readLengths.set(2n, mark.length);
      c.request({ type: NBD_CMD_READ, cookie: 2n, offset: 8192, length: mark.length });
      expect((await c.readReply()).data.equals(mark)).toBe(true);
      expect(await fileContains(node.diskPath, mark)).toBe(true);
      expect(await nbdClients(node)).toMatchObject([{ tls: true }]);
    } finally {
      c.destroy();
    }
  });

  describe.skipIf(missingTools('nbdinfo').length > 0)('nbdinfo', () => {
    it('fails on the plain nbd:// URI', async () => {
      const r = await run('nbdinfo', [node.uri], { timeoutMs: 15_000 });
      expect(r.code, explain(r)).not.toBe(0);
      expect(r.stdout, explain(r)).not.toMatch(/export-size/);
    });

    it('works on nbds:// with the CA, and reports TLS', async () => {
      const uri = `nbds://${node.host}:${node.port}/r0?tls-certificates=${files.clientCertDir}`;
      const r = await run('nbdinfo', ['--json', uri], { timeoutMs: 15_000 });
      expect(r.code, explain(r)).toBe(0);
      const info = JSON.parse(r.stdout) as { TLS: boolean; exports: Array<{ 'export-size': number }> };
      expect(info.TLS).toBe(true);
      expect(info.exports[0]!['export-size']).toBe(node.sizeBytes);
    });

    it('fails on nbds:// when the client trusts another CA', async () => {
      const other = await makeTlsFiles(certDir, 'other');
      const uri = `nbds://${node.host}:${node.port}/r0?tls-certificates=${other.clientCertDir}`;
      const r = await run('nbdinfo', [uri], { timeoutMs: 15_000 });
      expect(r.code, explain(r)).not.toBe(0);
      expect(r.stderr, explain(r)).toMatch(/certificate/i);
    });
  });
});

describe.skipIf(noOpenssl)('plaintext pipelined behind NBD_OPT_STARTTLS', () => {
  // tls optional: here a server that acted on a GO injected in the clear
  // would serve that client in plaintext, the worst case.
  let certDir: string;
  let node: StartedNode;

  beforeAll(async () => {
    certDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mirrorbd-security-tls-'));
    const files = await makeTlsFiles(certDir);
    node = await startNode({ nbdSection: `tls optional; tls-key ${files.serverKey}; tls-cert ${files.serverCert};` });
  });
  afterAll(async () => {
    await node?.stop();
    if (certDir) await fsp.rm(certDir, { recursive: true, force: true });
  });

  it('is discarded, never acted on: no answer to the injected GO, the injected WRITE never reaches the disk', async () => {
    const injected = randomBytes(4096);
    const c = await RawConnection.open(node.host, node.port);
    await c.nbdGreeting();
    // STARTTLS, and in the same TCP write, in the clear: GO for r0 and a WRITE.
    c.write(
      Buffer.concat([
        encodeOption(NBD_OPT_STARTTLS),
        encodeOption(NBD_OPT_GO, encodeInfoRequest('r0', [])),
        encodeRequest({ type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: injected.length }),
        injected,
      ]),
    );
    const ack = await c.nbdOptionReply();
    expect({ option: ack.option, type: ack.type }).toEqual({ option: NBD_OPT_STARTTLS, type: NBD_REP_ACK });
    // The server does not go on with a stream that carried plaintext after
    // its ACK (docs/nbd.md, TLS): it hangs up, and the ACK was the last byte.
    await c.closed;
    expect(c.pending).toBe(0);
    await waitForLog(node.runDir, 'alpha', 'the dropped connection', warned('plaintext data after STARTTLS'));
    expect(await fileContains(node.diskPath, injected)).toBe(false);
    expect(await nbdClients(node)).toEqual([]);
  });

  it('a client that waits for the ACK, as it must, then gets a working TLS session', async () => {
    const c = await RawClient.connect({ kind: 'tcp', host: node.host, port: node.port });
    try {
      await upgradeAndGo(c);
      c.readLengths.set(1n, 512);
      c.request({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length: 512 });
      expect((await c.readReply()).header).toMatchObject({ kind: 'simple', error: 0 });
      expect(await nbdClients(node)).toMatchObject([{ tls: true }]);
    } finally {
      c.destroy();
    }
  });
});
