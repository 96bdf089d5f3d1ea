"""genfs: generic getpages/putpages over per-file objects (~ sys/miscfs/genfs)."""

from ubcfs import native

native.install()  # before any module of the package: the compiled core, if it is current
