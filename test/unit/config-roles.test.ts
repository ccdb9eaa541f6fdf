import { expect, test } from 'vitest';
import { MirrorError } from '../../src/errors.js';
import { formatConfig, HANDLER_NAMES, parseConfig, type ResourceConfig } from '../../src/config/index.js';

const NODES = 'on alpha { node-id 0; disk /d; address 10.0.0.1:7789; } on beta { node-id 1; disk /d; address 10.0.0.2:7789; } on witness { node-id 2; disk none; address 10.0.0.3:7789; }';

function resource(body: string, common = ''): ResourceConfig {
  return parseConfig(`${common}\nresource r0 { ${body} ${NODES} }`, 'r.conf').resources[0]!;
}

function failure(text: string): MirrorError {
  try {
    parseConfig(text, 'e.conf');
  } catch (e) {
    expect(e).toBeInstanceOf(MirrorError);
    return e as MirrorError;
  }
  throw new Error('expected a MirrorError');
}

test('every after-sb-0pri policy parses to its discriminated value', () => {
  for (const policy of ['disconnect', 'discard-younger-primary', 'discard-older-primary', 'discard-zero-changes', 'discard-least-changes'] as const) {
    expect(resource(`net { after-sb-0pri ${policy}; }`).net.afterSb0pri).toEqual({ policy });
  }
  expect(resource('net { after-sb-0pri discard-node-beta; }').net.afterSb0pri).toEqual({ policy: 'discard-node', node: 'beta' });
  expect(resource('net { after-sb-0pri discard-node-witness; }').net.afterSb0pri).toEqual({ policy: 'discard-node', node: 'witness' });
});

test('discard-node-NAME takes node names that contain dashes', () => {
  const r = parseConfig('resource r { net { after-sb-0pri discard-node-node-1; } on node-1 { node-id 0; disk /d; } }', 'd.conf').resources[0]!;
  expect(r.net.afterSb0pri).toEqual({ policy: 'discard-node', node: 'node-1' });
});

test('after-sb-1pri, after-sb-2pri and fencing take their DRBD words', () => {
  for (const policy of ['disconnect', 'consensus', 'discard-secondary'] as const) {
    expect(resource(`net { after-sb-1pri ${policy}; }`).net.afterSb1pri).toBe(policy);
  }
  expect(resource('net { after-sb-2pri disconnect; }').net.afterSb2pri).toBe('disconnect');
  expect(resource('net { fencing dont-care; }').net.fencing).toBe('dont-care');
  const handler = 'handlers { fence-peer "/bin/true"; }';
  expect(resource(`net { fencing resource-only; } ${handler}`).net.fencing).toBe('resource-only');
  expect(resource(`net { fencing resource-and-stonith; } ${handler}`).net.fencing).toBe('resource-and-stonith');
});

test('twopc-timeout and handler-timeout are seconds in options', () => {
  const r = resource('options { twopc-timeout 5; handler-timeout 0.25; }');
  expect(r.options.twopcTimeoutMs).toBe(5000);
  expect(r.options.handlerTimeoutMs).toBe(250);
  const d = resource('');
  expect(d.options).toMatchObject({ twopcTimeoutMs: 30_000, handlerTimeoutMs: 60_000 });
  expect(d.net).toMatchObject({ fencing: 'dont-care', afterSb0pri: { policy: 'disconnect' }, afterSb1pri: 'disconnect', afterSb2pri: 'disconnect' });
});

test('the role manager settings in common apply to every resource, and resources do not share values', () => {
  const c = parseConfig(
    `common { net { after-sb-0pri discard-zero-changes; after-sb-1pri discard-secondary; } options { twopc-timeout 10; } }
     resource r1 { on a { node-id 0; disk /d; } }
     resource r2 { net { after-sb-0pri discard-least-changes; } on a { node-id 0; disk /d; } }`,
    'c.conf',
  );
  const [r1, r2] = c.resources;
  expect(r1!.net.afterSb0pri).toEqual({ policy: 'discard-zero-changes' });
  expect(r2!.net.afterSb0pri).toEqual({ policy: 'discard-least-changes' });
  expect(r2!.net.afterSb1pri).toBe('discard-secondary');
  expect(r1!.options.twopcTimeoutMs).toBe(10_000);
  expect(Object.isFrozen(r1!.net.afterSb0pri)).toBe(true);
});

test('the design document example with roles parses', () => {
  const r = parseConfig(
    `resource r0 {
  options  { quorum majority; on-no-quorum suspend-io; auto-promote yes; }
  net      { after-sb-0pri discard-zero-changes; after-sb-1pri discard-secondary;
             fencing resource-only; csums-alg sha256; verify-alg crc32c; }
  handlers { split-brain "/usr/local/sbin/notify split-brain"; after-promote "/usr/local/sbin/vip up"; fence-peer "/usr/local/sbin/fence"; }
  on alpha { node-id 0; disk /var/lib/mirrorbd/r0.img; address 192.0.2.1:7789; }
  on beta  { node-id 1; disk /var/lib/mirrorbd/r0.img; address 192.0.2.2:7789; }
  on witness { node-id 2; disk none; address 192.0.2.3:7789; }
}`,
    'design.conf',
  ).resources[0]!;
  expect(r.options.quorum).toBe('majority');
  expect(r.net).toMatchObject({ fencing: 'resource-only', afterSb0pri: { policy: 'discard-zero-changes' }, afterSb1pri: 'discard-secondary' });
  expect(r.handlers['after-promote']).toBe('/usr/local/sbin/vip up');
});

test('dump prints the role manager settings and they parse back', () => {
  const text = `resource r0 { net { after-sb-0pri discard-node-alpha; after-sb-1pri consensus; fencing resource-only; }
    options { twopc-timeout 7.5; handler-timeout 2; } handlers { fence-peer "/bin/fence peer"; } ${NODES} }`;
  const printed = formatConfig(parseConfig(text, 'a.conf'));
  for (const line of ['after-sb-0pri discard-node-alpha;', 'after-sb-1pri consensus;', 'after-sb-2pri disconnect;', 'fencing resource-only;', 'twopc-timeout 7.5;', 'handler-timeout 2;', 'fence-peer "/bin/fence peer";']) {
    expect(printed).toContain(line);
  }
  const again = parseConfig(printed, 'b.conf');
  expect(again.resources).toEqual(parseConfig(text, 'a.conf').resources);
  expect(formatConfig(parseConfig('resource r { on a { node-id 0; disk /d; } }', 'd.conf'))).toContain('after-sb-0pri disconnect;');
});

test('the handler names are the documented list', () => {
  expect([...HANDLER_NAMES]).toEqual([
    'fence-peer',
    'split-brain',
    'before-promote',
    'after-promote',
    'after-demote',
    'quorum-lost',
    'out-of-sync',
    'before-resync-target',
    'after-resync-target',
  ]);
});

/** [what, config text, line, column, part of the message] */
const ERRORS: Array<[string, string, number, number, string]> = [
  ['discard-node of a node the resource lacks', `resource r0 {\n  net { after-sb-0pri discard-node-gamma; }\n  ${NODES}\n}`, 2, 23, "found 'discard-node-gamma', expected discard-node- followed by a node of resource r0 (alpha, beta, witness)"],
  ['discard-node from common, checked per resource', 'common {\n  net { after-sb-0pri discard-node-b; }\n}\nresource r1 { on b { node-id 0; disk /d; } }\nresource r2 { on c { node-id 0; disk /d; } }', 2, 23, "found 'discard-node-b', expected discard-node- followed by a node of resource r2 (c)"],
  ['discard-node without a name', 'resource r { net { after-sb-0pri discard-node-; } on a { node-id 0; disk /d; } }', 1, 34, "found 'discard-node-', expected one of disconnect, discard-younger-primary, discard-older-primary, discard-zero-changes, discard-least-changes, or discard-node-NODE"],
  ['discard-node with a bad name', 'resource r { net { after-sb-0pri discard-node-a/b; } on a { node-id 0; disk /d; } }', 1, 34, "found 'discard-node-a/b', expected one of disconnect"],
  ['unknown after-sb-0pri', 'resource r { net { after-sb-0pri discard-local; } on a { node-id 0; disk /d; } }', 1, 34, "found 'discard-local', expected one of disconnect"],
  ['unknown after-sb-1pri', 'resource r { net { after-sb-1pri violently-as0p; } on a { node-id 0; disk /d; } }', 1, 34, "found 'violently-as0p', expected disconnect, consensus or discard-secondary"],
  ['after-sb-2pri other than disconnect', 'resource r { net { after-sb-2pri call-pri-lost-after-sb; } on a { node-id 0; disk /d; } }', 1, 34, "found 'call-pri-lost-after-sb', expected disconnect"],
  ['unknown fencing', 'resource r { net { fencing stonith; } on a { node-id 0; disk /d; } }', 1, 28, "found 'stonith', expected dont-care, resource-only or resource-and-stonith"],
  ['fencing without fence-peer', 'resource r {\n  net { fencing resource-only; }\n  on a { node-id 0; disk /d; }\n}', 2, 17, "found 'fencing resource-only' without a 'fence-peer' handler, expected 'handlers { fence-peer \"COMMAND\"; }' with it"],
  ['twopc-timeout too short', 'resource r { options { twopc-timeout 0.5; } on a { node-id 0; disk /d; } }', 1, 38, "found '0.5', expected seconds (up to 3 decimals) from 1 to 600"],
  ['handler-timeout not a number', 'resource r { options { handler-timeout forever; } on a { node-id 0; disk /d; } }', 1, 40, "found 'forever', expected seconds (up to 3 decimals) from 0.1 to 3600"],
  ['a DRBD handler mirrorbd does not run', 'resource r {\n  handlers { pri-lost-after-sb "x"; }\n}', 2, 14, "found unknown key 'pri-lost-after-sb' in 'handlers' in resource r, expected one of the keys fence-peer, split-brain, before-promote, after-promote, after-demote, quorum-lost, out-of-sync, before-resync-target, after-resync-target"],
  ['after-sb in options', 'resource r { options { after-sb-0pri disconnect; } on a { node-id 0; disk /d; } }', 1, 24, "found unknown key 'after-sb-0pri' in 'options' in resource r"],
];

test.each(ERRORS)('%s', (_what, text, line, column, fragment) => {
  const e = failure(text);
  expect(e.code).toBe('ERR_BAD_CONFIG');
  expect(e.message.startsWith(`e.conf:${line}:${column}: `), e.message).toBe(true);
  expect(e.message).toContain(fragment);
  expect(e.details).toEqual({ file: 'e.conf', line, column });
});
