"""VM core: physical memory, pages, pmap, counters and the DIAGNOSTIC checker (~ sys/uvm)."""
