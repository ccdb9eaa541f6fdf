/**
 * The data area of a disk with internal metadata is a little short of a
 * multiple of the 4 MiB activity-log extent, so its last extent is partial.
 * A Primary that wrote there keeps that extent hot; when the extent leaves
 * the activity log (at the latest on `down`), its bits are saved for the
 * part that exists. `down` then succeeds at once and the pair comes back
 * with the block in place.
 */
import { spawn } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { makePair, statusOf, upPair, waitForStatus, type Pair } from '../helpers/pair.js';
import { mustSucceed } from '../helpers/single-node.js';
import { missingTools } from '../helpers/tools.js';

const missing = missingTools('qemu-io');

const pairs: Pair[] = [];
afterEach(async () => {
  while (pairs.length > 0) await pairs.pop()!.stop();
});

function qemuIo(uri: string, command: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('qemu-io', ['-f', 'raw', '-c', command, uri], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('close', (code) => (code === 0 && !/failed|error/i.test(out) ? resolve() : reject(new Error(`qemu-io ${command}: ${out}`))));
  });
}

describe.skipIf(missing.length > 0)('the partial last activity-log extent', () => {
  it('a Primary that wrote the last block of the data area goes down cleanly and comes back with it', async () => {
    const p = await makePair();
    pairs.push(p);
    await upPair(p);
    await waitForStatus(p.alpha, (s) => s.peers[0]?.replication === 'Established');
    await mustSucceed(p.alpha.cli('new-current-uuid', 'r0', '--clear-bitmap'));
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate');
    await mustSucceed(p.alpha.cli('primary', 'r0'));
    const size = (await statusOf(p.alpha)).sizeBytes;
    expect(size % (4 * 1024 * 1024)).not.toBe(0);
    await qemuIo(p.alpha.uri, `write -P 0x5a ${size - 4096} 4k`);
    // beta goes away: the write after it is marked for beta in the partial extent
    await mustSucceed(p.beta.cli('down', 'r0'));
    await qemuIo(p.alpha.uri, `write -P 0x5b ${size - 8192} 4k`);
    await mustSucceed(p.alpha.cli('secondary', 'r0'));
    const down = await p.alpha.cli('down', 'r0');
    expect(down.stderr).toBe('');
    expect(down.code).toBe(0);
    // both back: beta takes the marked block, and the data is there on either node
    for (const n of p.nodes) await mustSucceed(n.cli('up', 'r0'));
    await waitForStatus(p.beta, (s) => s.disk === 'UpToDate' && s.peers[0]?.replication === 'Established' && s.peers[0]?.outOfSyncBytes === 0);
    await mustSucceed(p.beta.cli('primary', 'r0'));
    await qemuIo(p.beta.uri, `read -P 0x5a ${size - 4096} 4k`);
    await qemuIo(p.beta.uri, `read -P 0x5b ${size - 8192} 4k`);
  });
});
