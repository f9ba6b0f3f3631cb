"""The encryption commands as real processes: ``repo init --encrypt``, ``key
list|add|remove|passwd``, ``backup --encrypt``, and every passphrase source; one line and
exit 14 for each authentication failure. Each repository test runs on a local directory and
on S3 (the session's SeaweedFS); key files and plaintext are looked at around Lamina
(:mod:`support.rawstore`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sealed import MARKER, make_db

from lamina.repository import layout as L
from support import cli
from support.rawstore import RawStore

AUTH = 14


def _env(password: str | None = None, new: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LAMINA_PASSWORD", "LAMINA_NEW_PASSWORD")}
    if password is not None:
        env["LAMINA_PASSWORD"] = password
    if new is not None:
        env["LAMINA_NEW_PASSWORD"] = new
    return env


def _one_line_error(proc: object, code: int) -> str:
    assert getattr(proc, "returncode") == code, (proc, code)  # noqa: B009
    err = str(getattr(proc, "stderr")).strip()  # noqa: B009
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def _key_files(raw: RawStore) -> dict[str, bytes]:
    return {k.removeprefix(L.KEYS_PREFIX): raw.read(k) for k in raw.names(L.KEYS_PREFIX)}


def test_key_add_passwd_remove_with_real_processes(repo_url: str) -> None:
    repo = repo_url
    cli.run_ok("repo", "init", repo, "--encrypt", env=_env("first"))
    listed = json.loads(cli.run_ok("key", "list", "--repo", repo, "--json",
                                   env=_env("first")).stdout)["keys"]
    assert len(listed) == 1 and listed[0]["current"] is True
    first_id = listed[0]["id"]
    cli.run_ok("key", "add", "--repo", repo, env=_env("first", new="second"))
    raw = RawStore(repo)
    before = _key_files(raw)
    assert len(before) == 2
    # passwd rewrites only the key file that the current passphrase opens
    out = json.loads(cli.run_ok("key", "passwd", "--repo", repo, "--json",
                                env=_env("second", new="third")).stdout)
    after = _key_files(raw)
    assert set(after) == set(before)
    changed = [n for n in after if after[n] != before[n]]
    assert changed == [f"{out['changed']}.json"] and out["changed"] != first_id
    err = _one_line_error(cli.run("key", "list", "--repo", repo, env=_env("second")), AUTH)
    assert "wrong passphrase" in err
    cli.run_ok("key", "list", "--repo", repo, env=_env("third"))
    cli.run_ok("key", "list", "--repo", repo, env=_env("first"))
    # remove the first key; then it no longer opens the repository
    cli.run_ok("key", "remove", first_id[:8], "--repo", repo, env=_env("third"))
    _one_line_error(cli.run("key", "list", "--repo", repo, env=_env("first")), AUTH)
    # the last key stays
    err = _one_line_error(cli.run("key", "remove", out["changed"], "--repo", repo,
                                  env=_env("third")), 2)
    assert "last key" in err
    assert list(_key_files(raw)) == [f"{out['changed']}.json"]


def test_repository_backup_and_restore_by_process(repo_url: str, tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=50)
    repo = repo_url
    pwfile = tmp_path / "pw"
    pwfile.write_text("file secret\n")
    cli.run_ok("repo", "init", repo, "--encrypt", "--password-file", str(pwfile), env=_env())
    err = _one_line_error(cli.run("backup", str(tmp_path / "db"), "--repo", repo,
                                  env=_env()), 2)  # nothing was authenticated: a usage error
    assert "is encrypted: no passphrase given" in err
    cli.run_ok("backup", str(tmp_path / "db"), "--repo", repo, "--password-file", str(pwfile),
               env=_env())
    command = f"{sys.executable} -c \"print('file secret')\""
    cli.run_ok("backup", str(tmp_path / "db"), "--repo", repo, "--password-command", command,
               env=_env())
    cli.run_ok("verify", "--repo", repo, env=_env("file secret"))
    cli.run_ok("restore", "--repo", repo, "--to", str(tmp_path / "r"),
               env=_env("file secret"))
    cli.run_ok("list", "--repo", repo, env=_env("file secret"))
    cli.run_ok("prune", "--repo", repo, "--keep-last", "1", env=_env("file secret"))
    objects = RawStore(repo).objects()
    assert any(k.startswith(L.IMAGES_PREFIX) for k in objects)
    for key, data in objects.items():
        assert MARKER not in data, key
    err = _one_line_error(cli.run("restore", "--repo", repo, "--to", str(tmp_path / "r2"),
                                  env=_env("wrong")), AUTH)
    assert not (tmp_path / "r2").exists() and "wrong passphrase" in err


def test_standalone_encrypted_image_by_process(tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=30)
    img = str(tmp_path / "img")
    cli.run_ok("backup", str(tmp_path / "db"), img, "--encrypt", env=_env("pw"))
    assert MARKER not in Path(img).read_bytes()
    info = json.loads(cli.run_ok("info", img, "--json", env=_env()).stdout)
    assert info["encrypted"] is True and info["authenticated"] is False
    assert "tables" not in info
    info = json.loads(cli.run_ok("info", img, "--json", env=_env("pw")).stdout)
    assert info["authenticated"] is True and len(info["tables"]) == 2
    plain = cli.run_ok("verify", img, env=_env())
    assert "NOT authenticated" in plain.stdout
    assert "authenticated with its key" in cli.run_ok("verify", img, env=_env("pw")).stdout
    err = _one_line_error(cli.run("verify", img, env=_env("bad")), AUTH)
    assert "wrong passphrase" in err
    err = _one_line_error(cli.run("restore", img, "--to", str(tmp_path / "r"), env=_env()),
                          AUTH)
    assert "needs its key" in err and not (tmp_path / "r").exists()
    # through stdin: the passphrase cannot come from a prompt there, the variable works
    data = Path(img).read_bytes()
    proc = cli.run_bytes("restore", "-", "--to", str(tmp_path / "r"), input=data, env=_env())
    assert proc.returncode == AUTH and not (tmp_path / "r").exists()
    proc = cli.run_bytes("restore", "-", "--to", str(tmp_path / "r"), input=data,
                         env=_env("pw"))
    assert proc.returncode == 0, proc.stderr
    # a JSON error for --json
    proc2 = cli.run("restore", img, "--to", str(tmp_path / "r3"), "--json", env=_env("bad"))
    assert proc2.returncode == AUTH
    assert json.loads(proc2.stderr)["error"] == "AuthenticationError"


def test_passphrase_sources_are_checked(repo_url: str, tmp_path: Path) -> None:
    repo = repo_url
    err = _one_line_error(cli.run("repo", "init", repo, "--encrypt", env=_env()), 2)
    assert "needs a passphrase" in err and RawStore(repo).names() == []
    empty = tmp_path / "empty"
    empty.write_text("\n")
    err = _one_line_error(cli.run("repo", "init", repo, "--encrypt", "--password-file",
                                  str(empty), env=_env()), 2)
    assert "empty" in err
    err = _one_line_error(cli.run("repo", "init", repo, "--encrypt", "--password-command",
                                  "false", env=_env()), 2)
    assert "failed with exit 1" in err
    err = _one_line_error(cli.run("repo", "init", repo, "--encrypt", "--password-file",
                                  str(empty), "--password-command", "true", env=_env()), 2)
    assert "not both" in err
    err = _one_line_error(cli.run("backup", "db", "--repo", repo, "--encrypt",
                                  env=_env("x")), 2)
    assert "repo init --encrypt" in err
    # a plaintext repository has no keys
    cli.run_ok("repo", "init", f"{repo}-plain", env=_env())
    err = _one_line_error(cli.run("key", "list", "--repo", f"{repo}-plain", env=_env()), 2)
    assert "not encrypted" in err
    assert RawStore(repo).names() == []  # none of the refusals above made anything


def test_tampered_key_file_fails_authentication(repo_url: str) -> None:
    repo = repo_url
    cli.run_ok("repo", "init", repo, "--encrypt", env=_env("pw"))
    raw = RawStore(repo)
    (key,) = raw.names(L.KEYS_PREFIX)
    doc = json.loads(raw.read(key))
    doc["kdf"]["time_cost"] += 1  # still valid JSON and in bounds: the AEAD refuses it
    raw.write(key, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    err = _one_line_error(cli.run("key", "list", "--repo", repo, env=_env("pw")), AUTH)
    assert "wrong passphrase" in err
    raw.write(key, b"{not json")
    err = _one_line_error(cli.run("key", "list", "--repo", repo, env=_env("pw")), 5)
    assert "not a Lamina key file" in err
