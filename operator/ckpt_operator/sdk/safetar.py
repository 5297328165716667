"""Extract a tar without letting any member land outside the destination.

``tarfile``'s ``filter='data'`` already strips or refuses most dangerous members; this module
first refuses the whole archive, before writing anything, if any member has an absolute name,
a ``..`` component, is a link (symbolic or hard), a device or FIFO, or would resolve outside
the destination — checkpoints never contain such members, so their presence means the archive
was not written by the SDK.
"""

from __future__ import annotations

import os
import tarfile
from typing import IO, Any


class UnsafeTarError(ValueError):
    """An archive member could escape the destination or is of a refused type."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"refusing tar member {member!r}: {reason}")
        self.member = member
        self.reason = reason


def check_member(member: tarfile.TarInfo, dest: str) -> None:
    """Raise :class:`UnsafeTarError` unless ``member`` is a plain file or directory inside
    ``dest``."""
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        raise UnsafeTarError(name, "absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        raise UnsafeTarError(name, "path contains '..'")
    if member.issym() or member.islnk():
        raise UnsafeTarError(name, f"link to {member.linkname!r}")
    if member.ischr() or member.isblk():
        raise UnsafeTarError(name, "device file")
    if member.isfifo():
        raise UnsafeTarError(name, "FIFO")
    if not (member.isreg() or member.isdir()):
        raise UnsafeTarError(name, f"unsupported member type {member.type!r}")
    root = os.path.realpath(dest)
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root:
        raise UnsafeTarError(name, f"resolves outside {dest}")


def safe_extract(source: str | IO[bytes], dest: str) -> list[str]:
    """Extract every member of the uncompressed tar ``source`` into ``dest``; returns the
    member names. Nothing is written unless every member passes :func:`check_member`."""
    os.makedirs(dest, exist_ok=True)
    args: dict[str, Any] = {"name": source} if isinstance(source, str) else {"fileobj": source}
    with tarfile.open(mode="r:", **args) as tar:
        members = tar.getmembers()
        for member in members:
            check_member(member, dest)
        tar.extractall(dest, members=members, filter="data")
    return [m.name for m in members]
