import json
import os
import stat
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from lesionseg.data.download import _ARCHIVES, DownloadConfig, _download_file, _extract_archive, download_and_extract
from lesionseg.errors import DataError
from tests.helpers import REPO, make_archives


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    return make_archives(tmp_path_factory.mktemp("src"), n_train=4, n_test=2)


def test_local_source_extracts_and_writes_manifest(tmp_path, archives):
    manifest = download_and_extract(
        DownloadConfig(source=str(archives), progress=False), tmp_path / "raw", tmp_path / "dl"
    )
    assert sorted(manifest["archives"]) == sorted(_ARCHIVES)
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text()) == manifest
    assert len(list((tmp_path / "raw").rglob("*.jpg"))) == 6
    assert len(manifest["archives"][_ARCHIVES[0]]["sha256"]) == 64


def test_local_source_missing_dir_or_file(tmp_path, archives):
    with pytest.raises(DataError, match="neither an http.s. URL nor an existing directory"):
        download_and_extract(DownloadConfig(source=str(tmp_path / "nope")), tmp_path / "raw", tmp_path / "dl")
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in _ARCHIVES[:3]:
        (partial / name).write_bytes((archives / name).read_bytes())
    with pytest.raises(DataError, match=f"missing archive.*{_ARCHIVES[3]}"):
        download_and_extract(DownloadConfig(source=str(partial)), tmp_path / "raw", tmp_path / "dl")
    assert not (tmp_path / "raw").exists()


def _bad_source(tmp_path, archives, name, content: bytes) -> Path:
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    for archive in _ARCHIVES:
        (source / archive).write_bytes((archives / archive).read_bytes())
    (source / name).write_bytes(content)
    return source


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda data: data[: len(data) // 2], "corrupt or truncated zip|corrupt zip archive"),
        (lambda data: b"just some text, not a zip", "not a zip archive"),
        (lambda data: b"<!DOCTYPE html><html>Access denied</html>", "HTML/XML page, not a zip"),
        (lambda data: b"PK\x05\x06" + b"\0" * 18, "empty zip archive"),
    ],
)
def test_bad_archives_name_the_file_and_leave_no_output(tmp_path, archives, mangle, message):
    name = _ARCHIVES[1]
    source = _bad_source(tmp_path, archives, name, mangle((archives / name).read_bytes()))
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match=f"{name}: .*({message})"):
        download_and_extract(DownloadConfig(source=str(source), progress=False), raw, tmp_path / "dl")
    assert not raw.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw")]


def test_crc_mismatch_is_detected(tmp_path):
    archive = tmp_path / "crc.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a/file.txt", b"A" * 1000)
    data = bytearray(archive.read_bytes())
    data[data.index(b"AAAA")] = ord("B")
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match="crc.zip: corrupt"):
        _extract_archive(archive, tmp_path / "out", 10**9)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("../evil.txt", "escapes the extraction folder"),
        ("/etc/evil.txt", "absolute path"),
        ("a/../../evil.txt", "escapes"),
    ],
)
def test_zip_slip_is_refused(tmp_path, entry, message):
    archive = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr(entry, b"evil")
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=f"slip.zip: refusing .*{message}"):
        _extract_archive(archive, tmp_path / "out", 10**9)
    assert not (tmp_path / "evil.txt").exists()
    assert not list((tmp_path / "out").iterdir())  # refused before anything was written


def test_symlink_entry_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="link.zip: refusing symbolic link entry"):
        _extract_archive(archive, tmp_path / "out", 10**9)


def test_zip_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * 5_000_000)
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=r"bomb.zip: declares 5,000,000 bytes extracted, above the limit of 1,000,000"):
        _extract_archive(archive, tmp_path / "out", 1_000_000)


def test_zip_bomb_with_lying_header_is_stopped_while_extracting(tmp_path):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * 3_000_000)
    (tmp_path / "out").mkdir()
    # Stop exactly at the real bytes, which the declared-size check cannot see when headers lie.
    with pytest.raises(DataError, match="extracts to more than the limit|declares"):
        _extract_archive(archive, tmp_path / "out", 2_999_999)


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_once: set[str] = set()
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        mode, name = self.path.strip("/").split("/", 1)
        if mode == "missing":
            self.send_error(404, "Not Found")
            return
        if mode == "html":
            body = b"<!DOCTYPE html><html><body>Sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        data = self.files[name]
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.split("=")[1].split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if mode == "cut" and name not in self.cut_once:
            self.cut_once.add(name)  # first attempt: half the bytes, then the connection drops
            self.wfile.write(data[start : len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(data[start:])


@pytest.fixture
def server(archives):
    _Handler.files = {name: (archives / name).read_bytes() for name in _ARCHIVES}
    _Handler.cut_once = set()
    _Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_http_download_and_extract(tmp_path, server, archives):
    config = DownloadConfig(source=f"{server}/ok", progress=False)
    download_and_extract(config, tmp_path / "raw", tmp_path / "dl")
    for name in _ARCHIVES:
        assert (tmp_path / "dl" / name).read_bytes() == (archives / name).read_bytes()
    assert not list((tmp_path / "dl").glob("*.part"))


def test_cut_off_download_resumes(tmp_path, server, archives):
    name = _ARCHIVES[0]
    target = tmp_path / name
    _download_file(f"{server}/cut/{name}", target, DownloadConfig(retries=2, progress=False))
    assert target.read_bytes() == (archives / name).read_bytes()


def test_cut_off_download_without_retries_leaves_only_a_part_file(tmp_path, server):
    name = _ARCHIVES[0]
    with pytest.raises(DataError, match="download failed after 1 attempts"):
        _download_file(f"{server}/cut/{name}", tmp_path / name, DownloadConfig(retries=0, progress=False))
    assert not (tmp_path / name).exists()
    assert (tmp_path / f"{name}.part").exists()  # resumable next time


def test_http_error_and_html_page(tmp_path, server):
    with pytest.raises(DataError, match="HTTP error 404"):
        _download_file(f"{server}/missing/x.zip", tmp_path / "x.zip", DownloadConfig(progress=False))
    with pytest.raises(DataError, match="HTML/XML page, not a zip"):
        _download_file(f"{server}/html/x.zip", tmp_path / "x.zip", DownloadConfig(progress=False))
    assert not (tmp_path / "x.zip").exists()


def test_nothing_written_outside_output_folders(tmp_path, archives):
    before = set(os.listdir(tmp_path))
    download_and_extract(DownloadConfig(source=str(archives), progress=False), tmp_path / "raw", tmp_path / "dl")
    assert set(os.listdir(tmp_path)) - before == {"raw"}  # a local source is read in place, not copied


def test_download_stage_shares_its_cache_with_experiment_copies(tmp_path, server):
    """`dvc exp run --temp`/`--queue` run in copies of the repository with DVC_ROOT set to the main
    repository: every copy uses the main repository's download cache, so nothing is downloaded twice."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["download"]["source"] = f"{server}/ok"
    main_repo = tmp_path / "repo"
    copies = [main_repo, main_repo / ".dvc" / "tmp" / "exps" / "tmpabc"]
    for copy in copies:
        copy.mkdir(parents=True)
        (copy / "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_ROOT": str(main_repo)}
        cmd = [sys.executable, "-m", "stages.download", "--raw", "data/raw"]
        result = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (copy / "data" / "raw" / "manifest.json").is_file()
    assert sorted(_Handler.requests) == sorted(f"/ok/{name}" for name in _ARCHIVES)  # once each, in all
    assert sorted(os.listdir(main_repo / "data" / "downloads")) == sorted(_ARCHIVES)
    assert not (copies[1] / "data" / "downloads").exists()
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/downloads/x.zip"], cwd=REPO)
    assert ignored.returncode == 0, "the download cache must be git-ignored"
