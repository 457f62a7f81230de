"""Resolve the image paths a corpus names, and never read a file outside the image root.

A corpus is untrusted input: a row saying ``../../etc/passwd`` or ``/home/me/.ssh/id_rsa`` must not
turn the reader into a file-exfiltration tool (the bytes would land in the output dataset). Rules:

* relative paths resolve against the image root (``data.image_root``, default the data file's
  directory); a ``..`` component is refused outright, even when it would stay inside;
* absolute paths are read only when they resolve inside the root. There is no separate "allow"
  switch on purpose: the root *is* the allow-list, so a corpus that names absolute paths under
  ``/mnt/datasets/...`` is read by setting ``data.image_root=/mnt/datasets``;
* symlinks are followed, and the real path of the file finally opened must lie inside the root;
* URLs (``scheme://``) are refused: reading stays local and reproducible.

Every refusal is a ``PathError`` whose message becomes the row's error; the read goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePath


class PathError(ValueError):
    """An image path that may not or cannot be read; the message says why and names the path."""


def _inside(path: str, root: str) -> bool:
    return path == root or os.path.commonpath([path, root]) == root


@dataclass(frozen=True)
class ImageRoot:
    """The directory image paths are confined to (stored as its real, absolute path)."""

    root: str

    @classmethod
    def at(cls, directory: str | os.PathLike[str]) -> ImageRoot:
        real = os.path.realpath(os.fspath(directory))
        if not os.path.isdir(real):
            raise NotADirectoryError(f"image root is not a directory: {directory}")
        return cls(real)

    def resolve(self, ref: str) -> str:
        """The real path of ``ref`` if it may be read, else ``PathError``."""
        if not ref or not ref.strip():
            raise PathError("empty image path")
        if "://" in ref:
            raise PathError(f"image URL {ref!r} is not supported (only local files under the image root)")
        if ".." in PurePath(ref).parts:
            raise PathError(f"image path {ref!r} contains '..' (refused: paths stay inside the image root)")
        joined = os.path.normpath(ref if os.path.isabs(ref) else os.path.join(self.root, ref))
        real = os.path.realpath(joined)
        if not _inside(real, self.root):
            if not _inside(joined, self.root):
                raise PathError(
                    f"absolute image path {ref!r} is outside the image root {self.root} "
                    "(set data.image_root to a directory that contains it)"
                )
            raise PathError(f"image path {ref!r} leaves the image root {self.root} through a symlink")
        return real

    def read(self, ref: str) -> tuple[bytes, str]:
        """The bytes of the file ``ref`` names, and the real path they were read from."""
        path = self.resolve(ref)
        try:
            with open(path, "rb") as f:
                return f.read(), path
        except FileNotFoundError:
            raise PathError(f"image file not found: {ref!r}") from None
        except OSError as err:
            raise PathError(f"cannot read image file {ref!r}: {err.strerror or err}") from None
