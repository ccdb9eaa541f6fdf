/**
 * Which client addresses a listener accepts: IPs and CIDRs, IPv4 and IPv6.
 * Built on node:net's BlockList, which also matches IPv4-mapped IPv6
 * addresses (::ffff:10.0.0.1, how a dual-stack socket reports an IPv4 peer)
 * against IPv4 rules and vice versa. Pure: no sockets.
 */
import { BlockList, isIP } from 'node:net';

export class AllowList {
  private readonly list = new BlockList();
  /** An empty list lets everyone in. */
  readonly everyone: boolean;

  /** Throws an Error naming the first bad entry. */
  constructor(entries: readonly string[]) {
    this.everyone = entries.length === 0;
    for (const raw of entries) {
      const entry = raw.trim();
      const slash = entry.indexOf('/');
      const ip = stripBrackets(slash < 0 ? entry : entry.slice(0, slash));
      const family = isIP(ip);
      if (family === 0) throw new Error(`allow-list entry "${raw}" is not an IP address or CIDR`);
      const type = family === 4 ? 'ipv4' : 'ipv6';
      if (slash < 0) {
        this.list.addAddress(ip, type);
        continue;
      }
      const prefixText = entry.slice(slash + 1);
      const prefix = Number(prefixText);
      const max = family === 4 ? 32 : 128;
      if (!/^\d+$/.test(prefixText) || prefix > max) {
        throw new Error(`allow-list entry "${raw}" has a bad prefix length (0..${max})`);
      }
      this.list.addSubnet(ip, prefix, type);
    }
  }

  /** True when a client at `address` (as net.Socket reports it) may connect. */
  allows(address: string | undefined): boolean {
    if (this.everyone) return true;
    if (!address) return false;
    const ip = stripBrackets(address);
    const family = isIP(ip);
    if (family === 0) return false;
    return this.list.check(ip, family === 4 ? 'ipv4' : 'ipv6');
  }
}

function stripBrackets(s: string): string {
  return s.startsWith('[') && s.endsWith(']') ? s.slice(1, -1) : s;
}
