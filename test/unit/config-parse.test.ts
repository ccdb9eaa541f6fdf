import { expect, test } from 'vitest';
import { findResource, formatConfig, localNode, parseConfig, type Config } from '../../src/config/index.js';

const FULL = `# every key, with values other than the defaults
global { run-dir /var/run/mbd; log-level debug; }
common {
  net { protocol B; ping-int 3; ping-timeout 1.25; connect-int 4; timeout 2.5; ko-count 0;
        shared-secret "s3cret with space"; cram-hmac-alg sha256; data-integrity-alg crc32c; verify-alg sha256; csums-alg md5;
        fencing resource-and-stonith; after-sb-0pri discard-node-beta; after-sb-1pri consensus; after-sb-2pri disconnect; }
  disk { resync-rate 250; al-extents 7; on-io-error pass_on; c-plan-ahead 2; c-delay-target 0.25; c-min-rate 1M; c-max-rate 500M; }
  nbd { tls required; tls-key /k.pem; tls-cert /c.pem; tls-ca /ca.pem;
        allow 10.0.0.1 192.0.2.0/24; allow ::1 2001:db8::/32;
        max-payload 64K; description "first \\"disk\\"\\tok"; }
  options { quorum 2; on-no-quorum io-error; auto-promote no; twopc-timeout 12.5; handler-timeout 90; }
  handlers {
    fence-peer "f"; split-brain "s"; before-promote "bp"; after-promote "ap"; after-demote "ad";
    quorum-lost "q"; out-of-sync "o"; before-resync-target "brt"; after-resync-target "art";
  }
}
resource "r0" {
  meta-disk /dev/meta0;
  on alpha { node-id 31; disk /dev/sdb; address [2001:db8::1]:7789; nbd-address unix:/run/r0.sock; }
  on beta  { node-id 0; disk none; meta-disk internal; address beta.example.com:1; nbd-address [::]:65535; }
}
`;

function withoutFile(c: Config): Omit<Config, 'file'> {
  const { file: _file, ...rest } = c;
  return rest;
}

test('every key is read into the model', () => {
  const c = parseConfig(FULL, 'full.conf');
  expect(c.file).toBe('full.conf');
  expect(c.global).toEqual({ runDir: '/var/run/mbd', logLevel: 'debug' });
  const r = c.resources[0]!;
  expect(r.name).toBe('r0');
  expect(r.net).toEqual({
    protocol: 'B',
    pingIntMs: 3000,
    pingTimeoutMs: 1250,
    connectIntMs: 4000,
    timeoutMs: 2500,
    koCount: 0,
    sharedSecret: 's3cret with space',
    cramHmacAlg: 'sha256',
    dataIntegrityAlg: 'crc32c',
    verifyAlg: 'sha256',
    csumsAlg: 'md5',
    tls: false,
    tlsKeyFile: null,
    tlsCertFile: null,
    tlsCaFile: null,
    fencing: 'resource-and-stonith',
    afterSb0pri: { policy: 'discard-node', node: 'beta' },
    afterSb1pri: 'consensus',
    afterSb2pri: 'disconnect',
  });
  expect(r.disk).toEqual({
    resyncRateBytesPerSec: 250 * 1024,
    alExtents: 7,
    onIoError: 'pass_on',
    cPlanAheadMs: 2000,
    cDelayTargetMs: 250,
    cMinRateBytesPerSec: 1024 * 1024,
    cMaxRateBytesPerSec: 500 * 1024 * 1024,
  });
  expect(r.nbd).toEqual({
    tls: 'required',
    tlsKeyFile: '/k.pem',
    tlsCertFile: '/c.pem',
    tlsCaFile: '/ca.pem',
    allow: ['10.0.0.1', '192.0.2.0/24', '::1', '2001:db8::/32'],
    maxPayloadBytes: 64 * 1024,
    description: 'first "disk"\tok',
  });
  expect(r.options).toEqual({ quorum: 2, onNoQuorum: 'io-error', autoPromote: false, twopcTimeoutMs: 12_500, handlerTimeoutMs: 90_000 });
  expect(r.handlers).toEqual({
    'fence-peer': 'f',
    'split-brain': 's',
    'before-promote': 'bp',
    'after-promote': 'ap',
    'after-demote': 'ad',
    'quorum-lost': 'q',
    'out-of-sync': 'o',
    'before-resync-target': 'brt',
    'after-resync-target': 'art',
  });
  expect(r.nodes).toEqual([
    { name: 'alpha', nodeId: 31, disk: '/dev/sdb', metaDisk: '/dev/meta0', address: { host: '2001:db8::1', port: 7789 }, nbdAddress: { kind: 'unix', path: '/run/r0.sock' } },
    { name: 'beta', nodeId: 0, disk: null, metaDisk: 'internal', address: { host: 'beta.example.com', port: 1 }, nbdAddress: { kind: 'tcp', host: '::', port: 65535 } },
  ]);
});

test('defaults fill everything left out', () => {
  const c = parseConfig('resource r { on a { node-id 0; disk /d; } }', 'min.conf');
  expect(c.global).toEqual({ runDir: '/run/mirrorbd', logLevel: 'info' });
  const r = c.resources[0]!;
  expect(r.net).toEqual({ protocol: 'C', pingIntMs: 10_000, pingTimeoutMs: 500, connectIntMs: 10_000, timeoutMs: 6000, koCount: 7, sharedSecret: null, cramHmacAlg: 'sha256', dataIntegrityAlg: 'none', verifyAlg: 'crc32c', csumsAlg: 'none', tls: false, tlsKeyFile: null, tlsCertFile: null, tlsCaFile: null, fencing: 'dont-care', afterSb0pri: { policy: 'disconnect' }, afterSb1pri: 'disconnect', afterSb2pri: 'disconnect' });
  expect(r.disk).toEqual({
    resyncRateBytesPerSec: 100 * 1024 * 1024,
    alExtents: 1237,
    onIoError: 'detach',
    cPlanAheadMs: 0,
    cDelayTargetMs: 100,
    cMinRateBytesPerSec: 4 * 1024 * 1024,
    cMaxRateBytesPerSec: 1024 * 1024 * 1024,
  });
  expect(r.nbd).toEqual({ tls: 'off', tlsKeyFile: null, tlsCertFile: null, tlsCaFile: null, allow: [], maxPayloadBytes: 32 * 1024 * 1024, description: null });
  expect(r.options).toEqual({ quorum: 'off', onNoQuorum: 'suspend-io', autoPromote: true, twopcTimeoutMs: 30_000, handlerTimeoutMs: 60_000 });
  expect(r.handlers).toEqual({});
  expect(r.nodes).toEqual([{ name: 'a', nodeId: 0, disk: '/d', metaDisk: 'internal', address: null, nbdAddress: null }]);
});

test('common applies to every resource; a resource overrides it key by key', () => {
  const c = parseConfig(
    `common { net { protocol A; ping-int 2; } nbd { allow 10.0.0.0/8; } handlers { split-brain "common"; } }
     resource r1 { net { ping-int 5; } nbd { allow 192.0.2.1; } on a { node-id 0; disk /d; } }
     resource r2 { handlers { fence-peer "r2"; } on a { node-id 0; disk /d; } }`,
    'c.conf',
  );
  const [r1, r2] = c.resources;
  expect(r1!.net.protocol).toBe('A');
  expect(r1!.net.pingIntMs).toBe(5000);
  expect(r1!.net.connectIntMs).toBe(10_000);
  expect(r1!.nbd.allow).toEqual(['192.0.2.1']);
  expect(r1!.handlers).toEqual({ 'split-brain': 'common' });
  expect(r2!.net).toMatchObject({ protocol: 'A', pingIntMs: 2000 });
  expect(r2!.nbd.allow).toEqual(['10.0.0.0/8']);
  expect(r2!.handlers).toEqual({ 'split-brain': 'common', 'fence-peer': 'r2' });
  // resources do not share the list they inherited
  expect(r2!.nbd.allow).not.toBe(c.resources[0]!.nbd.allow);
});

test('sizes and durations accept their units', () => {
  const parse = (disk: string, nbd = '', net = '') =>
    parseConfig(`resource r { disk { ${disk} } nbd { ${nbd} } net { ${net} } on a { node-id 0; disk /d; } }`, 'u.conf').resources[0]!;
  expect(parse('resync-rate 1G;').disk.resyncRateBytesPerSec).toBe(1024 ** 3);
  expect(parse('resync-rate 33m;').disk.resyncRateBytesPerSec).toBe(33 * 1024 ** 2);
  expect(parse('resync-rate 7k;').disk.resyncRateBytesPerSec).toBe(7 * 1024);
  expect(parse('', 'max-payload 65536;').nbd.maxPayloadBytes).toBe(65536);
  expect(parse('', 'max-payload 64M;').nbd.maxPayloadBytes).toBe(64 * 1024 ** 2);
  expect(parse('', '', 'ping-timeout 0.1; timeout 60;').net).toMatchObject({ pingTimeoutMs: 100, timeoutMs: 60_000 });
  expect(parse('', '', 'ping-timeout 30.000;').net.pingTimeoutMs).toBe(30_000);
});

test('the design document example parses', () => {
  const c = parseConfig(
    `global { run-dir /run/mirrorbd; }
common {
  net  { protocol C; ping-int 2; ping-timeout 0.5; connect-int 1; shared-secret "change-me"; }
  disk { resync-rate 200M; al-extents 1237; on-io-error detach; }
}
resource r0 {
  meta-disk internal;
  on alpha { node-id 0; disk /var/lib/mirrorbd/r0.img; address 192.0.2.1:7789; nbd-address 0.0.0.0:10809; }
  on beta  { node-id 1; disk /var/lib/mirrorbd/r0.img; address 192.0.2.2:7789; nbd-address 0.0.0.0:10809; }
}`,
    'design.conf',
  );
  const r = findResource(c, 'r0');
  expect(localNode(r, 'beta').address).toEqual({ host: '192.0.2.2', port: 7789 });
  expect(r.net.sharedSecret).toBe('change-me');
});

test('format prints every default and parses back to the same config', () => {
  for (const text of [FULL, 'resource r { on a { node-id 0; disk "/path with space/#x"; } }', 'resource r { nbd { description ""; } on a { node-id 0; disk /d; } }']) {
    const first = parseConfig(text, 'a.conf');
    const printed = formatConfig(first);
    const second = parseConfig(printed, 'b.conf');
    expect(withoutFile(second)).toEqual(withoutFile(first));
    expect(formatConfig(second)).toBe(printed);
  }
  const printed = formatConfig(parseConfig('resource r { on a { node-id 0; disk /d; } }', 'a.conf'));
  for (const line of ['run-dir /run/mirrorbd;', 'log-level info;', 'protocol C;', 'ping-timeout 0.5;', 'resync-rate 100M;', 'max-payload 32M;', 'quorum off;', 'auto-promote yes;', 'meta-disk internal;']) {
    expect(printed).toContain(line);
  }
});

test('format of one resource prints global and that resource only', () => {
  const c = parseConfig('resource r1 { on a { node-id 0; disk /d; } } resource r2 { on a { node-id 0; disk /e; } }', 'two.conf');
  const printed = formatConfig(c, 'r2');
  expect(printed).toContain('resource r2 {');
  expect(printed).not.toContain('resource r1');
  expect(parseConfig(printed, 'x').resources.map((r) => r.name)).toEqual(['r2']);
  expect(() => formatConfig(c, 'r3')).toThrow(expect.objectContaining({ code: 'ERR_NO_SUCH_RESOURCE' }));
});
