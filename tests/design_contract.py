"""The ``ubcfs stat`` keys design.md section 4 promises, written out here rather than
imported from ubcfs.vm.stat, so that the tests that use them pin the contract."""

from __future__ import annotations

DESIGN_PAGES = ["total", "free", "active", "inactive", "wired", "dirty", "file", "anon"]
DESIGN_COUNTERS = [
    "faults",
    "pageins",
    "pageouts",
    "swapins",
    "swapouts",
    "pdwoke",
    "pdscans",
    "pdreact",
    "pdfreed",
    "pdpageouts",
    "pageout_failed",
    "zero_fills",
    "fastpath_skipped_zero",
    "readahead_pages",
    "ubc_hits",
    "ubc_misses",
    "unwire_skips",
    "pmap_enter",
    "pmap_remove",
    "pmap_update",
    "canfail_retries",
]
