# Prints LENGTH bytes at OFFSET of URI as hex (used to check data from the test).
import nbd

h = nbd.NBD()
h.connect_uri(URI)
print(h.pread(LENGTH, OFFSET).hex())
h.shutdown()
