"""ubcfs.ctl.protocol: request/reply validation and addressing."""

from __future__ import annotations

import json
import os

import pytest

from ubcfs.ctl import protocol
from ubcfs.ctl.protocol import ProtocolError


def test_request_round_trip() -> None:
    line = protocol.encode_request("inject", {"kind": "backing-read", "count": 2})
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    req = protocol.decode_request(line[:-1])
    assert (req.cmd, req.args) == ("inject", {"kind": "backing-read", "count": 2})
    assert protocol.decode_request(b'{"cmd": "ping"}').args == {}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"nope", "bad JSON"),
        (b"", "bad JSON"),
        (b"\xff\xfe", "bad JSON"),
        (b"[1]", "JSON object"),
        (b"null", "JSON object"),
        (b'{"cmd": 1}', "'cmd'"),
        (b'{"cmd": ""}', "'cmd'"),
        (b'{"cmd": "a\\nb"}', "not a command name"),
        (b'{"cmd": "' + b"x" * 100 + b'"}', "not a command name"),
        (b'{"cmd": "ping", "args": []}', "'args'"),
        (b'{"cmd": "ping", "other": 1}', "unexpected request key"),
        (b'{"cmd": "ping", "args": {"x": NaN}}', "NaN"),
        (b'{"cmd": "ping", "args": {"x": -Infinity}}', "Infinity"),
        (b"[" * 60_000, "nested too deeply"),
        (b"x" * (protocol.MAX_LINE + 1), "too long"),
    ],
)
def test_bad_requests(line: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why) as e:
        protocol.decode_request(line)
    assert "\n" not in str(e.value)


def test_replies() -> None:
    ok = protocol.decode_reply(protocol.encode(protocol.ok_reply({"a": 1}))[:-1])
    assert (ok.ok, ok.result, ok.error) == (True, {"a": 1}, "")
    err = protocol.decode_reply(protocol.encode(protocol.error_reply("two\nlines"))[:-1])
    assert (err.ok, err.result, err.error) == (False, None, "two lines")
    for bad in (b"[]", b'{"ok": 1}', b'{"ok": false, "error": 5}', b"}"):
        with pytest.raises(ProtocolError):
            protocol.decode_reply(bad)


def test_argument_helpers() -> None:
    args = {"s": "text", "i": 5, "b": True, "f": 1.0, "n": None}
    protocol.check_keys(args, ("s", "i"), ("b", "f", "n"))
    with pytest.raises(ProtocolError, match="missing"):
        protocol.check_keys(args, ("s", "zz"), ("i", "b", "f", "n"))
    with pytest.raises(ProtocolError, match="unexpected"):
        protocol.check_keys(args, ("s",))
    assert protocol.arg_str(args, "s") == "text"
    assert protocol.arg_int(args, "i", 0, 10) == 5
    for name in ("s", "b", "f", "n", "missing"):
        with pytest.raises(ProtocolError, match="integer"):
            protocol.arg_int(args, name)
    with pytest.raises(ProtocolError, match="out of range"):
        protocol.arg_int(args, "i", 6)
    with pytest.raises(ProtocolError, match="string"):
        protocol.arg_str(args, "i")
    with pytest.raises(ProtocolError, match="too long"):
        protocol.arg_str(args, "s", 2)


def test_socket_paths() -> None:
    assert protocol.mount_key("/a/b") == protocol.mount_key("/a/b/")
    assert protocol.mount_key("/a/b") != protocol.mount_key("/a/c")
    assert protocol.runtime_dir(0) == "/run/ubcfs"
    assert protocol.runtime_dir_candidates(0) == ["/run/ubcfs"]
    other = protocol.runtime_dir_candidates(54321)
    assert "/tmp/ubcfs-54321" in other
    assert "/run/user/54321/ubcfs" in other
    path = protocol.socket_path("/mnt/x", 0)
    assert path.startswith("/run/ubcfs/")
    assert path.endswith(".sock")
    assert len(os.fsencode(path)) < 100  # fits sun_path


def test_mountinfo() -> None:
    line = (
        "36 35 0:52 / /tmp/with\\040space rw,nosuid,nodev,relatime shared:1 - fuse.ubcfs"
        " ubcfs:/srv/back rw,user_id=1000,group_id=1000,default_permissions\n"
    )
    e = protocol.parse_mountinfo_line(line)
    assert e is not None
    assert (e.mountpoint, e.fstype, e.source, e.owner_uid) == (
        "/tmp/with space",
        "fuse.ubcfs",
        "ubcfs:/srv/back",
        1000,
    )
    assert protocol.parse_mountinfo_line("garbage\n") is None
    root = protocol.mount_entry("/")
    assert root is not None
    assert root.mountpoint == "/"
    assert protocol.mount_entry("/surely/not/mounted/here") is None
    assert json.loads(protocol.encode(protocol.error_reply(""))) == {
        "ok": False,
        "result": None,
        "error": "error",
    }
