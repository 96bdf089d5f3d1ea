"""ubcfs: a userspace re-creation of NetBSD's unified buffer cache, mounted with FUSE.

This module imports only ``ubcfs.native`` (standard library only), so that importing
``ubcfs.vm`` never loads pyfuse3; that puts the compiled core in place when it is current.
"""

from ubcfs import native

native.install()  # before any module of the package: the compiled core, if it is current

__version__ = "0.1.0"
