/**
 * The smallest NBD client that holds a connection open: fixed newstyle
 * handshake and NBD_OPT_GO, then nothing. Tests use it to have "a client
 * connected" without a tool in the way; it reports the server's option error
 * message verbatim when GO is refused.
 */
import net from 'node:net';

const IHAVEOPT = Buffer.from('IHAVEOPT');
const NBD_OPT_GO = 7;
const NBD_REP_ACK = 1;
const NBD_REP_ERR_BIT = 0x80000000;

export type GoResult = { ok: true; socket: net.Socket; sizeBytes: number } | { ok: false; error: string };

export function nbdGo(host: string, port: number, exportName: string, timeoutMs = 5000): Promise<GoResult> {
  return new Promise((resolve) => {
    const socket = net.createConnection({ host, port });
    let buf = Buffer.alloc(0);
    let stage: 'greeting' | 'replies' = 'greeting';
    let sizeBytes = 0;
    const timer = setTimeout(() => done({ ok: false, error: 'timeout' }), timeoutMs);
    const done = (r: GoResult): void => {
      clearTimeout(timer);
      socket.removeAllListeners('data');
      if (!r.ok) socket.destroy();
      resolve(r);
    };
    socket.on('error', (e) => done({ ok: false, error: e.message }));
    socket.on('close', () => done({ ok: false, error: 'connection closed by server' }));
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (stage === 'greeting') {
        if (buf.length < 18) return;
        buf = buf.subarray(18);
        stage = 'replies';
        const name = Buffer.from(exportName);
        const opt = Buffer.alloc(16 + 4 + name.length + 2);
        IHAVEOPT.copy(opt, 0);
        opt.writeUInt32BE(NBD_OPT_GO, 8);
        opt.writeUInt32BE(4 + name.length + 2, 12);
        opt.writeUInt32BE(name.length, 16);
        name.copy(opt, 20);
        opt.writeUInt16BE(0, 20 + name.length);
        // client flags: FIXED_NEWSTYLE | NO_ZEROES
        socket.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), opt]));
      }
      while (buf.length >= 20) {
        const type = buf.readUInt32BE(12);
        const len = buf.readUInt32BE(16);
        if (buf.length < 20 + len) return;
        const data = buf.subarray(20, 20 + len);
        buf = buf.subarray(20 + len);
        if (type >= NBD_REP_ERR_BIT) return done({ ok: false, error: data.toString('utf8') });
        if (type === 3 && data.readUInt16BE(0) === 0) sizeBytes = Number(data.readBigUInt64BE(2));
        if (type === NBD_REP_ACK) {
          socket.removeAllListeners('close');
          return done({ ok: true, socket, sizeBytes });
        }
      }
    });
  });
}
