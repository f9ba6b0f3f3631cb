"""An encrypted repository's images read as files (``info``, ``verify``, ``restore`` of
``R/images/ID.lamina``) are authenticated with the repository's key, unlocked by the
passphrase given; an encrypted repository opened without a passphrase is a usage error
(exit 2: nothing was authenticated), one line, never "authentication failed"."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from sealed import make_db

from lamina.repository import layout as L
from support import cli


def _env(password: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_PASSWORD"}
    if password is not None:
        env["LAMINA_PASSWORD"] = password
    return env


def _encrypted_repo_with_a_backup(tmp_path: Path, repo: str) -> str:
    make_db(tmp_path / "db", rows=40)
    cli.run_ok("repo", "init", repo, "--encrypt", env=_env("pw"))
    out = cli.run_ok("backup", str(tmp_path / "db"), "--repo", repo, "--json",
                     env=_env("pw")).stdout
    backup_id: str = json.loads(out)["backup_id"]
    return backup_id


def test_an_image_file_of_an_encrypted_repository_opens_with_its_passphrase(
        tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    backup_id = _encrypted_repo_with_a_backup(tmp_path, str(repo))
    image = str(repo / L.image_key(backup_id))
    info = json.loads(cli.run_ok("info", image, "--json", env=_env("pw")).stdout)
    assert info["authenticated"] is True and info["tables"], info
    text = cli.run_ok("info", image, env=_env("pw")).stdout
    assert "LAMINA_PASSWORD" not in text and "tables:\n  t:" in text, text
    verified = cli.run_ok("verify", image, env=_env("pw")).stdout
    assert "authenticated with its key" in verified, verified
    cli.run_ok("restore", image, "--to", str(tmp_path / "restored"), env=_env("pw"))
    # a wrong passphrase: authentication failed, one line
    bad = cli.run("verify", image, env=_env("not it"))
    assert bad.returncode == 14 and bad.stderr.count("\n") == 1, bad.stderr
    # without a passphrase: checksums only, and the hint says how to give one
    plain = cli.run_ok("verify", image, env=_env()).stdout
    assert "NOT authenticated" in plain and "LAMINA_PASSWORD" in plain, plain
    # a copy outside its repository: the passphrase cannot open it; say why, not "set it"
    moved = tmp_path / "copy.lamina"
    shutil.copy(image, moved)
    out = cli.run_ok("verify", str(moved), env=_env("pw")).stdout
    assert "NOT authenticated" in out and "repository's key" in out, out
    assert "set LAMINA_PASSWORD" not in out
    text = cli.run_ok("info", str(moved), env=_env("pw")).stdout
    assert "repository's key" in text and "set LAMINA_PASSWORD" not in text, text


def test_an_encrypted_repository_without_a_passphrase_is_a_usage_error(
        tmp_path: Path, repo_url: str) -> None:
    _encrypted_repo_with_a_backup(tmp_path, repo_url)
    for args in (("verify", "--repo", repo_url), ("list", "--repo", repo_url),
                 ("backup", str(tmp_path / "db"), "--repo", repo_url)):
        proc = cli.run(*args, env=_env())
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        err = proc.stderr.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        assert "no passphrase given" in err and "authentication failed" not in err, err
    proc = cli.run("verify", "--repo", repo_url, "--json", env=_env())
    assert proc.returncode == 2 and json.loads(proc.stdout or proc.stderr)["error"]
