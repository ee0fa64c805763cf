"""Who made an output folder: no command deletes or overwrites what it did not create.

Every folder a verb writes (``synth``, ``prepare``, ``train``, ``predict``, ``study``, ``demo``)
carries a small manifest, ``.cordfuse.json``: the verb that made it, the cordfuse version, and the
entries (top-level file and folder names) that verb wrote there. :func:`claim` is the one door into
an output folder:

* a new or empty folder is taken, and its manifest written;
* a folder made by the same verb is used again (each verb says what that means: ``prepare`` skips
  finished subjects, ``train --resume`` continues, ``study`` resumes);
* ``overwrite=True`` first removes the entries the manifest lists, and nothing else: a file the
  user put beside them stays;
* any other non-empty folder (no manifest, or made by another verb) is refused in one line.

The manifest is updated under an exclusive lock on the folder, so several processes (``--jobs``,
one cluster job per subject) can record their entries in the same folder.

Example:
    ``prepare`` claims a new folder and records a subject; ``train`` may not write there:

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     folder = claim(Path(tmp, "prepared"), "prepare")
    ...     folder.own("sub-001")
    ...     owned = folder.owned()
    ...     try:
    ...         claim(Path(tmp, "prepared"), "train")
    ...     except CordfuseError as exc:
    ...         refused = str(exc).split(": ", 1)[1]
    >>> owned
    ['sub-001']
    >>> refused
    'made by cordfuse prepare, not by cordfuse train (choose a new or empty folder)'
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cordfuse import __version__
from cordfuse.errors import CordfuseError
from cordfuse.io import atomic_write_text

MANIFEST = ".cordfuse.json"


@dataclass(frozen=True)
class OutputFolder:
    """An output folder claimed by one verb.

    Attributes:
        path: The folder.
        verb: The ``cordfuse`` verb that made it (``prepare``, ``train``, ...).
    """

    path: Path
    verb: str

    def own(self, *names: str) -> None:
        """Record top-level entries (file or folder names) as written by this verb.

        Args:
            *names: Names relative to the folder; only the first path component counts.
        """
        with locked(self.path):
            manifest = read_manifest(self.path) or _new_manifest(self.verb)
            entries = set(manifest["entries"]) | {Path(n).parts[0] for n in names}
            manifest["entries"] = sorted(entries)
            _write(self.path, manifest)

    def owned(self) -> list[str]:
        """The entries the manifest lists (whether or not they still exist)."""
        manifest = read_manifest(self.path)
        return list(manifest["entries"]) if manifest else []


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of ``folder``, or None when it has none (or an unreadable one).

    Args:
        folder: An output folder.

    Returns:
        The manifest (its ``verb`` and ``entries``), or None.
    """
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or "verb" not in manifest:
        return None
    manifest.setdefault("entries", [])
    return manifest


def claim(folder: str | Path, verb: str, *, overwrite: bool = False) -> OutputFolder:
    """Take ``folder`` as the output of ``verb`` (see the module docstring).

    Args:
        folder: The output folder (created with its parents when missing).
        verb: The verb writing it.
        overwrite: Remove the entries this verb wrote there before (never anything else).

    Returns:
        The claimed folder.

    Raises:
        CordfuseError: one line when the folder is a file, holds files cordfuse did not write,
            or was made by another verb.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise CordfuseError(f"{path}: exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    with locked(path):
        manifest = read_manifest(path)
        if manifest is None:
            if any(p.name != MANIFEST for p in path.iterdir()):
                raise CordfuseError(
                    f"{path}: folder is not empty and was not made by cordfuse {verb}; "
                    "cordfuse never writes into a folder it did not create (choose a new or "
                    "empty folder)"
                )
            _write(path, _new_manifest(verb))
        elif manifest["verb"] != verb:
            raise CordfuseError(
                f"{path}: made by cordfuse {manifest['verb']}, not by cordfuse "
                f"{verb} (choose a new or empty folder)"
            )
        elif overwrite:
            for name in manifest["entries"]:
                _remove(path / name)
            _write(path, _new_manifest(verb))
    return OutputFolder(path, verb)


def _new_manifest(verb: str) -> dict:
    return {
        "verb": verb,
        "cordfuse_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "entries": [],
    }


def _write(folder: Path, manifest: dict) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the folder itself (no lock file to clean up), across processes: for
    read-modify-write of a file several processes share (the manifest, a dataset summary).

    Args:
        folder: An existing folder.

    Returns:
        A context manager that holds the lock while its block runs.
    """
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing releases the lock
