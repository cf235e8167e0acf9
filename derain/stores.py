"""Folders of a batch: a local (or shared) path, or an object-store prefix such as ``s3://bucket/photos``.

Object stores go through pyarrow's filesystems (installed with ``derain[ray]``), which take their
credentials and endpoint from the usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL`` …).
A local folder and an object-store prefix are searched by the same rules (recursive, sorted,
hidden files and the output tree left out), so both engines of ``derain batch`` find the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from .files import same_file

OUTPUT_SUFFIX = "_derained"


def is_uri(location: str | os.PathLike | None) -> bool:
    """True for an object-store location such as ``s3://bucket/prefix``."""
    return location is not None and "://" in str(location)


@dataclass
class Store:
    """A batch folder: ``fs`` is None for a local path, else a picklable pyarrow filesystem.

    ``root`` is the local path as given, or the store's path (``bucket/prefix``) with ``scheme``.
    """

    root: PurePath
    fs: Any = None
    scheme: str = ""
    _listing: set[PurePosixPath] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def at(cls, location: str | os.PathLike) -> Store:
        if not is_uri(location):
            return cls(Path(location))
        import pyarrow.fs

        text = str(location).rstrip("/")
        fs, root = pyarrow.fs.FileSystem.from_uri(text)
        return cls(PurePosixPath(root), fs, text.split("://", 1)[0])

    def __str__(self) -> str:
        return self.uri(self.root)

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def sibling(self, suffix: str = OUTPUT_SUFFIX) -> Store:
        """The default output folder: ``<name><suffix>`` beside this one (also for ``.`` and ``..``)."""
        if not self.remote:
            root = Path(self.root).resolve()
            return Store(root.with_name(root.name + suffix))
        return Store(self.root.with_name(self.root.name + suffix), self.fs, self.scheme)

    def uri(self, path: PurePath) -> str:
        """How the user names ``path``: as given locally, ``scheme://bucket/key`` on a store."""
        return f"{self.scheme}://{path}" if self.remote else str(path)

    def native(self, path: PurePath) -> str:
        """How a worker on another machine or in another folder reaches ``path``."""
        return str(path) if self.remote else str(Path(path).absolute())

    def is_dir(self) -> bool:
        if not self.remote:
            return Path(self.root).is_dir()
        import pyarrow.fs

        return self.fs.get_file_info(str(self.root)).type == pyarrow.fs.FileType.Directory

    def same_as(self, other: Store) -> bool:
        if self.remote or other.remote:
            return self.remote and other.remote and self.scheme == other.scheme and self.root == other.root
        return same_file(Path(self.root), Path(other.root))

    def files(self, wanted: Callable[[Path], bool], exclude: Store | None = None) -> list[PurePath]:
        """Every ``wanted`` file under the root, recursively, sorted, skipping hidden files and ``exclude``'s
        tree where it lies inside the root (so a rerun does not take the outputs for inputs); an
        ``exclude`` that holds the root, such as ``-o .`` for a sub-folder, skips nothing."""
        if self.remote:
            found: Iterable[PurePath] = sorted(self._files())
            root, skip = self.root, exclude.root if exclude is not None and exclude.remote else None
            where: Callable[[PurePath], PurePath] = lambda path: path  # noqa: E731
        else:
            found = (path for path in sorted(Path(self.root).rglob("*")) if path.is_file())
            root = Path(self.root).resolve()
            skip = Path(exclude.root).resolve() if exclude is not None and not exclude.remote else None
            where = lambda path: Path(path).resolve()  # noqa: E731  (through links, as the output tree is named)
        if skip is not None and root not in skip.parents:
            skip = None
        return [
            path
            for path in found
            if wanted(Path(path.name))
            and not path.name.startswith(".")
            and not (skip is not None and (where(path) == skip or skip in where(path).parents))
        ]

    def exists(self, path: PurePath) -> bool:
        """Whether ``path`` (under the root) is there; a store is listed once, not asked file by file."""
        return Path(path).exists() if not self.remote else path in self._files()

    def _files(self) -> set[PurePosixPath]:
        if self._listing is None:
            import pyarrow.fs

            selector = pyarrow.fs.FileSelector(str(self.root), recursive=True, allow_not_found=True)
            infos = self.fs.get_file_info(selector)
            self._listing = {PurePosixPath(i.path) for i in infos if i.type == pyarrow.fs.FileType.File}
        return self._listing
