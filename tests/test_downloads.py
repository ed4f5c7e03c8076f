"""Downloads you can trust: a transfer cut short, replaced, padded, trickled or raced is never kept as
the file, a file that fails a check is moved aside so the next pull starts clean, a mirror's bytes
never become the publisher's hash, and the Model Zoo's published checksums are checked. Each test
names its promise; the servers are real HTTP servers on 127.0.0.1 misbehaving on purpose."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import time
import zipfile

import pytest

from voxpipe.errors import InputError
from voxpipe.pipelines.inference import catalogue, downloads
from voxpipe.pipelines.inference.catalogue import Download, fetch_file

NAME = "Dataset913_lung_nodules.zip"


def _archive(dataset: str = "Dataset913_lung_nodules") -> bytes:
    """A zip of TotalSegmentator's release layout (a model folder with plans.json), about 16 kB."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr(f"{dataset}/nnUNetTrainer__nnUNetPlans__3d_fullres/plans.json", "{}" + " " * 5000)
        zipped.writestr(f"{dataset}/more.txt", bytes(range(256)) * 40)
    return buffer.getvalue()


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` by name; ``mode`` picks how it misbehaves (per test)."""

    files: dict[str, bytes] = {}
    mode = "good"
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        Misbehaving.requests.append((name, self.headers.get("Range")))
        data = self.files.get(name)
        if data is None:
            self.send_error(404)
            return
        asked = self.headers.get("Range")
        start = int(asked.split("=")[1].split("-")[0]) if asked else 0
        mode = self.mode
        if mode == "html":
            page = b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if asked and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "ignore-range":  # a resume answered with 200 and the whole file
            start = 0
        if mode == "whole-as-206" and asked:  # 206, but the body and range start at 0
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(206 if asked and mode != "ignore-range" else 200)
        if asked and mode != "ignore-range":
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if mode == "cut":  # declares everything, sends half, closes
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if mode == "trickle":
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Misbehaving.files, Misbehaving.mode, Misbehaving.requests = {NAME: _archive()}, "good", []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _download(url: str) -> Download:
    return Download(f"{url}/{NAME}")


def test_promise_a_transfer_cut_short_stays_part_and_the_next_pull_resumes_it(server, tmp_path):
    Misbehaving.mode = "cut"
    with pytest.raises(InputError, match=r"declared [\d,]+ bytes and sent"):
        fetch_file(_download(server), tmp_path)
    folder = tmp_path / "downloads"
    assert not (folder / NAME).exists() and (folder / f"{NAME}.part").is_file()
    Misbehaving.mode = "good"
    path, sha256, record = fetch_file(_download(server), tmp_path)
    assert path.read_bytes() == Misbehaving.files[NAME] and record
    assert Misbehaving.requests[-1][1] == f"bytes={len(Misbehaving.files[NAME]) // 2}-"


def test_promise_an_html_page_served_with_200_is_moved_aside_and_named(server, tmp_path):
    Misbehaving.mode = "html"
    with pytest.raises(InputError, match=r"expected a zip archive, found an HTML page; moved to .*\.bad"):
        fetch_file(_download(server), tmp_path)
    assert (tmp_path / "downloads" / f"{NAME}.bad").is_file() and not (tmp_path / "downloads" / NAME).exists()
    Misbehaving.mode = "good"  # the next pull starts clean
    path, _, _ = fetch_file(_download(server), tmp_path)
    assert path.read_bytes() == Misbehaving.files[NAME]


def test_promise_a_stale_part_larger_than_the_file_starts_over(server, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / f"{NAME}.part").write_bytes(b"z" * (len(Misbehaving.files[NAME]) + 100))
    path, _, _ = fetch_file(_download(server), tmp_path)
    assert path.read_bytes() == Misbehaving.files[NAME]
    assert Misbehaving.requests[-1][1] is None  # fetched whole after the 416


def test_promise_a_416_is_complete_only_at_the_published_size(server, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / f"{NAME}.part").write_bytes(Misbehaving.files[NAME])  # complete: 416 accepted
    path, _, _ = fetch_file(_download(server), tmp_path)
    assert path.read_bytes() == Misbehaving.files[NAME] and len(Misbehaving.requests) == 1


@pytest.mark.parametrize("mode", ["ignore-range", "whole-as-206"])
def test_promise_a_resume_answered_with_the_whole_file_starts_over(server, tmp_path, mode):
    data = Misbehaving.files[NAME]
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / f"{NAME}.part").write_bytes(data[:700])
    Misbehaving.mode = mode
    path, sha256, _ = fetch_file(_download(server), tmp_path)
    assert path.read_bytes() == data and sha256 == hashlib.sha256(data).hexdigest()


def test_promise_bytes_before_the_zip_are_refused_and_never_trusted(server, tmp_path):
    data = Misbehaving.files[NAME]
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / NAME).write_bytes(data[:900] + data)  # what an appended resume leaves
    with pytest.raises(InputError, match="bytes before the zip archive"):
        fetch_file(_download(server), tmp_path)
    assert not (tmp_path / "hashes.json").exists()


def test_promise_a_trickling_server_meets_the_deadline_named_in_the_message(server, tmp_path):
    Misbehaving.mode = "trickle"
    started = time.monotonic()
    with pytest.raises(InputError, match=r"not complete after 1 s \(the deadline for one file"):
        fetch_file(_download(server), tmp_path, deadline_s=1.0)
    assert time.monotonic() - started < 10


def test_promise_a_mirrors_bytes_never_become_the_publishers_hash(server, tmp_path):
    publisher = Download(
        f"https://github.com/wasserth/TotalSegmentator/releases/download/v2.5.0-weights/{NAME}"
    )
    path, sha256, record = fetch_file(publisher, tmp_path, mirror=server)
    assert path.is_file() and record is False
    crop = "Dataset298_TotalSegmentator_total_6mm_1559subj"
    Misbehaving.files[f"{crop}.zip"] = _archive(crop)
    cache, weights = tmp_path / "cache", tmp_path / "weights"
    assert catalogue.pull("lung_nodules", cache, mirror=server, weights=weights) == weights
    assert (weights / crop).is_dir() and (weights / "Dataset913_lung_nodules").is_dir()
    assert downloads.read_hashes(cache) == {}  # nothing recorded as the publisher's


def test_promise_the_publishers_files_are_recorded_once_they_pass_every_check(server, tmp_path, monkeypatch):
    import dataclasses

    crop = "Dataset298_TotalSegmentator_total_6mm_1559subj"
    Misbehaving.files[f"{crop}.zip"] = _archive(crop)
    entry = catalogue.CATALOGUE["lung_nodules"]
    here = dataclasses.replace(
        entry, downloads=tuple(Download(f"{server}/{d.url.rsplit('/', 1)[1]}") for d in entry.downloads)
    )
    monkeypatch.setitem(catalogue.CATALOGUE, "lung_nodules", here)
    Misbehaving.files[NAME] = b"PK" + _archive()[2:-30]  # damaged: refused, nothing recorded
    with pytest.raises(InputError, match="expected a zip archive"):
        catalogue.pull("lung_nodules", tmp_path / "cache", weights=tmp_path / "weights")
    assert downloads.read_hashes(tmp_path / "cache") == {}
    Misbehaving.files[NAME] = _archive()
    catalogue.pull("lung_nodules", tmp_path / "cache", weights=tmp_path / "weights")
    assert downloads.read_hashes(tmp_path / "cache") == {
        name: hashlib.sha256(Misbehaving.files[name]).hexdigest() for name in (NAME, f"{crop}.zip")
    }


def test_promise_a_recorded_hash_that_differs_moves_the_file_aside(server, tmp_path):
    downloads.record_hash(tmp_path, NAME, "0" * 64)
    publisher = _download(server)
    with pytest.raises(InputError, match=r"recorded at its first download.*moved to") as error:
        fetch_file(publisher, tmp_path)
    assert "hashes.json" in error.value.hint and (tmp_path / "downloads" / f"{NAME}.bad").is_file()


@pytest.mark.parametrize("content", ["{", '{"a.zip": 5}', "[]"])
def test_promise_a_corrupt_hashes_json_is_named_with_the_fix(tmp_path, content):
    (tmp_path / "hashes.json").write_text(content)
    with pytest.raises(InputError, match="hashes.json") as error:
        downloads.read_hashes(tmp_path)
    assert "remove hashes.json" in error.value.hint


def test_promise_two_pulls_at_once_take_turns_and_keep_both_hashes(server, tmp_path):
    second = "Dataset914_other.zip"
    Misbehaving.files[second] = _archive()[::-1] + b""  # any bytes; not unpacked here
    results: list[str] = []

    def one(name: str) -> None:
        with downloads.cache_lock(tmp_path):
            path, sha256, _ = fetch_file(Download(f"{server}/{name}", path=name), tmp_path)
            time.sleep(0.2)
            downloads.record_hash(tmp_path, path.name, sha256)
            results.append(name)

    threads = [threading.Thread(target=one, args=(n,)) for n in (NAME, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(downloads.read_hashes(tmp_path)) == sorted([NAME, second]) and len(results) == 2


def test_promise_model_zoo_bundles_carry_the_checksums_the_model_zoo_publishes():
    """The SHA-1s of Project-MONAI/model-zoo's models/model_info.json for these versions."""
    published = {
        "wholeBody_ct_segmentation_v0.2.5.zip": "sha1:d3be077219fea4ac9630efddd81c19e0676bf206",
        "spleen_ct_segmentation_v0.5.9.zip": "sha1:8e99230050906d0d3cec484010598aa138201892",
        "lung_nodule_ct_detection_v0.6.8.zip": "sha1:1abae7a9379861c477f7b189e0171cfcd71370b0",
    }
    found = {
        d.url.rsplit("/", 1)[1]: d.hash
        for m in catalogue.CATALOGUE.values()
        if m.kind == "bundle"
        for d in m.downloads
        if d.path is None
    }
    assert found == published
    assert all(
        d.hash for m in catalogue.CATALOGUE.values() if m.kind == "bundle" for d in m.downloads
    )  # every file of a bundle has a published hash


def test_promise_a_zoo_zip_that_differs_from_the_published_checksum_is_refused(server, tmp_path):
    Misbehaving.files["spleen_ct_segmentation_v0.5.9.zip"] = _archive()
    with pytest.raises(InputError, match=r"expected sha1 8e99230050906d0d3cec484010598aa138201892"):
        catalogue.pull("spleen_ct_segmentation", tmp_path, mirror=server)
    assert (tmp_path / "downloads" / "spleen_ct_segmentation_v0.5.9.zip.bad").is_file()
    assert not (tmp_path / "spleen_ct_segmentation").exists()


def test_promise_extraction_checks_free_space_against_the_declared_size(tmp_path, monkeypatch):
    import shutil as shutil_module

    from voxpipe.errors import OutputError
    from voxpipe.pipelines.bundles.export import safe_extract_zip

    archive = tmp_path / "a.zip"
    archive.write_bytes(_archive())
    real = shutil_module.disk_usage
    monkeypatch.setattr(
        "voxpipe.pipelines.bundles.export.shutil.disk_usage",
        lambda p: real(p)._replace(free=1000),
    )
    with pytest.raises(OutputError, match=r"needs [\d,]+ bytes.*1,000 free"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
