/**
 * Checks a TLS client's certificate against the listener's CA (policy.tlsCa).
 *
 * Why not `tlsSocket.authorized`: Node fills it in only for sockets a
 * tls.Server accepted, and STARTTLS wraps an already-connected socket by
 * hand. OpenSSL still refuses a client that sends no certificate at all
 * (requestCert + rejectUnauthorized); this decides whether the one it did
 * send is acceptable: issued and signed by one of the CA certificates (or
 * one of them itself), and within its validity period. Intermediate chains
 * are not followed.
 */
import { X509Certificate } from 'node:crypto';

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

export class ClientCertificateCheck {
  private readonly cas: X509Certificate[];

  /** Throws when the PEM holds no certificate. */
  constructor(caPem: Buffer) {
    const blocks = caPem.toString('latin1').match(PEM_CERT) ?? [];
    this.cas = blocks.map((b) => new X509Certificate(b));
    if (this.cas.length === 0) throw new Error('the CA file holds no certificate');
  }

  /** Null when the certificate is acceptable, else why not. */
  check(peer: X509Certificate | undefined, now = new Date()): string | null {
    if (peer === undefined) return 'no client certificate';
    if (now < new Date(peer.validFrom) || now > new Date(peer.validTo)) return 'client certificate is not valid at this time';
    for (const ca of this.cas) {
      if (ca.fingerprint256 === peer.fingerprint256) return null;
      if (peer.checkIssued(ca) && peer.verify(ca.publicKey)) return null;
    }
    return 'client certificate is not signed by the configured CA';
  }
}
