"""Cancellation in every phase of backup and restore leaves nothing that looks valid."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from backup_fakes import MemRestoreEngine, leftover_files, two_driver_rig

from lamina.backup import read_info, restore_into_directory, run_restore, verify_image
from lamina.errors import CancelledError, CorruptionError

# (driver, method whose call fires the cancel token)
POINTS = [("native", "begin"), ("snapshot", "begin"), ("snapshot", "get_data"),
          ("native", "prelock"), ("snapshot", "prelock"), ("native", "lock"),
          ("snapshot", "lock"), ("native", "unlock"), ("native", "get_data"),
          ("snapshot", "vp_info"), ("native", "end")]


def _arm(rig: object, who: str, method: str, event: threading.Event,
         after_vp: bool = False) -> None:
    for name, _tables, script in rig.specs:  # type: ignore[attr-defined]
        if name != who:
            continue
        state = {"vp": False}

        def hook(m: str, _method: str = method, _state: dict[str, bool] = state) -> None:
            if m == "unlock":
                _state["vp"] = True
            if m == _method and (_state["vp"] or not after_vp):
                event.set()

        script.hook = hook


@pytest.mark.parametrize(("who", "method"), POINTS)
@pytest.mark.parametrize("token", ["event", "callable"])
def test_cancel_backup_in_every_phase(tmp_path: Path, who: str, method: str,
                                      token: str) -> None:
    rig = two_driver_rig(seed=11)
    event = threading.Event()
    # "get_data" of the at-end driver fires during the initial transfer; of "native": dumping
    _arm(rig, who, method, event)
    cancel = event if token == "event" else event.is_set
    with pytest.raises(CancelledError):
        rig.run(tmp_path / "img", cancel=cancel)
    assert leftover_files(tmp_path) == []
    assert not rig.blocker.held
    for engine in rig.engines:
        calls = rig.calls(engine.name)
        if (who, method) == ("native", "end") and engine.name == "native":
            assert calls[-1] == "end"  # it ended before the cancel: nothing left to cancel
        elif "begin" in calls:
            assert calls[-1] == "cancel" and calls.count("cancel") == 1, calls
            assert "end" not in calls


def test_cancel_during_dumping_after_vp(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=12)
    event = threading.Event()
    _arm(rig, "snapshot", "get_data", event, after_vp=True)
    with pytest.raises(CancelledError):
        rig.run(tmp_path / "img", cancel=event)
    assert leftover_files(tmp_path) == []
    assert "unlock" in rig.calls("snapshot") and rig.calls("snapshot")[-1] == "cancel"


def test_cancelled_before_start_calls_nothing(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=13)
    with pytest.raises(CancelledError):
        rig.run(tmp_path / "img", cancel=lambda: True)
    assert rig.log == [] and leftover_files(tmp_path) == []


def test_cancelled_stream_image_is_not_valid(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=14)
    event = threading.Event()
    _arm(rig, "native", "get_data", event)
    out = io.BytesIO()
    with pytest.raises(CancelledError):
        rig.run(out, cancel=event, buf_size=16)
    partial = out.getvalue()
    assert len(partial) > 128  # header, catalog and some chunks went out
    with pytest.raises(CorruptionError):
        verify_image(io.BytesIO(partial))
    (tmp_path / "partial").write_bytes(partial)
    with pytest.raises(CorruptionError):
        read_info(tmp_path / "partial")
    with pytest.raises(CorruptionError):
        run_restore(io.BytesIO(partial), {"native": MemRestoreEngine("native"),
                                          "snapshot": MemRestoreEngine("snapshot")}, tmp_path)


@pytest.mark.parametrize("method", ["begin", "send_data", "end"])
def test_cancel_restore_leaves_no_destination(tmp_path: Path, method: str) -> None:
    rig = two_driver_rig(seed=15)
    rig.run(tmp_path / "img")
    event = threading.Event()

    def hook(m: str) -> None:
        if m == method:
            event.set()

    log: list[tuple[str, str, bool]] = []
    engines = {"native": MemRestoreEngine("native", log, hook=hook),
               "snapshot": MemRestoreEngine("snapshot", log)}
    dest = tmp_path / "restored"
    with pytest.raises(CancelledError):
        restore_into_directory(dest, lambda tmp: run_restore(tmp_path / "img", engines, tmp,
                                                             cancel=event), cancel=event)
    assert leftover_files(tmp_path) == ["img"]
    for engine in engines.values():
        for d in engine.drivers:
            calls = [m for w, m, _h in log if w == d.name]
            if method == "end" and d.name == "native":
                assert calls[-1] == "end"  # ended before the cancel fired
            elif "begin" in calls:
                assert calls[-1] == "cancel" and calls.count("cancel") == 1
                assert "end" not in calls


def test_cancel_after_restore_before_publish(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=16)
    rig.run(tmp_path / "img")
    event = threading.Event()
    engines = {"native": MemRestoreEngine("native"), "snapshot": MemRestoreEngine("snapshot")}

    def verify(tmp: Path, result: object) -> None:
        assert sorted(p.name for p in tmp.iterdir()) == ["native.restoring",
                                                         "snapshot.restoring"]
        event.set()  # e.g. the user hits ^C while the checker runs

    with pytest.raises(CancelledError):
        restore_into_directory(tmp_path / "restored",
                               lambda tmp: run_restore(tmp_path / "img", engines, tmp),
                               verify, cancel=event)
    assert leftover_files(tmp_path) == ["img"]
