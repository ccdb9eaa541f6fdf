import { describe, expect, it } from 'vitest';
import { LineSplitter, decodeRequest, errorResponse } from '../../src/daemon/control-protocol.js';
import { MirrorError } from '../../src/errors.js';

describe('control requests', () => {
  it('decodes every command', () => {
    expect(decodeRequest('{"id":1,"cmd":"ping"}')).toEqual({ ok: true, request: { id: 1, cmd: 'ping' } });
    expect(decodeRequest('{"id":2,"cmd":"up","resource":"r0","configFile":"/etc/m.conf"}')).toEqual({
      ok: true,
      request: { id: 2, cmd: 'up', resource: 'r0', configFile: '/etc/m.conf' },
    });
    expect(decodeRequest('{"id":3,"cmd":"primary","resource":"r0","force":true}')).toEqual({
      ok: true,
      request: { id: 3, cmd: 'primary', resource: 'r0', force: true },
    });
    expect(decodeRequest('{"id":4,"cmd":"secondary","resource":"r0"}')).toEqual({
      ok: true,
      request: { id: 4, cmd: 'secondary', resource: 'r0', force: false },
    });
    expect(decodeRequest('{"id":5,"cmd":"status"}')).toEqual({ ok: true, request: { id: 5, cmd: 'status', resource: null } });
    expect(decodeRequest('{"id":6,"cmd":"down","resource":"r0"}')).toEqual({ ok: true, request: { id: 6, cmd: 'down', resource: 'r0' } });
  });

  const bad: Array<[string, RegExp, number | null]> = [
    ['not json', /not valid JSON/, null],
    ['[1,2]', /JSON object/, null],
    ['{"cmd":"ping"}', /integer "id"/, null],
    ['{"id":1.5,"cmd":"ping"}', /integer "id"/, null],
    ['{"id":1,"cmd":"mkfs"}', /unknown command/, 1],
    ['{"id":1}', /unknown command/, 1],
    ['{"id":1,"cmd":"primary"}', /needs a "resource"/, 1],
    ['{"id":1,"cmd":"primary","resource":""}', /needs a "resource"/, 1],
    ['{"id":1,"cmd":"primary","resource":"r0","force":"yes"}', /"force" must be/, 1],
    ['{"id":1,"cmd":"up","resource":"r0"}', /needs a "configFile"/, 1],
    ['{"id":1,"cmd":"status","resource":7}', /must be a string/, 1],
  ];
  for (const [line, message, id] of bad) {
    it(`refuses ${line}`, () => {
      const d = decodeRequest(line);
      expect(d.ok).toBe(false);
      if (!d.ok) {
        expect(d.error.code).toBe('ERR_BAD_COMMAND');
        expect(d.error.message).toMatch(message);
        expect(d.id).toBe(id);
      }
    });
  }

  it('error responses carry the stable code; foreign errors become ERR_INTERNAL', () => {
    expect(errorResponse(3, new MirrorError('ERR_NOT_UP', 'r0 is not up'))).toEqual({
      id: 3,
      ok: false,
      error: { code: 'ERR_NOT_UP', message: 'r0 is not up', details: {} },
    });
    expect(errorResponse(4, new Error('boom'))).toMatchObject({ ok: false, error: { code: 'ERR_INTERNAL', message: 'boom' } });
  });
});

describe('line splitting', () => {
  it('joins lines across every split point', () => {
    const text = '{"id":1,"cmd":"ping"}\n{"id":2,"cmd":"status"}\n';
    for (let cut = 0; cut <= text.length; cut++) {
      const s = new LineSplitter();
      const lines = [...s.push(text.slice(0, cut)), ...s.push(text.slice(cut))];
      expect(lines).toEqual(['{"id":1,"cmd":"ping"}', '{"id":2,"cmd":"status"}']);
    }
  });

  it('refuses a line longer than the limit before it ends', () => {
    const s = new LineSplitter(100);
    expect(() => s.push('x'.repeat(101))).toThrow(/longer than 100 bytes/);
    // and recovers for the next line
    expect(s.push('{"id":1}\n')).toEqual(['{"id":1}']);
  });
});
