import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { MirrorError } from '../../src/errors.js';
import { findResource, loadConfig, localNode, parseConfig } from '../../src/config/index.js';

let dir: string;
beforeEach(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'mirrorbd-config-'));
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function failure(p: Promise<unknown> | (() => unknown)): Promise<MirrorError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(e).toBeInstanceOf(MirrorError);
    return e as MirrorError;
  }
  throw new Error('expected a MirrorError');
}

test('loadConfig reads a file and names it in the result', async () => {
  const file = join(dir, 'mirrorbd.conf');
  await fsp.writeFile(file, 'resource r0 { on a { node-id 0; disk /d; } }\n');
  const c = await loadConfig(file);
  expect(c.file).toBe(file);
  expect(c.resources[0]!.name).toBe('r0');
});

test('an unreadable file is ERR_BAD_CONFIG with the path and the OS reason', async () => {
  const missing = join(dir, 'nope.conf');
  const e = await failure(loadConfig(missing));
  expect(e.code).toBe('ERR_BAD_CONFIG');
  expect(e.message).toContain(missing);
  expect(e.message).toContain('ENOENT');
  const e2 = await failure(loadConfig(dir));
  expect(e2.code).toBe('ERR_BAD_CONFIG');
  expect(e2.message).toContain('EISDIR');
});

test('errors in a loaded file carry its path', async () => {
  const file = join(dir, 'bad.conf');
  await fsp.writeFile(file, 'global {\n  log-level loud;\n}\n');
  expect((await failure(loadConfig(file))).message).toBe(`${file}:2:13: found 'loud', expected one of trace, debug, info, warn, error, fatal`);
});

test('include reads files relative to the including file, in name order, and errors name the included file', async () => {
  await fsp.mkdir(join(dir, 'mirrorbd.d'));
  await fsp.writeFile(join(dir, 'mirrorbd.conf'), 'include "mirrorbd.d/common.conf";\ninclude "mirrorbd.d/*.res";\n');
  await fsp.writeFile(join(dir, 'mirrorbd.d', 'common.conf'), 'common { net { protocol A; } }\n');
  await fsp.writeFile(join(dir, 'mirrorbd.d', 'b.res'), 'resource rb { on a { node-id 0; disk /b; } }\n');
  await fsp.writeFile(join(dir, 'mirrorbd.d', 'a.res'), 'resource ra { on a { node-id 0; disk /a; } }\n');
  await fsp.writeFile(join(dir, 'mirrorbd.d', '.hidden.res'), 'garbage');
  await fsp.writeFile(join(dir, 'mirrorbd.d', 'notes.txt'), 'garbage');
  const c = await loadConfig(join(dir, 'mirrorbd.conf'));
  expect(c.resources.map((r) => [r.name, r.net.protocol])).toEqual([
    ['ra', 'A'],
    ['rb', 'A'],
  ]);

  await fsp.writeFile(join(dir, 'mirrorbd.d', 'c.res'), 'resource rc {\n  on a { node-id x; }\n}\n');
  const e = await failure(loadConfig(join(dir, 'mirrorbd.conf')));
  expect(e.message.startsWith(`${join(dir, 'mirrorbd.d', 'c.res')}:2:18: `)).toBe(true);
});

test('include of a missing file, or of itself, is refused at the include', async () => {
  const file = join(dir, 'm.conf');
  await fsp.writeFile(file, '\n  include "gone.conf";\n');
  const e = await failure(loadConfig(file));
  expect(e.message).toMatch(new RegExp(`^${file}:2:11: found include of .*gone\\.conf, which cannot be read \\(ENOENT`));
  await fsp.writeFile(file, 'include "m.conf";\n');
  expect((await failure(loadConfig(file))).message).toContain('nested 8 deep');
  await fsp.writeFile(file, 'include "*/x.conf";\n');
  expect((await failure(loadConfig(file))).message).toContain("'*' before the last path component");
});

test('findResource and localNode name what exists', async () => {
  const c = parseConfig('resource r1 { on a { node-id 0; disk /d; address 10.0.0.1:1; } on b { node-id 1; disk /d; address 10.0.0.2:1; } } resource r2 { on a { node-id 0; disk /d; } }', 'x.conf');
  expect(findResource(c, 'r2').name).toBe('r2');
  const e = await failure(() => findResource(c, 'r9'));
  expect(e.code).toBe('ERR_NO_SUCH_RESOURCE');
  expect(e.message).toContain('r1, r2');
  expect(localNode(findResource(c, 'r1'), 'b').nodeId).toBe(1);
  const e2 = await failure(() => localNode(findResource(c, 'r1'), 'zeta'));
  expect(e2.code).toBe('ERR_NODE_NOT_IN_RESOURCE');
  expect(e2.message).toContain('a, b');
  expect(e2.message).toContain('zeta');
});
