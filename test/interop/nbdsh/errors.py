# Error paths, with libnbd's own checks off so the requests reach the server.
# After every error the same connection must still serve a read correctly,
# and a failed write must not have changed anything.
# Globals from the test: URI, SIZE.
import errno
import os

import nbd

h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(URI)
h.set_strict_mode(0)

known = os.urandom(4096)
h.pwrite(known, 0)
tail = os.urandom(4096)
h.pwrite(tail, SIZE - 4096)


def alive(what):
    assert h.aio_is_ready(), "%s: the connection is no longer usable" % what
    assert h.pread(4096, 0) == known, "%s: follow-up read returned other data" % what
    assert h.pread(4096, SIZE - 4096) == tail, "%s: the last 4 KiB changed" % what


def expect_errno(what, code, fn):
    try:
        fn()
    except nbd.Error as ex:
        if ex.errnum != code:
            raise AssertionError("%s: expected %s, got errno %s (%s)"
                                 % (what, errno.errorcode[code], ex.errno, ex.string))
    else:
        raise AssertionError("%s: expected %s, the request succeeded" % (what, errno.errorcode[code]))
    alive(what)


def noop_cb(*args):
    return 0


# Past the end, and crossing it, and an offset that wraps 64 bits.
WRAP = 2**64 - 512
expect_errno("read past the end", errno.EINVAL, lambda: h.pread(512, SIZE))
expect_errno("read crossing the end", errno.EINVAL, lambda: h.pread(1024, SIZE - 512))
expect_errno("read at an offset that wraps", errno.EINVAL, lambda: h.pread(1024, WRAP))
expect_errno("trim past the end", errno.EINVAL, lambda: h.trim(512, SIZE))
expect_errno("trim crossing the end", errno.EINVAL, lambda: h.trim(1024, SIZE - 512))
expect_errno("block status past the end", errno.EINVAL, lambda: h.block_status(512, SIZE, noop_cb))
expect_errno("block status at an offset that wraps", errno.EINVAL, lambda: h.block_status(1024, WRAP, noop_cb))
expect_errno("write past the end", errno.ENOSPC, lambda: h.pwrite(b"\x55" * 512, SIZE))
expect_errno("write crossing the end", errno.ENOSPC, lambda: h.pwrite(b"\x55" * 1024, SIZE - 512))
expect_errno("write at an offset that wraps", errno.ENOSPC, lambda: h.pwrite(b"\x55" * 1024, WRAP))
expect_errno("zero past the end", errno.ENOSPC, lambda: h.zero(512, SIZE))
expect_errno("zero crossing the end", errno.ENOSPC, lambda: h.zero(1024, SIZE - 512))

# Command flags the protocol does not define (bit 7 here).
UNKNOWN_FLAG = 1 << 7
expect_errno("read with an unknown flag", errno.EINVAL, lambda: h.pread(512, 0, UNKNOWN_FLAG))
expect_errno("write with an unknown flag", errno.EINVAL, lambda: h.pwrite(b"\x55" * 4096, 0, UNKNOWN_FLAG))
expect_errno("zero with an unknown flag", errno.EINVAL, lambda: h.zero(4096, 0, UNKNOWN_FLAG))
expect_errno("flush with an unknown flag", errno.EINVAL, lambda: h.flush(UNKNOWN_FLAG))

# FUA is accepted on any command once advertised (clients set it on reads).
assert h.pread(4096, 0, nbd.CMD_FLAG_FUA) == known, "read with FUA returned other data"
alive("read with FUA")

# Zero-length requests: an error or success, never a disconnect.
zero_length = [
    ("read", lambda: h.pread(0, 4096)),
    ("write", lambda: h.pwrite(b"", 4096)),
    ("zero", lambda: h.zero(0, 4096)),
    ("trim", lambda: h.trim(0, 4096)),
    ("cache", lambda: h.cache(0, 4096)),
    ("block status", lambda: h.block_status(0, 4096, noop_cb)),
    ("read at the end", lambda: h.pread(0, SIZE)),
]
for name, fn in zero_length:
    try:
        fn()
    except nbd.Error:
        pass
    alive("zero-length " + name)

h.shutdown()
print("ok")
