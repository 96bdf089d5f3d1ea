"""The control channel: a unix socket per mount speaking JSON lines (design.md section 4).

``protocol`` (wire format, validation, where a mount's socket lives) and ``client`` are stdlib
only, for the CLI; ``server`` runs inside the daemon under trio.  This package imports none of
them, so that the CLI loads only what it needs.
"""
