import { describe, expect, it } from 'vitest';
import { AllowList } from '../../src/nbd/allow-list.js';

describe('AllowList', () => {
  it('empty means everyone', () => {
    expect(new AllowList([]).allows('203.0.113.9')).toBe(true);
  });

  it('matches IPv4 addresses and CIDRs, also as IPv4-mapped IPv6', () => {
    const a = new AllowList(['10.0.0.0/8', '192.0.2.7']);
    expect(a.allows('10.200.1.1')).toBe(true);
    expect(a.allows('::ffff:10.200.1.1')).toBe(true);
    expect(a.allows('192.0.2.7')).toBe(true);
    expect(a.allows('192.0.2.8')).toBe(false);
    expect(a.allows('11.0.0.1')).toBe(false);
    expect(a.allows('::ffff:11.0.0.1')).toBe(false);
  });

  it('matches IPv6 addresses and prefixes, bracketed or not', () => {
    const a = new AllowList(['fd00::/8', '[2001:db8::1]']);
    expect(a.allows('fd12:3456::1')).toBe(true);
    expect(a.allows('2001:db8::1')).toBe(true);
    expect(a.allows('2001:db8::2')).toBe(false);
    expect(a.allows('127.0.0.1')).toBe(false);
  });

  it('refuses what it cannot check, and bad entries loudly', () => {
    const a = new AllowList(['127.0.0.1']);
    expect(a.allows(undefined)).toBe(false);
    expect(a.allows('localhost')).toBe(false);
    expect(() => new AllowList(['10.0.0.0/33'])).toThrow(/prefix/);
    expect(() => new AllowList(['host.example'])).toThrow(/host.example/);
    expect(() => new AllowList(['10.0.0.0/x'])).toThrow(/prefix/);
  });
});
