"""The token file as kubelet rotates it, and as it may be caught half-written or damaged:
the sidecar keeps sending the last good token rather than an empty or unsendable one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.tokens import FileToken


def _swap(directory: Path, content: bytes, generation: int) -> None:
    """kubelet's way: write a new folder, then flip the `..data` symlink atomically."""
    data = directory / f"..{generation}"
    data.mkdir()
    (data / "token").write_bytes(content)
    link = directory / "..data_tmp"
    link.symlink_to(data.name)
    os.replace(link, directory / "..data")


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        pytest.param(b"token-two\n", "token-two", id="rotated"),
        pytest.param(b"", "token-one", id="empty-keeps-the-last"),
        pytest.param(b"\n  \n", "token-one", id="blank-keeps-the-last"),
        pytest.param(b"\xff\xfe", "token-one", id="not-utf8-keeps-the-last"),
    ],
)
def test_a_rotated_token_file_is_read_again(tmp_path: Path, second: bytes, expected: str) -> None:
    _swap(tmp_path, b"token-one\n", 1)
    (tmp_path / "token").symlink_to("..data/token")
    tokens = FileToken(str(tmp_path / "token"))
    assert tokens.token() == "token-one"
    _swap(tmp_path, second, 2)
    assert tokens.token() == expected


def test_a_missing_file_keeps_the_last_token_and_a_later_one_is_read(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("token-one")
    tokens = FileToken(str(path))
    assert tokens.token() == "token-one"
    path.unlink()
    assert tokens.token() == "token-one"
    path.write_text("token-three")
    assert tokens.token() == "token-three"


def test_an_empty_file_is_read_again_once_written(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("")
    tokens = FileToken(str(path))
    assert tokens.token() == ""
    path.write_text("token-one")
    assert tokens.token() == "token-one"
