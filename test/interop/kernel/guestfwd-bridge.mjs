// qemu's user network runs this once per guest connection to the forwarded
// address (guestfwd=...-cmd:), with the guest's TCP stream as its stdin and
// stdout (one socket). It connects to a server on the host's loopback and
// copies bytes both ways until either side closes. A plain script, not
// TypeScript: qemu starts it with node directly. Its stderr is the guest's
// connection too, so it never prints anything: on an error it just closes,
// and the guest sees the connection end.
//
//   node guestfwd-bridge.mjs PORT MAX_LIFETIME_S
import net from 'node:net';

const port = Number(process.argv[2]);
const maxLifetimeS = Number(process.argv[3] ?? 300);
if (!Number.isInteger(port) || port <= 0 || port > 65535) process.exit(2);

const guest = new net.Socket({ fd: 0, readable: true, writable: true });
const host = net.connect({ host: '127.0.0.1', port });
host.setNoDelay(true);
guest.pipe(host);
host.pipe(guest);

const end = (code) => {
  guest.destroy();
  host.destroy();
  process.exit(code);
};
guest.on('close', () => end(0));
host.on('close', () => end(0));
guest.on('error', () => end(1));
host.on('error', () => end(1));
// Never outlive the test that started the VM, whatever the guest does.
setTimeout(() => end(1), maxLifetimeS * 1000).unref();
