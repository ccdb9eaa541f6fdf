# Option haggling, one option at a time (option mode).
# Globals from the test: URI (naming the export), BASE (no export name), EXPORT, SIZE.
import errno

import nbd

h = nbd.NBD()
h.set_opt_mode(True)
h.set_full_info(True)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(URI)
assert h.aio_is_negotiating(), "not negotiating after connect in option mode"
assert h.get_protocol() == "newstyle-fixed", h.get_protocol()
# libnbd 1.14 asks for structured replies before handing over option mode.
assert h.get_structured_replies_negotiated(), "structured replies not negotiated"

# LIST
names = []
h.opt_list(lambda name, desc: names.append(name) or 0)
assert EXPORT in names, "opt_list returned %r" % names

# INFO
h.opt_info()
assert h.get_size() == SIZE, "opt_info size %d, expected %d" % (h.get_size(), SIZE)
assert h.can_flush() and h.can_fua() and h.can_zero() and not h.is_read_only()
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096, h.get_block_size(nbd.SIZE_PREFERRED)
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * 1024 * 1024, h.get_block_size(nbd.SIZE_MAXIMUM)
assert h.get_canonical_export_name() == EXPORT, h.get_canonical_export_name()
assert h.aio_is_negotiating(), "opt_info left negotiation"

# LIST_META_CONTEXT: all contexts, then a query for base:allocation only.
contexts = []
h.opt_list_meta_context(lambda name: contexts.append(name) or 0)
assert nbd.CONTEXT_BASE_ALLOCATION in contexts, "contexts %r" % contexts
h.clear_meta_contexts()
h.add_meta_context("base:allocation")
h.add_meta_context("x-no-such-namespace:thing")
contexts = []
n = h.opt_list_meta_context(lambda name: contexts.append(name) or 0)
assert contexts == [nbd.CONTEXT_BASE_ALLOCATION], "contexts %r" % contexts
assert n == 1, n

# An unknown export: a clear error (NBD_REP_ERR_UNKNOWN, which libnbd reports
# as ENOENT), and the handle stays usable.
h.set_export_name("no-such-export")
for what, fn in (("opt_info", h.opt_info), ("opt_go", h.opt_go)):
    try:
        fn()
    except nbd.Error as ex:
        assert ex.errnum == errno.ENOENT, "%s on an unknown export: errno %s (%s)" % (what, ex.errno, ex.string)
    else:
        raise AssertionError("%s on an unknown export succeeded" % what)
    assert h.aio_is_negotiating(), "%s on an unknown export ended negotiation" % what

# ...then GO on the right one, and transmission works.
h.set_export_name(EXPORT)
h.opt_go()
assert h.aio_is_ready(), "not ready after opt_go"
assert h.get_size() == SIZE
h.pwrite(b"opt-mode", 4096)
assert h.pread(8, 4096) == b"opt-mode"
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.shutdown()

# The empty export name through option mode.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(BASE)
h.opt_info()
assert h.get_size() == SIZE, "empty name: size %d" % h.get_size()
h.opt_go()
assert h.pread(8, 4096) == b"opt-mode", "empty name reached other data"
h.shutdown()

# ABORT: the server acknowledges and the connection closes cleanly.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(URI)
h.opt_abort()
assert h.aio_is_closed(), "not closed after opt_abort"

print("ok")
