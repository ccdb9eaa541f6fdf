/**
 * The control socket of a running daemon (G7, G8): `<run-dir>/<node>.sock`
 * is a unix socket of mode 0600 owned by the daemon's user (root), so no
 * other user can connect; and whatever arrives on it that is not a valid
 * request gets an ERR_BAD_COMMAND answer (or, for a line beyond the limit,
 * that answer and a closed connection), changes nothing, and leaves the
 * daemon serving.
 */
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_CONTROL_LINE_BYTES } from '../../src/daemon/control-protocol.js';
import { daemonPaths } from '../../src/daemon/run-dir.js';
import { mustSucceed, startNode, type StartedNode } from '../helpers/single-node.js';
import { hasTool, requireTools } from '../helpers/tools.js';
import { run, type RunResult } from '../interop/proc.js';
import { RawConnection, waitForLog } from './support.js';

interface Reply {
  id: number | null;
  ok: boolean;
  result?: unknown;
  error?: { code: string; message: string };
}

/** Reads newline-terminated JSON replies from a control connection. */
class ControlLines {
  private buffered = '';
  readonly replies: Reply[] = [];

  constructor(readonly conn: RawConnection) {
    const utf8 = new StringDecoder('utf8');
    conn.socket.on('data', (d: Buffer) => {
      this.buffered += utf8.write(d);
      const lines = this.buffered.split('\n');
      this.buffered = lines.pop()!;
      for (const l of lines) this.replies.push(JSON.parse(l) as Reply);
    });
  }

  static async open(socketPath: string): Promise<ControlLines> {
    return new ControlLines(await RawConnection.openPath(socketPath));
  }

  private seen = 0;

  /** The next reply, once it is there. */
  async next(): Promise<Reply> {
    const at = this.seen;
    await until(() => this.replies.length > at || this.conn.isClosed, 'a reply');
    if (this.replies.length <= at) throw new Error('the daemon closed the control connection without a reply');
    this.seen++;
    return this.replies[at]!;
  }
}

async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`no ${what} within 20 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Runs `node -e script socketPath` as `nobody`; its stdout. */
function asNobody(script: string, socketPath: string): Promise<RunResult> {
  return run('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, '-e', script, socketPath], {
    // Not the test's environment: vitest's NODE_OPTIONS and friends name files nobody may read.
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C' },
  });
}

/** Connects, sends a status request, prints what happened: "answered ..." or the error code. */
const CONNECT_SCRIPT = `
const s = require('node:net').createConnection(process.argv[1]);
s.on('connect', () => s.write('{"id":1,"cmd":"status"}\\n'));
s.on('data', (d) => { process.stdout.write('answered ' + d); s.destroy(); });
s.on('error', (e) => { process.stdout.write(e.code || e.message); });
`;

/** Why the "another user" test cannot run here, or null. */
function cannotSwitchUser(): string | null {
  if (process.getuid?.() !== 0) return 'not running as root';
  if (!hasTool('setpriv')) return 'missing tool: setpriv (util-linux)';
  return null;
}

describe('the control socket of a running daemon', () => {
  let node: StartedNode;
  let socketPath: string;

  beforeAll(async () => {
    node = await startNode({ secondary: true });
    socketPath = daemonPaths(node.runDir, node.node).socket;
  });
  afterAll(async () => {
    await node?.stop();
  });

  it('is a socket of mode 0600 owned by the daemon\'s user (root here)', async () => {
    const st = await fsp.stat(socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.uid).toBe(process.getuid!());
    if (process.getuid!() === 0) expect(st.uid).toBe(0);
  });

  it('refuses another user: nobody gets EACCES, though it reaches an open socket beside it', async (ctx) => {
    const why = cannotSwitchUser();
    if (why !== null) {
      if (requireTools) throw new Error(`${why}; MIRRORBD_REQUIRE_TOOLS=1`);
      console.warn(`skipping: ${why}`);
      return ctx.skip();
    }
    // The test dir is 0700; let nobody through it so that only the socket's own mode decides.
    await fsp.chmod(node.dir, 0o711);
    // A control experiment: a socket anyone may open, in the same directory.
    const openPath = path.join(node.runDir, 'open-to-all.sock');
    const accepted = new Set<net.Socket>();
    const open = net.createServer((s) => {
      accepted.add(s);
      s.on('error', () => undefined);
      s.end('{"id":1,"ok":true,"result":"open"}\n');
    });
    await new Promise<void>((resolve) => open.listen(openPath, resolve));
    try {
      await fsp.chmod(openPath, 0o666);
      const control = await asNobody(CONNECT_SCRIPT, openPath);
      expect(control.stdout, control.stderr).toMatch(/^answered /);

      const r = await asNobody(CONNECT_SCRIPT, socketPath);
      expect(r.stdout, r.stderr).toBe('EACCES');
    } finally {
      for (const s of accepted) s.destroy();
      await new Promise<void>((resolve) => open.close(() => resolve()));
      await fsp.chmod(node.dir, 0o700);
    }
    // root still gets in
    await mustSucceed(node.cli('status', 'r0'));
  });

  it('answers each malformed request with ERR_BAD_COMMAND, acts on none, and keeps the connection', async () => {
    const c = await ControlLines.open(socketPath);
    try {
      const cases: Array<[string, Buffer | string, number | null, RegExp]> = [
        ['binary garbage', Buffer.from([0xff, 0xfe, 0x00, 0x01, 0xc3, 0x28, 0x7b, 0x80, 0x0a]), null, /not valid JSON/],
        ['text that is not JSON', 'status r0 please\n', null, /not valid JSON/],
        ['a JSON array', '[1,2,3]\n', null, /must be a JSON object/],
        ['JSON null', 'null\n', null, /must be a JSON object/],
        ['no id', '{"cmd":"status"}\n', null, /integer "id"/],
        ['an id that is a string', '{"id":"1","cmd":"status"}\n', null, /integer "id"/],
        ['an unknown verb', '{"id":11,"cmd":"format-disk","resource":"r0"}\n', 11, /unknown command "format-disk"/],
        ['a verb that is not a string', '{"id":12,"cmd":["primary"],"resource":"r0"}\n', 12, /unknown command/],
        ['a resource that is a number', '{"id":13,"cmd":"primary","resource":5}\n', 13, /"primary" needs a "resource" name/],
        ['force that is a string', '{"id":14,"cmd":"primary","resource":"r0","force":"yes"}\n', 14, /"force" must be true or false/],
        ['status of a resource that is an object', '{"id":15,"cmd":"status","resource":{"name":"r0"}}\n', 15, /"resource" must be a string/],
        ['up with a configFile that is a number', '{"id":16,"cmd":"up","resource":"r0","configFile":7}\n', 16, /"up" needs a "configFile"/],
        ['discardMyData that is a number', '{"id":17,"cmd":"connect","resource":"r0","discardMyData":1}\n', 17, /"discardMyData" must be true or false/],
        ['20000 nested arrays', `${'['.repeat(20_000)}${']'.repeat(20_000)}\n`, null, /not valid JSON|must be a JSON object/],
      ];
      for (const [name, bytes, id, message] of cases) {
        c.conn.write(typeof bytes === 'string' ? Buffer.from(bytes) : bytes);
        const r = await c.next();
        expect({ case: name, id: r.id, ok: r.ok, code: r.error?.code }).toEqual({ case: name, id, ok: false, code: 'ERR_BAD_COMMAND' });
        expect(r.error!.message, name).toMatch(message);
      }
      // The same connection still takes a valid request.
      c.conn.write(Buffer.from('{"id":99,"cmd":"status","resource":"r0"}\n'));
      const s = await c.next();
      expect(s).toMatchObject({ id: 99, ok: true });
      // None of the refused requests acted: the node is still a Secondary.
      expect((s.result as Array<{ role: string }>)[0]!.role).toBe('Secondary');
    } finally {
      c.conn.destroy();
    }
    await waitForLog(node.runDir, node.node, 'the malformed requests', (r) => r.msg === 'malformed control request', 14);
  });

  it('answers a line beyond the limit with ERR_BAD_COMMAND and closes that connection', async () => {
    const c = await ControlLines.open(socketPath);
    // No newline: the daemon must not wait for one to refuse it.
    c.conn.write(Buffer.alloc(MAX_CONTROL_LINE_BYTES + 1, 'a'));
    const r = await c.next();
    expect(r).toMatchObject({ id: null, ok: false, error: { code: 'ERR_BAD_COMMAND' } });
    expect(r.error!.message).toMatch(new RegExp(`longer than ${MAX_CONTROL_LINE_BYTES} bytes`));
    await c.conn.closed;
  });

  it('answers a valid status afterwards, on a new connection and through the CLI', async () => {
    const c = await ControlLines.open(socketPath);
    try {
      c.conn.write(Buffer.from('{"id":1,"cmd":"status","resource":"r0"}\n'));
      expect(await c.next()).toMatchObject({ id: 1, ok: true });
    } finally {
      c.conn.destroy();
    }
    const st = JSON.parse((await mustSucceed(node.cli('status', 'r0', '--json'))).stdout) as Array<{ role: string }>;
    expect(st[0]!.role).toBe('Secondary');
  });
});
