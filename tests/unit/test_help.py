"""Every command's ``--help`` ends with an example (issue 12's docs point): walked over the
real parser, so a command added without one fails here."""

from __future__ import annotations

import argparse

from ubcfs.cli import build_parser


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = _commands(sub, (*path, name))
                found += inner or [((*path, name), sub)]
    return found


def test_every_command_has_an_example_in_its_help() -> None:
    commands = _commands(build_parser())
    assert len(commands) > 20, [" ".join(p) for p, _ in commands]
    missing = [
        " ".join(path) for path, sub in commands if "example" not in (sub.epilog or "").lower()
    ]
    assert missing == []
    for path, sub in commands:
        assert f"ubcfs {path[0]}" in (sub.epilog or "") or path[0] == "ctl", path
        if path[0] == "ctl":
            assert f" {path[1]}" in (sub.epilog or ""), path
