import { describe, expect, it } from 'vitest';
import { BlockStoreError } from '../../native-free-io/block-store.js';
import { nbdErrnoFromError, nbdErrnoFromName, nbdErrnoName } from '../../src/nbd/errno.js';

describe('NBD errno mapping', () => {
  it('maps the names the protocol knows to their wire numbers', () => {
    expect(['EPERM', 'EIO', 'ENOMEM', 'EINVAL', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN'].map(nbdErrnoFromName)).toEqual([1, 5, 12, 22, 28, 75, 95, 108]);
  });

  it('maps quota and file-size limits to ENOSPC, read-only to EPERM, anything else to EIO', () => {
    expect(nbdErrnoFromName('EDQUOT')).toBe(28);
    expect(nbdErrnoFromName('EFBIG')).toBe(28);
    expect(nbdErrnoFromName('EROFS')).toBe(1);
    expect(nbdErrnoFromName('EBADF')).toBe(5);
    expect(nbdErrnoFromName(undefined)).toBe(5);
  });

  it('reads errno from export errors, code from Node errors, EIO otherwise', () => {
    expect(nbdErrnoFromError(new BlockStoreError('ENOSPC', 'write', 0, 1))).toBe(28);
    expect(nbdErrnoFromError(Object.assign(new Error('x'), { code: 'EDQUOT' }))).toBe(28);
    expect(nbdErrnoFromError(new Error('plain'))).toBe(5);
    expect(nbdErrnoFromError('a string')).toBe(5);
    expect(nbdErrnoFromError(null)).toBe(5);
    expect(nbdErrnoName(108)).toBe('ESHUTDOWN');
  });
});
