"""The small C project of the ``build`` job, written here (no download): ``NFILES`` source
files of a few functions each, a header and a Makefile, packed into a tar file once per run.
The program it builds prints a checksum that ``expected_output`` computes in Python, so a
build that ran but produced a wrong program is caught.
"""

from __future__ import annotations

import io
import tarfile
from typing import Final

NFILES: Final = 36
FUNCS: Final = 6
TOP: Final = "ctree"
MASK: Final = (1 << 32) - 1


def _func_value(i: int, j: int, x: int) -> int:
    """What ``f<i>_<j>(x)`` returns (unsigned 32-bit arithmetic, as the C code does)."""
    acc = (x * (i + 3) + j) & MASK
    for k in range(j + 2):
        acc = (acc * 2654435761 + k + i) & MASK
        acc ^= acc >> 13
    return acc


def _source(i: int) -> str:
    funcs = []
    for j in range(FUNCS):
        funcs.append(
            f"uint32_t f{i}_{j}(uint32_t x)\n{{\n"
            f"    uint32_t acc = x * {i + 3}u + {j}u;\n"
            f"    for (uint32_t k = 0; k < {j + 2}u; k++) {{\n"
            f"        acc = acc * 2654435761u + k + {i}u;\n"
            "        acc ^= acc >> 13;\n"
            "    }\n"
            "    return acc;\n}\n"
        )
    table = ", ".join(f"f{i}_{j}" for j in range(FUNCS))
    return (
        '#include "common.h"\n\n'
        + "\n".join(funcs)
        + f"\nuint32_t unit{i}(uint32_t x)\n{{\n"
        + f"    uint32_t (*fs[])(uint32_t) = {{{table}}};\n"
        + "    uint32_t acc = x;\n"
        + f"    for (int j = 0; j < {FUNCS}; j++)\n"
        + "        acc ^= fs[j](acc);\n"
        + "    return acc;\n}\n"
    )


def _header() -> str:
    protos = "".join(f"uint32_t unit{i}(uint32_t x);\n" for i in range(NFILES))
    return f"#ifndef COMMON_H\n#define COMMON_H\n#include <stdint.h>\n{protos}#endif\n"


def _main() -> str:
    calls = "".join(f"    acc = unit{i}(acc);\n" for i in range(NFILES))
    return (
        '#include <stdio.h>\n#include "common.h"\n\nint main(void)\n{\n'
        f"    uint32_t acc = 1u;\n{calls}"
        '    printf("%u\\n", (unsigned)acc);\n    return 0;\n}\n'
    )


def _makefile() -> str:
    objs = " ".join(f"u{i}.o" for i in range(NFILES))
    return (
        "CC ?= cc\nCFLAGS ?= -O1\n"
        f"OBJS = main.o {objs}\n\n"
        "prog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\n"
        "%.o: %.c common.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\n"
        "clean:\n\trm -f prog $(OBJS)\n"
    )


def files() -> dict[str, str]:
    """Path (under ``TOP``) -> text."""
    out = {f"u{i}.c": _source(i) for i in range(NFILES)}
    out |= {"common.h": _header(), "main.c": _main(), "Makefile": _makefile()}
    return out


def tarball() -> bytes:
    """The tree as an uncompressed tar file (fixed times and owners: the same bytes
    every run)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo(TOP)
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        d.mtime = 1_700_000_000
        tf.addfile(d)
        for name, text in sorted(files().items()):
            data = text.encode()
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _unit_value(i: int, x: int) -> int:
    acc = x
    for j in range(FUNCS):
        acc ^= _func_value(i, j, acc)
    return acc


def expected_output() -> str:
    """What the built program prints."""
    acc = 1
    for i in range(NFILES):
        acc = _unit_value(i, acc)
    return f"{acc}\n"
