/**
 * Who may connect at all, against running daemons (G8): the NBD export's
 * `allow` list (docs/nbd.md, "Allow-list": a refused client is closed at
 * accept, before the greeting, and the refusal is logged with its address),
 * and the replication port, which takes connections only from the
 * addresses of the resource's other nodes. Loopback gives the test two
 * source addresses: every 127.0.0.0/8 address is local on Linux.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makePair, statusOf, waitForStatus, type Pair } from '../helpers/pair.js';
import { mustSucceed, startNode, type StartedNode } from '../helpers/single-node.js';
import { PeerWire, RawConnection, fileContains, helloAs, nbdRead, nbdWrite, waitForLog, type LogRecord } from './support.js';

const ALLOWED = '127.0.0.2';
const OTHER = '127.0.0.1';

describe(`an NBD export that allows only ${ALLOWED}`, () => {
  let node: StartedNode;

  beforeAll(async () => {
    node = await startNode({ nbdSection: `allow ${ALLOWED};` });
  });
  afterAll(async () => {
    await node?.stop();
  });

  it(`closes a client from ${OTHER} before the greeting and logs its address`, async () => {
    const c = await RawConnection.open(node.host, node.port, OTHER);
    const port = c.socket.localPort;
    await c.closed;
    expect(c.receivedBytes).toBe(0);
    await waitForLog(node.runDir, 'alpha', 'the refusal', (r: LogRecord) => r.msg === 'client refused: address not in the allow-list' && r.remote === `${OTHER}:${port}`);
  });

  it(`serves a client from ${ALLOWED}`, async () => {
    const mark = randomBytes(4096);
    await nbdWrite(node.host, node.port, 4096, mark, ALLOWED);
    expect((await nbdRead(node.host, node.port, 4096, mark.length, ALLOWED)).equals(mark)).toBe(true);
    expect(await fileContains(node.diskPath, mark)).toBe(true);
  });
});

describe('the replication port', () => {
  // alpha and beta are both configured at 127.0.0.1: nothing else is a peer's address.
  let p: Pair;

  beforeAll(async () => {
    p = await makePair();
    for (const n of p.nodes) await mustSucceed(n.cli('create-md', 'r0'));
    await mustSucceed(p.beta.cli('up', 'r0'));
  });
  afterAll(async () => {
    await p?.stop();
  });

  it('closes a connection from an address that is no peer\'s before reading a byte, and logs why', async () => {
    const w = await PeerWire.open('127.0.0.1', p.beta.peerPort, '127.0.0.2');
    const port = w.conn.socket.localPort;
    // A well-formed HELLO as alpha: it is not even read.
    w.send(helloAs(0, 1n));
    await w.conn.closed;
    expect(w.conn.receivedBytes).toBe(0);
    await waitForLog(
      p.beta.runDir,
      'beta',
      'the refusal',
      (r: LogRecord) =>
        r.msg === 'refused a peer connection' && r.remote === `127.0.0.2:${port}` && r.reason === '127.0.0.2 is not the address of a peer of r0',
    );
    expect((await statusOf(p.beta)).peers[0]!.connection).toBe('Connecting');
  });

  it('takes the real peer from its configured address', async () => {
    await mustSucceed(p.alpha.cli('up', 'r0'));
    await waitForStatus(p.beta, (s) => s.peers[0]?.connection === 'Connected');
    await waitForStatus(p.alpha, (s) => s.peers[0]?.connection === 'Connected');
  });
});
