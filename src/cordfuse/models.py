"""Packaged models: a trained model or ensemble in one zip a user can hand on, install and predict
with.

:func:`export_model` packs training runs into a zip that holds exactly these files:

* ``manifest.json``: ``{"format": "cordfuse-model", "format_version": 1, "files": {name:
  sha256}}``, the SHA-256 of every other file;
* ``model.json`` and ``MODEL.md``: the model card (:mod:`cordfuse.model_card`) for machines and
  for people;
* ``checkpoints/model-1.pt``, ``model-2.pt``, ...: each member's checkpoint without its training
  state (optimiser, RNG, subject split): the weights and what rebuilds the network.

A model's SHA-256 is that of its manifest, which names every other file's: the same for the zip,
its installed copy and the records ``predict`` writes.

A zip or an installed model is accepted only when it holds exactly those files (no other file,
folder or link, no path out of its folder) and every file's SHA-256 is the manifest's; that is
checked before any checkpoint is read, and checkpoints are then read weights-only
(:class:`cordfuse.checkpoint.Checkpoint`), so a package never runs code.

Installed models live in ``<data dir>/models/NAME/`` (the user data directory of
``platformdirs``, or ``$CORDFUSE_HOME``); a zip given to ``predict`` is unpacked once into a
cache, named by its SHA-256, which may be deleted at any time.

Example:
    An untrained baseline exported, refused once tampered with:

    >>> import tempfile, zipfile
    >>> from cordfuse.nn.networks import NET_PRESETS
    >>> from cordfuse.preprocess.pipeline import PrepConfig
    >>> from cordfuse.checkpoint import Checkpoint, initial_network
    >>> from cordfuse.training.config import TrainConfig
    >>> config = TrainConfig(model="baseline", preset="small")
    >>> weights = initial_network(config, config.net, ["T2Sag"]).state_dict()
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     Checkpoint(weights, config, NET_PRESETS["small"], ["T2Sag"], PrepConfig()).save(
    ...         Path(tmp, "run.pt"))
    ...     package = export_model([Path(tmp, "run.pt")], Path(tmp, "demo.zip"))
    ...     names = sorted(zipfile.ZipFile(package.path).namelist())
    ...     with zipfile.ZipFile(package.path, "a") as archive:
    ...         archive.writestr("run_me.py", "print('hello')")
    ...     try:
    ...         verify_zip(package.path)
    ...     except CordfuseError as exc:
    ...         refused = str(exc).split(": ", 1)[1]
    >>> names
    ['MODEL.md', 'checkpoints/model-1.pt', 'manifest.json', 'model.json']
    >>> refused
    'refused, nothing loaded (unexpected file run_me.py)'
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, NoReturn

import torch

from cordfuse import __version__
from cordfuse.checkpoint import Checkpoint
from cordfuse.errors import CordfuseError
from cordfuse.io import atomic_write_bytes
from cordfuse.model_card import CARD_JSON, DEFAULT_LICENCE, MANIFEST, model_card, model_markdown

FORMAT, FORMAT_VERSION = "cordfuse-model", 1
CARD_MD = "MODEL.md"
#: The members' checkpoints, numbered from 1 in the ensemble's order.
CHECKPOINT = re.compile(r"checkpoints/model-([1-9][0-9]*)\.pt")
#: The only folder a package holds.
CHECKPOINTS_FOLDER = "checkpoints"
#: An installed model's name: a folder name that cannot leave the models folder or be read as a
#: zip file.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Overrides the data directory (installed models and the cache of unpacked zips).
HOME_VARIABLE = "CORDFUSE_HOME"
#: The manifest and the card are a few kilobytes a member: larger ones are not cordfuse's, and
#: are refused before they are read into memory.
MAX_METADATA_BYTES = 1 << 20
_CHUNK = 1 << 20
#: Zip entries have no date of their own: a fixed one makes the same runs export the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def data_dir() -> Path:
    """Where installed models and the cache of unpacked zips live.

    Returns:
        ``$CORDFUSE_HOME`` when set, else the user data directory (``platformdirs``).
    """
    if os.environ.get(HOME_VARIABLE):
        return Path(os.environ[HOME_VARIABLE])
    from platformdirs import user_data_dir

    return Path(user_data_dir("cordfuse"))


def models_dir() -> Path:
    """The installed models, one folder per name.

    Returns:
        ``<data dir>/models``.
    """
    return data_dir() / "models"


def cache_dir() -> Path:
    """Zips given to ``predict``, unpacked once and named by their SHA-256.

    Returns:
        ``$CORDFUSE_HOME/cache`` when set, else the user cache directory (``platformdirs``).
    """
    if os.environ.get(HOME_VARIABLE):
        return Path(os.environ[HOME_VARIABLE]) / "cache"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cordfuse")) / "models"


@dataclass(frozen=True)
class PackagedModel:
    """A verified model package: a zip, or an installed model's folder.

    Attributes:
        name: The installed name, or the card's for a zip.
        path: The zip or the folder.
        sha256: The SHA-256 of its manifest (which holds every other file's).
        card: The model card (``model.json``).
    """

    name: str
    path: Path
    sha256: str
    card: dict

    @property
    def checkpoints(self) -> list[str]:
        """The members' checkpoints, relative to the package, in the ensemble's order."""
        return [member["checkpoint"] for member in self.card["members"]]

    @property
    def summary(self) -> str:
        """The card's one-line summary, printable as it is."""
        return _printable(self.card.get("summary", ""))

    @property
    def licence(self) -> str:
        """The card's licence, printable as it is."""
        return _printable(self.card.get("licence", ""))


def _printable(text: object) -> str:
    """Text from a card without control characters: a card cannot drive the terminal."""
    return "".join(c for c in str(text) if c.isprintable())


@dataclass(frozen=True)
class ModelSource:
    """What ``predict`` was given as one model, resolved to checkpoints it can load.

    Attributes:
        paths: Checkpoint files or training folders (as :meth:`Checkpoint.load` reads them), one
            per member of the ensemble.
        name: A packaged model's name (installed name, or the card's for a zip); None for a
            training folder or checkpoint.
        sha256: A packaged model's SHA-256; None for a training folder or checkpoint.
    """

    paths: tuple[Path, ...]
    name: str | None = None
    sha256: str | None = None


def resolve_model(model: str | Path | ModelSource) -> ModelSource:
    """The checkpoints of what a user named as a model: an installed model's name, a model zip,
    an installed (or unpacked) model's folder, a training folder or a checkpoint.

    An existing path wins over an installed name. A package is verified before anything is
    read from it; a zip is unpacked into the cache.

    Args:
        model: The name or path (a :class:`ModelSource` is returned as it is).

    Returns:
        Where its checkpoints are, and the packaged model's name and SHA-256.

    Raises:
        CordfuseError: In one line: a package that fails verification, or a name that is neither
            an existing path nor an installed model.
    """
    if isinstance(model, ModelSource):
        return model
    path = Path(model)
    if path.suffix == ".zip":
        return _source(unpacked(path))
    if (path / MANIFEST).is_file():
        return _source(verify_folder(path))
    if path.exists() or not NAME.fullmatch(str(model)):
        return ModelSource((path,))
    folder = models_dir() / str(model)
    if not folder.is_dir():
        raise CordfuseError(
            f"{model}: no such training folder, checkpoint, model zip or installed model "
            "(cordfuse model list shows the installed ones)"
        )
    return _source(verify_folder(folder, name=str(model)))


def resolve_models(models: Iterable[str | Path | ModelSource]) -> tuple[ModelSource, ...]:
    """:func:`resolve_model` of each model, in order.

    Args:
        models: Names or paths (or sources already resolved).

    Returns:
        One source per model given.
    """
    return tuple(resolve_model(model) for model in models)


def _source(package: PackagedModel) -> ModelSource:
    paths = tuple(package.path / name for name in package.checkpoints)
    return ModelSource(paths, package.name, package.sha256)


# --- verification ------------------------------------------------------------------------------


def verify_zip(path: str | Path) -> PackagedModel:
    """Check a model zip: exactly the expected files, each with its manifest's SHA-256.

    Nothing is written and no checkpoint is read.

    Args:
        path: The zip.

    Returns:
        The package, named by its card.

    Raises:
        CordfuseError: In one line: unreadable, not a zip, or refused (an unexpected or missing
            file, a link, a hash that does not match, an unreadable manifest or card).
    """
    return _read_zip(Path(path), into=None)


def verify_folder(folder: str | Path, *, name: str | None = None) -> PackagedModel:
    """Check an installed (or unpacked) model: the same rules as :func:`verify_zip`.

    Args:
        folder: The model's folder.
        name: Its installed name (default: the folder's name).

    Returns:
        The package.

    Raises:
        CordfuseError: In one line: not a model folder, or refused as a zip would be.
    """
    folder = Path(folder)
    where = str(folder)
    if not (folder / MANIFEST).is_file():
        raise CordfuseError(f"{where}: not a cordfuse model (no {MANIFEST})")
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            _refuse(where, f"{relative} is a link")
        if path.is_dir():
            if relative != CHECKPOINTS_FOLDER:
                _refuse(where, f"unexpected folder {relative}")
            continue
        found.append(relative)
    manifest_bytes = _read_metadata(folder / MANIFEST, where)
    files = _manifest_files(manifest_bytes, where)
    _check_names(found, files, where)
    for relative, expected in files.items():
        with open(folder / relative, "rb") as handle:
            _check_hash(where, relative, _sha256(_chunks(handle)), expected)
    card = _card(_read_metadata(folder / CARD_JSON, where), files, where)
    return PackagedModel(name or folder.name, folder, _digest(manifest_bytes), card)


def _read_zip(path: Path, into: Path | None) -> PackagedModel:
    """Verify a zip, writing its files under ``into`` as they are hashed when given (the caller
    removes ``into`` when this raises)."""
    where = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except OSError as exc:
        raise CordfuseError(f"{where}: unreadable ({exc.strerror or exc})") from exc
    except zipfile.BadZipFile as exc:
        raise CordfuseError(f"{where}: not a cordfuse model zip ({exc})") from exc
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        for info in infos:
            if _is_link(info):
                _refuse(where, f"{info.filename} is a link")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            _refuse(where, f"{twice[0]} appears twice")
        folders = [n for n in names if n.endswith("/") and n != f"{CHECKPOINTS_FOLDER}/"]
        if folders:
            _refuse(where, f"unexpected folder {folders[0]}")
        files_found = [n for n in names if not n.endswith("/")]
        if MANIFEST not in files_found:
            raise CordfuseError(f"{where}: not a cordfuse model (no {MANIFEST})")
        for name in (MANIFEST, CARD_JSON):
            if name in files_found and archive.getinfo(name).file_size > MAX_METADATA_BYTES:
                _refuse(where, f"{name} is too large")
        manifest_bytes = _read_member(archive, MANIFEST, where)
        files = _manifest_files(manifest_bytes, where)
        _check_names(files_found, files, where)
        for relative, expected in files.items():
            try:
                with archive.open(relative) as member:
                    chunks = _chunks(member)
                    if into is not None:
                        chunks = _written(chunks, into / relative)
                    actual = _sha256(chunks)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                _refuse(where, f"{relative} is damaged: {exc}")
            except RuntimeError as exc:  # zipfile's word for an encrypted entry
                _refuse(where, f"{relative}: {exc}")
            _check_hash(where, relative, actual, expected)
        if into is not None:
            (into / MANIFEST).write_bytes(manifest_bytes)
        card = _card(_read_member(archive, CARD_JSON, where), files, where)
    return PackagedModel(str(card["name"]), path, _digest(manifest_bytes), card)


def _read_member(archive: zipfile.ZipFile, name: str, where: str) -> bytes:
    """A small member (the manifest, the card) read whole; a damaged one is refused."""
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        _refuse(where, f"{name} is damaged: {exc}")
    except RuntimeError as exc:  # zipfile's word for an encrypted entry
        _refuse(where, f"{name}: {exc}")


def _refuse(where: str, reason: str) -> NoReturn:
    raise CordfuseError(f"{where}: refused, nothing loaded ({reason})")


def _is_link(info: zipfile.ZipInfo) -> bool:
    """Whether a zip entry is a symbolic link (Unix mode in the high bits)."""
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def _read_metadata(path: Path, where: str) -> bytes:
    if path.stat().st_size > MAX_METADATA_BYTES:
        _refuse(where, f"{path.name} is too large")
    return path.read_bytes()


def _manifest_files(data: bytes, where: str) -> dict[str, str]:
    """The manifest's ``{file: sha256}``, checked to name only files a package may hold."""
    try:
        manifest = json.loads(data)
    except ValueError:
        _refuse(where, f"{MANIFEST} is not JSON")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        _refuse(where, f"{MANIFEST} is not a cordfuse model manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CordfuseError(
            f"{where}: a model of format {version}, newer than this cordfuse {__version__} "
            f"reads ({FORMAT_VERSION}): update cordfuse"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in files.values()
    ):
        _refuse(where, f"{MANIFEST} lists no SHA-256 per file")
    for name in files:
        if name not in (CARD_JSON, CARD_MD) and not CHECKPOINT.fullmatch(name):
            _refuse(where, f"unexpected file {name} in {MANIFEST}")
    numbers = sorted(int(m.group(1)) for n in files if (m := CHECKPOINT.fullmatch(n)))
    if numbers != list(range(1, len(numbers) + 1)) or not numbers:
        _refuse(where, f"{MANIFEST} lists no checkpoints/model-1.pt ... model-N.pt")
    for name in (CARD_JSON, CARD_MD):
        if name not in files:
            _refuse(where, f"{MANIFEST} lists no {name}")
    return dict(files)


def _check_names(found: Sequence[str], files: dict[str, str], where: str) -> None:
    """Exactly the manifest's files and the manifest itself: nothing more, nothing less."""
    expected = {MANIFEST, *files}
    unexpected = sorted(set(found) - expected)
    if unexpected:
        _refuse(where, f"unexpected file {unexpected[0]}")
    missing = sorted(expected - set(found))
    if missing:
        _refuse(where, f"{missing[0]} is missing")


def _check_hash(where: str, name: str, actual: str, expected: str) -> None:
    if actual != expected:
        _refuse(where, f"{name} does not match its SHA-256 in {MANIFEST}")


def _card(data: bytes, files: dict[str, str], where: str) -> dict:
    """The card, checked to be the one hashed and to list the manifest's checkpoints."""
    # read again after its hash was checked: the bytes parsed must be those hashed
    _check_hash(where, CARD_JSON, _digest(data), files[CARD_JSON])
    try:
        card = json.loads(data)
    except ValueError:
        _refuse(where, f"{CARD_JSON} is not JSON")
    members = card.get("members") if isinstance(card, dict) else None
    checkpoints = sorted(n for n in files if CHECKPOINT.fullmatch(n))
    listed = (
        [m.get("checkpoint") for m in members if isinstance(m, dict)]
        if isinstance(members, list)
        else []
    )
    if sorted(map(str, listed)) != sorted(checkpoints) or not isinstance(card.get("name"), str):
        _refuse(where, f"{CARD_JSON} does not list the checkpoints of {MANIFEST}")
    return card


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(_CHUNK):
        yield chunk


def _written(chunks: Iterator[bytes], path: Path) -> Iterator[bytes]:
    """The chunks, also written to ``path`` (a zip's file unpacked while it is hashed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as handle:
        for chunk in chunks:
            handle.write(chunk)
            yield chunk


def _sha256(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- install, list, unpack ---------------------------------------------------------------------


def install_model(
    path: str | Path, *, name: str | None = None, overwrite: bool = False
) -> PackagedModel:
    """Install a model zip as ``<data dir>/models/NAME`` once it is verified and its checkpoints
    load (weights-only) and form an ensemble ``predict`` can run.

    Args:
        path: The model zip.
        name: The installed name (default: the card's).
        overwrite: Replace an installed model of that name.

    Returns:
        The installed model.

    Raises:
        CordfuseError: In one line: a refused zip, checkpoints that do not load, an invalid name,
            or a name already installed (without ``overwrite``).
    """
    package = verify_zip(path)
    name = name or package.name
    _check_name(name)
    target = models_dir() / name
    if target.exists() and not overwrite:
        raise CordfuseError(
            f"{name}: installed already in {target} (--overwrite replaces it, or choose "
            "another --name)"
        )
    staged = _unpack(Path(path), target.parent)
    try:
        _check_predicts([staged / n for n in package.checkpoints])
        if target.exists():  # overwrite: the old one goes only once the new one is ready
            retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.old-"))
            os.replace(target, retired / name)
            shutil.rmtree(retired)
        os.replace(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return verify_folder(target, name=name)


def installed_models() -> list[PackagedModel | tuple[str, str]]:
    """The installed models, by name; one that no longer verifies is listed with its reason.

    Returns:
        Each a :class:`PackagedModel`, or ``(name, why it is refused)``.
    """
    found: list[PackagedModel | tuple[str, str]] = []
    folder = models_dir()
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.startswith(".") or not path.is_dir():
            continue  # an install in progress, or what is not an installed model
        try:
            found.append(verify_folder(path))
        except CordfuseError as exc:
            found.append((path.name, str(exc).removeprefix(f"{path}: ")))
    return found


def unpacked(path: str | Path) -> PackagedModel:
    """A model zip, verified, in the cache where ``predict`` reads it (unpacked on first use).

    The zip itself is verified every time, so a zip tampered with after it was cached is still
    refused.

    Args:
        path: The zip.

    Returns:
        The cached package, named by the zip's card.

    Raises:
        CordfuseError: In one line: the zip is refused.
    """
    package = verify_zip(path)
    folder = cache_dir() / package.sha256
    if folder.exists():
        try:
            return replace(verify_folder(folder), name=package.name)
        except CordfuseError:
            shutil.rmtree(folder)  # a damaged cache entry: unpacked again below
    staged = _unpack(Path(path), folder.parent)
    try:
        os.replace(staged, folder)
    except OSError:  # another process cached it first: theirs is used, after verification
        shutil.rmtree(staged)
    return replace(verify_folder(folder), name=package.name)


def _unpack(path: Path, parent: Path) -> Path:
    """Unpack a zip into a new hidden folder of ``parent``, verifying as it goes.

    Returns:
        The folder (removed again when the zip is refused).
    """
    parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=parent, prefix=".unpack-"))
    try:
        _read_zip(path, into=staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def _check_name(name: str) -> None:
    if not NAME.fullmatch(name) or name.endswith(".zip"):
        raise CordfuseError(
            f"{name!r}: a model name is 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, not ending in .zip"
        )


def _check_predicts(paths: Sequence[Path]) -> None:
    """The checks ``predict`` makes before any subject (each checkpoint loads weights-only and
    fits its network, the members agree), made where a model is exported or installed."""
    # inference resolves models through this module: imported here, not at the top
    from cordfuse.inference import load_models

    load_models(paths, torch.device("cpu"))


# --- export ------------------------------------------------------------------------------------


def export_model(
    runs: Sequence[str | Path],
    out: str | Path,
    *,
    name: str | None = None,
    licence: str = DEFAULT_LICENCE,
    prepared: str | Path | None = None,
    test_metrics: str | Path | None = None,
    overwrite: bool = False,
) -> PackagedModel:
    """Pack training runs (one model or an ensemble) into a model zip with its card.

    Args:
        runs: Training folders (their best checkpoint, else latest) or checkpoint files.
        out: The zip to write (``.zip``).
        name: The model's name (default: the zip's stem).
        licence: The licence the weights are handed on under.
        prepared: The prepared dataset the runs were trained on (``cordfuse prepare`` output),
            for the card's subjects and lesions per cohort ("unknown" without it).
        test_metrics: ``cordfuse evaluate --json`` of the model's test predictions, for the
            card ("unknown" without it).
        overwrite: Replace an existing ``out``.

    Returns:
        The exported package.

    Raises:
        CordfuseError: In one line: no run, an unreadable run or runs that do not form an
            ensemble, an invalid name, ``out`` exists (without ``overwrite``) or is not a
            ``.zip``, a prepared dataset that lacks the runs' subjects, or unreadable metrics.
    """
    out = Path(out)
    if not runs:
        raise CordfuseError("export-model: no training run given")
    if out.suffix != ".zip":
        raise CordfuseError(f"{out}: a model file ends in .zip")
    if out.exists() and not overwrite:
        raise CordfuseError(f"{out}: exists already (--overwrite replaces it)")
    name = name or out.stem
    _check_name(name)
    checkpoints = [Checkpoint.load(run) for run in runs]
    _check_predicts([c.path for c in checkpoints if c.path is not None])
    arcnames = [f"{CHECKPOINTS_FOLDER}/model-{n}.pt" for n in range(1, len(checkpoints) + 1)]
    files = {a: _handed_on(c) for a, c in zip(arcnames, checkpoints, strict=True)}
    card = model_card(
        name,
        list(zip(arcnames, checkpoints, strict=True)),
        licence=licence,
        prepared=prepared,
        test_metrics=test_metrics,
    )
    files[CARD_JSON] = (json.dumps(card, indent=2, allow_nan=False) + "\n").encode()
    files[CARD_MD] = model_markdown(card).encode()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "files": {n: _digest(data) for n, data in sorted(files.items())},
    }
    manifest_bytes = (json.dumps(manifest, indent=1) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for arcname, data in [(MANIFEST, manifest_bytes), *sorted(files.items())]:
            info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            # weights hardly compress; the card and manifest do
            info.compress_type = (
                zipfile.ZIP_STORED if arcname.endswith(".pt") else (zipfile.ZIP_DEFLATED)
            )
            archive.writestr(info, data)
    atomic_write_bytes(out, buffer.getvalue())
    return PackagedModel(name, out, _digest(manifest_bytes), card)


def _handed_on(checkpoint: Checkpoint) -> bytes:
    """The checkpoint a recipient needs: without the state to resume training, and without the
    subject ids of its split (a model handed on names none of its training subjects)."""
    stripped = replace(checkpoint, optimizer=None, scheduler=None, scaler=None, rng=None)
    buffer = io.BytesIO()
    torch.save(replace(stripped, split=None).to_dict(), buffer)
    return buffer.getvalue()
