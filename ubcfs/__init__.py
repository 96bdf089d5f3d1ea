"""ubcfs: a userspace re-creation of NetBSD's unified buffer cache, mounted with FUSE.

This module deliberately imports nothing, so that importing ``ubcfs.vm`` never loads pyfuse3.
"""

__version__ = "0.1.0"
