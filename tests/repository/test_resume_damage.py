"""A resume never publishes an image that does not restore: the stored parts it would skip
were damaged on the store after they were stored (other bytes of the same size, a local
upload's data file flipped under its part log). Local repository (on S3 the store's own
ETag is the part's checksum)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.core.crypto.kdf import CHEAP_KDF_ENV
from lamina.repository.storage import LocalStorage

from .resumable_sites import KINDS, content, make_site, pin_of
from .test_resumable import killed, resume_in, start_child


def test_a_resume_restores_parts_damaged_after_they_were_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHEAP_KDF_ENV, "1")
    site = make_site(KINDS["local"], tmp_path / "a", big=True)
    at_vp = content(site.db)
    killed(start_child(site, "backup.upload_part_stored:3", action="kill"))
    name = pin_of(site.db).pin_id
    present = site.parts(name)
    assert len(present) >= 3
    storage = site.repo().storage
    assert isinstance(storage, LocalStorage)
    data = storage.root / "uploads" / name / "data"
    with open(data, "r+b") as f:  # bit rot in part 2, its record untouched
        f.seek(site.part + 1000)
        byte = f.read(1)
        f.seek(site.part + 1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    resumed_id, parts = resume_in(site)
    assert parts["parts_skipped"] == len(present) - 1
    assert parts["parts_replaced"] == 0  # the damaged part counts as absent: stored again
    assert site.repo().verify(resumed_id, deep=True).ok
    out = tmp_path / "restored"
    site.repo().restore(out, id=resumed_id)
    assert content(out) == at_vp
