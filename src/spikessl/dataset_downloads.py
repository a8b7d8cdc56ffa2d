"""Finding a dataset's files under the data root, and downloading the missing ones.

Downloads are checked against the official MD5 before they take their final name, and
archives are extracted member by member, refusing absolute paths, '..' and links. Only
``_fetch`` touches the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from spikessl.dataset_catalog import DatasetInfo
from spikessl.dataset_formats import idx_path

__all__ = ["DOWNLOAD_TIMEOUT_S", "ensure_files"]

DOWNLOAD_TIMEOUT_S = 30.0
"""Socket timeout for downloads: long enough for slow mirrors, short enough to fail offline."""


def _fetch(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Write the body of ``url`` to ``dest``. The only function here touching the network."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, md5: str, dest: Path) -> None:
    """Download to a temp file beside ``dest`` and rename only once the MD5 matches.

    Readers therefore never see a partial or tampered file under the final name.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _fetch(url, tmp)
        actual = _md5(tmp)
        if actual != md5:
            raise ValueError(f"MD5 mismatch for {url}: got {actual}, expected {md5}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders only, refusing absolute paths, '..' and links."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if member.name.startswith(("/", "\\")) or ".." in parts or not parts:
                raise ValueError(f"{archive}: refusing unsafe member path {member.name!r}")
            target = dest.joinpath(*parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise ValueError(f"{archive}: cannot read member {member.name!r}")
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            else:
                raise ValueError(f"{archive}: refusing non-regular member {member.name!r}")


def _download_missing(info: DatasetInfo, root: Path, missing: list[Path]) -> None:
    """Fetch what is needed to create ``missing``: single IDX files, or a CIFAR archive."""
    if info.format == "idx":
        names = {path.name for path in missing}
        for url, md5 in info.downloads:
            file_name = url.rsplit("/", 1)[-1]
            if file_name.removesuffix(".gz") in names:
                _download(url, md5, root / info.folder / file_name)
        return
    root.mkdir(parents=True, exist_ok=True)
    for url, md5 in info.downloads:
        with tempfile.TemporaryDirectory(dir=root, prefix=".spikessl-download-") as tmp:
            archive = Path(tmp) / url.rsplit("/", 1)[-1]
            _download(url, md5, archive)
            extracted = Path(tmp) / "extracted"
            _safe_extract(archive, extracted)
            source, target = extracted / info.folder, root / info.folder
            if not source.is_dir():
                raise ValueError(f"{url}: archive has no {info.folder}/ folder")
            target.mkdir(parents=True, exist_ok=True)
            for item in source.iterdir():  # move, never overwrite files already present
                if not (target / item.name).exists():
                    os.replace(item, target / item.name)


def _missing_files(info: DatasetInfo, folder: Path, train: bool) -> list[Path]:
    paths = [folder / name for name in info.files(train)]
    if info.format == "idx":
        return [path for path in paths if idx_path(path) is None]
    return [path for path in paths if not path.is_file()]


def _absent_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    absent = []
    while not folder.exists() and folder != folder.parent:
        absent.append(folder)
        folder = folder.parent
    return absent


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders, deepest first, that are (still) empty: the download made them."""
    for folder in folders:
        with contextlib.suppress(OSError):  # holds something, or already gone
            folder.rmdir()


_DOWNLOAD_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    zlib.error,
    tarfile.TarError,
    http.client.HTTPException,
)


def ensure_files(info: DatasetInfo, root: Path, train: bool, download: bool) -> Path:
    """Return the dataset folder, downloading missing files if allowed, else explain the fix."""
    folder = root / info.folder
    missing = _missing_files(info, folder, train)
    if not missing:
        return folder
    reason = "automatic download is disabled (download=False)"
    cause: BaseException | None = None
    if download:
        absent = _absent_folders(folder)  # a failed download leaves none of them behind
        try:
            _download_missing(info, root, missing)
        except _DOWNLOAD_ERRORS as exc:
            reason, cause = f"download failed: {exc}", exc
            _remove_empty(absent)
        else:
            missing = _missing_files(info, folder, train)
            if not missing:
                return folder
            reason = "the download did not produce them"
    suffix = "[.gz]" if info.format == "idx" else ""
    listing = "\n".join(
        f"  {folder / name}{suffix}{'  (missing)' if folder / name in missing else ''}"
        for name in info.files(train)
    )
    split = "train" if train else "test"
    raise FileNotFoundError(
        f"{info.name} ({split} split) not found under {root}; {reason}.\n"
        f"Expected files:\n{listing}\n"
        f"Point --data-dir or the SPIKESSL_DATA environment variable at a folder holding them "
        f"(the folder that contains {info.folder}/)."
    ) from cause
