# Writes and reads back random blocks for SECONDS, every read checked, and
# finally the whole region against what was written. Prints the round count.
# Globals from the test: URI, SECONDS, OFFSET, LENGTH.
import os
import random
import time

import nbd

h = nbd.NBD()
h.connect_uri(URI)
BLOCK = 64 * 1024
model = bytearray(h.pread(LENGTH, OFFSET))
rounds = 0
deadline = time.monotonic() + SECONDS
while time.monotonic() < deadline:
    at = random.randrange(0, LENGTH - BLOCK + 1, 512)
    data = os.urandom(BLOCK)
    h.pwrite(data, OFFSET + at)
    model[at:at + BLOCK] = data
    got = h.pread(BLOCK, OFFSET + at)
    assert got == data, "round %d: read back other data at %d" % (rounds, OFFSET + at)
    rounds += 1
assert h.pread(LENGTH, OFFSET) == bytes(model), "region differs from what was written"
h.shutdown()
print(rounds)
