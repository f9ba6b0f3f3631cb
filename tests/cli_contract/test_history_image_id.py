"""``lamina history`` shows the image id each finished backup recorded (issue 10, item 12):
for backups to a file, to stdout and into a repository alike, without reading any image;
records of older builds (no ``image_id``) fall back to the image's header.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict
from pathlib import Path

import xxhash

import lamina
from lamina import online
from lamina.backup import history as H
from lamina.backup.history import BackupHistory
from lamina.repository import Repository
from support import cli

from .helpers import lines, make_shop


def _history(db: Path) -> list[dict[str, object]]:
    result = cli.invoke("history", str(db), "--json")
    assert result.code == 0, result
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_history_shows_the_recorded_id_of_every_kind_of_backup(tmp_path: Path,
                                                               repo_url: str) -> None:
    db = make_shop(tmp_path / "shop.db")
    repo = Repository.init(repo_url)
    image = tmp_path / "a.lamina"
    with lamina.open(db) as handle:
        to_file = handle.backup(image)
    stdout = cli.run_bytes("backup", str(db), "-")
    assert stdout.returncode == 0, stdout.stderr
    with lamina.open(db) as handle:
        to_repo = repo.backup(handle, full=True)
    image.unlink()  # the id comes from the record, not from reading the image
    rows = _history(db)
    streamed = online.verify(io.BytesIO(stdout.stdout))["image_id"]
    assert [r["image_id"] for r in rows] == [str(to_file.image_id), streamed,
                                             str(to_repo.backup_id)]
    text = lines(cli.invoke("history", str(db)).stdout)
    assert [line.split()[0] for line in text] == [r["image_id"] for r in rows]


def test_older_records_fall_back_to_the_image_header(tmp_path: Path) -> None:
    db = make_shop(tmp_path / "shop.db")
    image = tmp_path / "old.lamina"
    with lamina.open(db) as handle:
        result = handle.backup(image)
        hist = BackupHistory(handle.path, handle.lockfile)
        (entry,) = hist.entries()
    # Rewrite the history as an older build wrote it: no image_id field in any record.
    path = db / H.FILE_NAME
    data = H._header()
    for record in H.parse(path.read_bytes()):
        fields = asdict(record)
        fields.pop("image_id")
        payload = json.dumps(fields, sort_keys=True).encode()
        data += H.RECORD.pack(len(payload), xxhash.xxh3_64_intdigest(payload)) + payload
    path.write_bytes(data)
    assert entry.image_id == str(result.image_id)
    assert H.parse(path.read_bytes())[-1].image_id is None
    assert _history(db)[-1]["image_id"] == str(result.image_id)
    image.unlink()  # nothing to fall back to: no id shown rather than a wrong one
    assert _history(db)[-1]["image_id"] is None
    assert re.match(r"-\s", lines(cli.invoke("history", str(db)).stdout)[-1])
