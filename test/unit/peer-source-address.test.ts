import { describe, expect, it } from 'vitest';
import { sourceAddress } from '../../src/replication/peer.js';

describe('the address a node dials its peers from', () => {
  it('is its own configured IP when that is a literal of the peer’s family', () => {
    expect(sourceAddress('10.0.0.1', '10.0.0.2')).toBe('10.0.0.1');
    expect(sourceAddress('fd00::1', 'fd00::2')).toBe('fd00::1');
  });

  it('is left to the system for a host name, a wildcard, another family or no address', () => {
    expect(sourceAddress('alpha.example', '10.0.0.2')).toBeUndefined();
    expect(sourceAddress('10.0.0.1', 'beta.example')).toBeUndefined();
    expect(sourceAddress('0.0.0.0', '10.0.0.2')).toBeUndefined();
    expect(sourceAddress('::', 'fd00::2')).toBeUndefined();
    expect(sourceAddress('10.0.0.1', 'fd00::2')).toBeUndefined();
    expect(sourceAddress(null, '10.0.0.2')).toBeUndefined();
  });
});
