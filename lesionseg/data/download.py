"""Fetch the four ISIC 2016 Part 1 archives, verify them and extract them safely.

``source`` is a base URL (``http(s)://``) or a local directory holding the
same four files. Downloads go to ``<name>.part`` and are renamed only once
complete (a cut-off download resumes with an HTTP Range request); every
archive must be a valid zip whose CRCs check out. Extraction refuses entries
that would escape the target folder (``..``, absolute paths, symlinks) and
archives whose extracted size exceeds ``max_extract_bytes`` (zip bombs).
"""

from __future__ import annotations

import hashlib
import logging
import stat
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from lesionseg import atomic
from lesionseg.data.isic import TEST_IMAGES, TEST_MASKS, TRAIN_IMAGES, TRAIN_MASKS
from lesionseg.errors import DataError

log = logging.getLogger(__name__)

_OFFICIAL_SOURCE = "https://isic-challenge-data.s3.amazonaws.com/2016"
_ARCHIVE_STEMS = (TRAIN_IMAGES, TRAIN_MASKS, TEST_IMAGES, TEST_MASKS)
_ARCHIVES = tuple(f"{stem}.zip" for stem in _ARCHIVE_STEMS)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # local file header; empty archive
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DownloadConfig:
    source: str = _OFFICIAL_SOURCE
    retries: int = 5
    timeout_s: float = 60.0
    max_extract_bytes: int = 32 * 1024**3  # the official archives extract to about 12 GB
    progress: bool = True

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source:
            raise ValueError("source must be a URL or a local directory")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries!r}")
        if self.max_extract_bytes <= 0:
            raise ValueError(f"max_extract_bytes must be positive, got {self.max_extract_bytes!r}")


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_zip_magic(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:4] in _ZIP_MAGIC:
        return
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        raise DataError(path, "is an HTML/XML page, not a zip archive (a server error or sign-in page? check the URL)")
    raise DataError(path, "not a zip archive")


def _download_file(url: str, target: Path, config: DownloadConfig) -> Path:
    """Download ``url`` to ``target`` via ``target.part``, resuming and retrying on network errors."""
    part = target.with_name(target.name + ".part")
    for attempt in range(config.retries + 1):
        try:
            _download_once(url, part, config)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # range not satisfiable: the .part is stale; start over
                part.unlink(missing_ok=True)
            elif exc.code < 500 and exc.code != 429:
                raise DataError(url, f"HTTP error {exc.code} {exc.reason}") from exc
            error = exc
        except (urllib.error.URLError, OSError, ConnectionError, TimeoutError, _IncompleteDownload) as exc:
            error = exc
        if attempt == config.retries:
            raise DataError(url, f"download failed after {config.retries + 1} attempts ({error})") from error
        log.warning("download of %s interrupted (%s); retrying", url, error)
        time.sleep(min(2**attempt, 30))
    _check_zip_magic(part)
    part.replace(target)
    return target


class _IncompleteDownload(OSError):
    pass


def _download_once(url: str, part: Path, config: DownloadConfig) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
        if have and response.status != 206:  # server ignored the range: restart from zero
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, "ab" if have else "wb") as fh,
            tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:-5], disable=not config.progress
            ) as bar,
        ):
            for block in iter(lambda: response.read(_CHUNK), b""):
                fh.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise _IncompleteDownload(f"got {part.stat().st_size} of {total} bytes")


def _fetch_archives(config: DownloadConfig, download_dir: Path) -> dict[str, Path]:
    """Path of each of the four archives: in ``config.source`` if local, else downloaded to ``download_dir``.

    ``download_dir`` is a cache: an archive already there (complete: downloads
    land under a ``.part`` name and are renamed when whole) is not fetched again.
    """
    if _is_url(config.source):
        download_dir.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in _ARCHIVES:
            target = download_dir / name
            if not target.exists():
                _download_file(f"{config.source.rstrip('/')}/{name}", target, config)
            paths[name] = target
        return paths
    source = Path(config.source).expanduser()
    if not source.is_dir():
        raise DataError(source, "download.source is neither an http(s) URL nor an existing directory")
    missing = [name for name in _ARCHIVES if not (source / name).is_file()]
    if missing:
        raise DataError(source, f"missing archive(s): {', '.join(missing)}")
    return {name: source / name for name in _ARCHIVES}


def _safe_member_path(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    name = PurePosixPath(info.filename.replace("\\", "/"))
    if name.is_absolute() or info.filename.startswith(("/", "\\")) or ":" in name.parts[0]:
        raise DataError(archive, f"refusing entry with an absolute path: {info.filename!r}")
    if ".." in name.parts:
        raise DataError(archive, f"refusing entry that escapes the extraction folder: {info.filename!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(archive, f"refusing symbolic link entry: {info.filename!r}")
    return name


def _open_archive(path: Path) -> zipfile.ZipFile:
    """Open ``path`` as a zip, checking magic bytes, CRCs and that it is not empty."""
    _check_zip_magic(path)
    try:
        archive = zipfile.ZipFile(path)
        bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        raise DataError(path, f"corrupt or truncated zip archive ({exc})") from exc
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise DataError(path, f"unreadable zip archive ({type(exc).__name__}: {exc})") from exc
    if bad is not None:
        archive.close()
        raise DataError(path, f"corrupt zip archive: CRC mismatch in {bad!r}")
    if not any(not info.is_dir() for info in archive.infolist()):
        archive.close()
        raise DataError(path, "empty zip archive")
    return archive


def _extract_archive(path: Path, target: Path, max_bytes: int) -> int:
    """Extract ``path`` into the (new, empty) folder ``target``; return bytes written."""
    with _open_archive(path) as archive:
        members = [(info, _safe_member_path(info, path)) for info in archive.infolist()]
        declared = sum(info.file_size for info, _ in members)
        if declared > max_bytes:
            raise DataError(path, f"declares {declared:,} bytes extracted, above the limit of {max_bytes:,}")
        written = 0
        for info, name in members:
            out = target.joinpath(*name.parts)
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(out, "wb") as dst:
                # Count real bytes: declared sizes in a hostile archive can lie.
                for block in iter(lambda: src.read(_CHUNK), b""):
                    written += len(block)
                    if written > max_bytes:
                        raise DataError(path, f"extracts to more than the limit of {max_bytes:,} bytes")
                    dst.write(block)
    return written


def download_and_extract(config: DownloadConfig, raw_dir: Path, download_dir: Path) -> dict:
    """Fetch, verify and extract all four archives into ``raw_dir`` (atomically, as a whole).

    ``raw_dir`` ends up with one folder per archive (named after it) and
    ``manifest.json`` (source, size and sha256 of each archive). Returns the manifest.
    """
    archives = _fetch_archives(config, Path(download_dir))
    manifest = {"source": config.source, "archives": {}}
    with atomic.atomic_dir(Path(raw_dir)) as tmp:
        for name, path in archives.items():
            log.info("extracting %s", path)
            folder = tmp / name.removesuffix(".zip")
            folder.mkdir()
            extracted = _extract_archive(path, folder, config.max_extract_bytes)
            manifest["archives"][name] = {
                "bytes": path.stat().st_size,
                "sha256": _sha256_of(path),
                "extracted_bytes": extracted,
            }
        atomic.write_json(tmp / "manifest.json", manifest)
    return manifest
