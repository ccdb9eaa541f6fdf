import { expect, test } from 'vitest';
import { MirrorError } from '../../src/errors.js';
import { parseConfig } from '../../src/config/index.js';

/** [what, config text, line, column, part of the message] */
const CASES: Array<[string, string, number, number, string]> = [
  ['unknown section', 'resource r {\n  netz { }\n}', 2, 3, "found unknown section 'netz' in resource r, expected one of the keys meta-disk, or the sections net, disk, nbd, options, handlers, on"],
  ['unknown top-level section', 'resources r { }', 1, 1, "found unknown section 'resources' at the top level, expected one of the keys include, or the sections global, common, resource"],
  ['unknown key', 'resource r {\n  net { protocl C; }\n}', 2, 9, "found unknown key 'protocl' in 'net' in resource r, expected one of the keys protocol, ping-int, ping-timeout"],
  ['missing ; between statements', 'resource r {\n  net { protocol C\n    ping-int 2; }\n}', 3, 5, "found 'ping-int', expected ';' after 'protocol C'"],
  ['missing ; before }', 'resource r { net { protocol C } }', 1, 31, "found '}', expected ';' after 'protocol'"],
  ['missing }', 'resource r {\n  on a { node-id 0; disk /d; }\n', 3, 1, "found end of file, expected '}' to close 'resource' opened at 1:1"],
  ['stray }', 'resource r { on a { node-id 0; disk /d; } } }', 1, 45, "found '}' with no open section, expected a keyword"],
  ['stray ;', 'resource r { on a { node-id 0; disk /d;; } }', 1, 40, "found ';', expected a keyword"],
  ['unterminated string', 'resource r {\n  net { shared-secret "abc; }\n}', 2, 23, 'found an unterminated string'],
  ['bad escape', 'resource r {\n  handlers { split-brain "a\\qb"; }\n}', 2, 28, "found escape '\\q' in a string"],
  ['control character', 'resource r {\x01 }', 1, 13, 'found control character U+0001'],
  ['missing value', 'resource r { net { protocol; } }', 1, 28, "found ';', expected a value for 'protocol' (A, B or C)"],
  ['section used as statement', 'resource r { net; }', 1, 14, "found 'net' as a statement, expected a section 'net { ... }'"],
  ['key used as section', 'resource r { net { protocol { } } }', 1, 20, "found 'protocol' as a section, expected a statement 'protocol VALUE;'"],
  ['name on a section without one', 'resource r { net x { } }', 1, 18, "found 'x', expected '{' after 'net'"],
  ['resource without a name', 'resource { }', 1, 1, "found 'resource {' without a name, expected 'resource NAME {'"],
  ['bad protocol', 'resource r { net { protocol D; } }', 1, 29, "found 'D', expected A, B or C"],
  ['bad number', 'resource r {\n  disk { al-extents 12x; }\n}', 2, 21, "found '12x', expected a whole number from 7 to 6216"],
  ['number out of range', 'resource r {\n  disk { al-extents 6; }\n}', 2, 21, "found '6', expected a whole number from 7 to 6216"],
  ['bad size', 'resource r {\n  disk { resync-rate 10Q; }\n}', 2, 22, "found '10Q', expected a size from 1K to 1024G"],
  ['size out of range', 'resource r {\n  nbd { max-payload 65M; }\n}', 2, 21, "found '65M', expected a size from 64K to 64M"],
  ['bad duration', 'resource r {\n  net { ping-timeout 0.0001; }\n}', 2, 22, "found '0.0001', expected seconds (up to 3 decimals) from 0.1 to 30"],
  ['decimal where whole seconds', 'resource r {\n  net { ping-int 1.5; }\n}', 2, 18, "found '1.5', expected whole seconds from 1 to 120"],
  ['bad IPv4 address', 'resource r {\n  on a { node-id 0; disk /d; address 192.0.2.300:7789; }\n}', 2, 38, "found '192.0.2.300:7789', expected an address HOST:PORT"],
  ['IPv6 without brackets', 'resource r {\n  on a { node-id 0; disk /d; address ::1:7789; }\n}', 2, 38, 'an IPv6 address needs brackets'],
  ['bad IPv6 in brackets', 'resource r {\n  on a { node-id 0; disk /d; address [::g]:7789; }\n}', 2, 38, "found '[::g]:7789', expected an address"],
  ['port out of range', 'resource r {\n  on a { node-id 0; disk /d; address 10.0.0.1:70000; }\n}', 2, 38, 'expected a port from 1 to 65535'],
  ['port zero', 'resource r {\n  on a { node-id 0; disk /d; nbd-address [::1]:0; }\n}', 2, 42, 'expected a port from 1 to 65535'],
  ['bad CIDR', 'resource r {\n  nbd { allow 10.0.0.0/33; }\n}', 2, 15, "found '10.0.0.0/33', expected a prefix length from 0 to 32"],
  ['bad allow address', 'resource r {\n  nbd { allow 10.0.0.1 example.com; }\n}', 2, 24, "found 'example.com', expected an IPv4 or IPv6 address, or a CIDR"],
  ['duplicate resource', 'resource r { on a { node-id 0; disk /d; } }\nresource r { on a { node-id 0; disk /d; } }', 2, 10, 'found resource r a second time, expected each resource name once (first at e.conf:1:10)'],
  ['duplicate node name', 'resource r {\n  on a { node-id 0; disk /d; address 10.0.0.1:1; }\n  on a { node-id 1; disk /d; address 10.0.0.2:1; }\n}', 3, 6, "found node 'a' a second time in resource r, expected each 'on' name once (first at 2:6)"],
  ['duplicate node-id', 'resource r {\n  on a { node-id 0; disk /d; address 10.0.0.1:1; }\n  on b { node-id 0; disk /d; address 10.0.0.2:1; }\n}', 3, 18, "found node-id 0 again (node 'a' has it), expected a node-id unique in resource r"],
  ['node-id out of range', 'resource r { on a { node-id 32; disk /d; } }', 1, 29, "found '32', expected a whole number from 0 to 31"],
  ['bad resource name', 'resource r/0 { on a { node-id 0; disk /d; } }', 1, 10, "found 'r/0', expected a name of letters, digits"],
  ['bad node name', 'resource r { on "a b" { node-id 0; disk /d; } }', 1, 17, 'found string "a b", expected a name of letters, digits'],
  ['resource without on', 'resource r {\n  net { protocol C; }\n}', 1, 10, "found resource r without 'on' sections, expected at least one 'on NODE { ... }'"],
  ['same address twice', 'resource r {\n  on a { node-id 0; disk /d; address 10.0.0.1:1; }\n  on b { node-id 1; disk /d; address 10.0.0.1:1; }\n}', 3, 38, "found address 10.0.0.1:1 again (node 'a' has it), expected a different address for each node"],
  ['node without address in a multi-node resource', 'resource r {\n  on a { node-id 0; disk /d; address 10.0.0.1:1; }\n  on b { node-id 1; disk /d; }\n}', 3, 3, "found 'on b' without 'address', expected 'address HOST:PORT;'"],
  ['node without node-id', 'resource r {\n  on a { disk /d; }\n}', 2, 3, "found 'on a' without 'node-id', expected 'node-id N;' in it"],
  ['node without disk', 'resource r {\n  on a { node-id 1; }\n}', 2, 3, "found 'on a' without 'disk', expected 'disk PATH|none;' in it"],
  ['key set twice', 'resource r {\n  net { protocol C; protocol A; }\n}', 2, 21, "found 'protocol' a second time in 'net' in resource r, expected it once (first set at 2:9)"],
  ['tls without key', 'resource r {\n  nbd { tls required; tls-cert /c; }\n  on a { node-id 0; disk /d; }\n}', 2, 13, "found 'tls required' without 'tls-key', expected tls-key and tls-cert when tls is not off"],
  ['tls from common without cert', 'common { nbd { tls optional; } }\nresource r { nbd { tls-key /k; } on a { node-id 0; disk /d; } }', 1, 20, "found 'tls optional' without 'tls-cert'"],
  ['bad quorum', 'resource r { options { quorum most; } on a { node-id 0; disk /d; } }', 1, 31, "found 'most', expected off, majority, all or a number of votes from 1 to 32"],
  ['bad log level', 'global { log-level loud; }', 1, 20, "found 'loud', expected one of trace, debug, info, warn, error, fatal"],
  ['secret too long', `resource r { net { shared-secret ${'x'.repeat(65)}; } }`, 1, 34, 'expected text of 1 to 64 characters'],
  ['unix socket path too long', `resource r { on a { node-id 0; disk /d; nbd-address unix:/${'s'.repeat(107)}; } }`, 1, 53, 'expected unix:PATH with a path of 1 to 107 bytes'],
  ['include without a file system', 'include "more.conf";', 1, 1, "found 'include' in text parsed without a file system"],
  ['unknown handler', 'resource r { handlers { on-fire "x"; } }', 1, 25, "found unknown key 'on-fire' in 'handlers' in resource r, expected one of the keys fence-peer, split-brain"],
];

test.each(CASES)('%s', (_what, text, line, column, fragment) => {
  let error: unknown;
  try {
    parseConfig(text, 'e.conf');
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(MirrorError);
  const e = error as MirrorError;
  expect(e.code).toBe('ERR_BAD_CONFIG');
  expect(e.message.startsWith(`e.conf:${line}:${column}: `), e.message).toBe(true);
  expect(e.message).toContain(fragment);
  expect(e.details).toEqual({ file: 'e.conf', line, column });
});
