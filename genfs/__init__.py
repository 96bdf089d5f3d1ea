"""genfs: generic getpages/putpages over per-file objects (~ sys/miscfs/genfs)."""
