# Every transmission command, with the data checked.
# Globals from the test: URI, SIZE.
import errno
import os

import nbd

h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(URI)
assert h.get_size() == SIZE, "size %d, expected %d" % (h.get_size(), SIZE)
assert h.get_structured_replies_negotiated(), "structured replies not negotiated"
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not negotiated"

MIB = 1024 * 1024
# With a 512-byte minimum block size unaligned requests are not allowed (and
# libnbd refuses them); with 1 they must work.
MINIMUM = h.get_block_size(nbd.SIZE_MINIMUM)
assert MINIMUM in (1, 512), "minimum block size %d" % MINIMUM
UNALIGNED = MINIMUM == 1


def check(off, expected, what):
    got = h.pread(len(expected), off)
    if got != expected:
        first = next(i for i in range(len(got)) if got[i] != expected[i])
        raise AssertionError("%s: data differs at offset %d (byte %d of the read): got %r, expected %r"
                             % (what, off + first, first, got[first:first + 16], expected[first:first + 16]))


# pread / pwrite, aligned and unaligned.
a = os.urandom(64 * 1024)
h.pwrite(a, 1 * MIB)
check(1 * MIB, a, "aligned pwrite")
b = os.urandom(1000)
if UNALIGNED:
    h.pwrite(b, 1 * MIB + 123)
    check(1 * MIB, a[:123] + b + a[1123:], "unaligned pwrite inside written data")
    # A write crossing a 4 KiB boundary from an odd offset.
    c = os.urandom(5000)
    h.pwrite(c, 2 * MIB - 2500 + 1)
    check(2 * MIB - 2500 + 1, c, "pwrite across a block boundary")
else:
    b = a[123:1123]

# The very last byte, and the last 4 KiB.
tail = os.urandom(4096)
h.pwrite(tail, SIZE - 4096)
check(SIZE - 4096, tail, "pwrite at the end of the export")
if UNALIGNED:
    h.pwrite(b"\xee", SIZE - 1)
    check(SIZE - 4096, tail[:-1] + b"\xee", "one byte at the end")

# FUA write, then FLUSH.
assert h.can_fua()
d = os.urandom(32 * 1024)
h.pwrite(d, 3 * MIB, nbd.CMD_FLAG_FUA)
check(3 * MIB, d, "FUA pwrite")
assert h.can_flush()
h.flush()
check(3 * MIB, d, "after flush")

# A 4 MiB write in one request (well under the 32 MiB maximum).
big = os.urandom(4 * MIB)
h.pwrite(big, 8 * MIB)
check(8 * MIB, big, "4 MiB pwrite")

# DF read: one chunk, same data.
assert h.can_df()
chunks = []


def chunk(subbuf, offset, status, err):
    chunks.append((offset, status, bytes(subbuf)))
    return 0


got = h.pread_structured(64 * 1024, 1 * MIB, chunk, nbd.CMD_FLAG_DF)
assert got == a[:123] + b + a[1123:], "DF read returned other data"
assert len(chunks) == 1, "DF read came in %d chunks" % len(chunks)
assert chunks[0][0] == 1 * MIB and chunks[0][1] == nbd.READ_DATA, "DF chunk %r" % (chunks[0][:2],)

# WRITE_ZEROES, plain and with NO_HOLE; the neighbours stay intact.
assert h.can_zero()
e = os.urandom(3 * 4096)
h.pwrite(e, 4 * MIB)
h.zero(4096, 4 * MIB + 4096)
check(4 * MIB, e[:4096] + bytes(4096) + e[8192:], "zero")
h.pwrite(e, 4 * MIB)
h.zero(4096, 4 * MIB + 4096, nbd.CMD_FLAG_NO_HOLE)
check(4 * MIB, e[:4096] + bytes(4096) + e[8192:], "zero NO_HOLE")
if UNALIGNED:
    h.pwrite(e, 4 * MIB)
    h.zero(1000, 4 * MIB + 100)
    check(4 * MIB, e[:100] + bytes(1000) + e[1100:], "unaligned zero")

# FAST_ZERO: when advertised it either zeroes or fails fast with ENOTSUP.
# When not advertised libnbd refuses to send it; sent anyway (strict mode
# off), the server must answer with an error, not zero slowly or hang up.
h.pwrite(e, 4 * MIB)
if h.can_fast_zero():
    try:
        h.zero(4096, 4 * MIB + 4096, nbd.CMD_FLAG_FAST_ZERO)
        check(4 * MIB, e[:4096] + bytes(4096) + e[8192:], "fast zero")
    except nbd.Error as ex:
        assert ex.errnum == errno.ENOTSUP, "fast zero failed with %s, expected ENOTSUP" % ex
else:
    try:
        h.zero(4096, 4 * MIB + 4096, nbd.CMD_FLAG_FAST_ZERO)
        raise AssertionError("libnbd sent FAST_ZERO although can_fast_zero is false")
    except nbd.Error:
        pass
    h.set_strict_mode(0)
    try:
        h.zero(4096, 4 * MIB + 4096, nbd.CMD_FLAG_FAST_ZERO)
        raise AssertionError("unadvertised FAST_ZERO succeeded")
    except nbd.Error as ex:
        assert ex.errnum in (errno.ENOTSUP, errno.EINVAL), \
            "unadvertised FAST_ZERO failed with %s, expected ENOTSUP or EINVAL" % ex
    h.set_strict_mode(nbd.STRICT_MASK)
    check(1 * MIB, a[:123] + b + a[1123:], "read after refused fast zero")

# TRIM: a hint; the data around it must survive. Not advertised: libnbd refuses.
h.pwrite(e, 5 * MIB)
if h.can_trim():
    h.trim(4096, 5 * MIB + 4096)
    check(5 * MIB, e[:4096], "before trimmed block")
    check(5 * MIB + 8192, e[8192:], "after trimmed block")
else:
    try:
        h.trim(4096, 5 * MIB + 4096)
        raise AssertionError("libnbd sent TRIM although can_trim is false")
    except nbd.Error:
        pass
    check(5 * MIB, e, "trim not advertised: data unchanged")

# CACHE: a prefetch hint, data unchanged.
assert h.can_cache()
h.cache(64 * 1024, 1 * MIB)
check(1 * MIB, a[:123] + b + a[1123:], "after cache")

# BLOCK_STATUS.
def extents(length, off, flags=0):
    seen = []

    def cb(ctx, offset, entries, err):
        assert ctx == nbd.CONTEXT_BASE_ALLOCATION, "unexpected context %r" % ctx
        assert offset == off, "extent callback offset %d, expected %d" % (offset, off)
        seen.append(list(entries))
        return 0

    h.block_status(length, off, cb, flags)
    assert len(seen) == 1, "expected one base:allocation chunk, got %d" % len(seen)
    ents = seen[0]
    pairs = [(ents[i], ents[i + 1]) for i in range(0, len(ents), 2)]
    assert pairs, "no extents"
    for ln, fl in pairs:
        assert ln > 0, "zero-length extent in %r" % pairs
    return pairs


# Data just written must never be reported as reading zero.
h.pwrite(os.urandom(64 * 1024), 6 * MIB)
one = extents(64 * 1024, 6 * MIB, nbd.CMD_FLAG_REQ_ONE)
assert len(one) == 1, "REQ_ONE answered with %d extents" % len(one)
ln, fl = one[0]
assert ln <= 64 * 1024, "REQ_ONE extent %d longer than the request" % ln
assert not (fl & nbd.STATE_ZERO), "written data reported as zero (flags %d)" % fl
pos = 6 * MIB
for ln, fl in extents(64 * 1024, 6 * MIB):
    if pos >= 6 * MIB + 64 * 1024:
        break
    assert not (fl & nbd.STATE_ZERO), "written data at %d reported as zero (flags %d)" % (pos, fl)
    pos += ln

# The whole export, walked by block status, adds up to the size.
pos = 0
while pos < SIZE:
    n = min(SIZE - pos, 32 * MIB)
    pairs = extents(n, pos)
    pos += sum(ln for ln, _ in pairs)
assert pos >= SIZE

h.shutdown()
print("ok")
