#!/usr/bin/env bash
# Make (or refresh) ./.venv and install Lamina into it.
#   bash scripts/venv.sh          -> runtime install (for `lamina demo`)
#   bash scripts/venv.sh test     -> runtime + test/lint tools
#   bash scripts/venv.sh bench    -> runtime + benchmark peers (lmdb; restic, borg from apt)
# Works as root on PEP 668 distributions: it never touches the system site-packages,
# and installs Debian's python3-venv when the interpreter lacks the venv module.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
py="${PYTHON:-python3}"
if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt-get update -qq
        apt-get install -y -qq "python${ver}-venv" >/dev/null 2>&1 || apt-get install -y -qq python3-venv
    fi
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import pip' >/dev/null 2>&1; then
    "$py" -m venv --clear .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# The suite runs CPython's own generic dbm/shelve tests against lamina.dbm: Debian's python3
# ships the interpreter's `test` package separately.
if [ -n "$extra" ] && ! .venv/bin/python -c 'import test.test_dbm, test.test_shelve' >/dev/null 2>&1 \
        && command -v apt-get >/dev/null 2>&1; then
    ver=$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt-get update -qq
    apt-get install -y -qq "libpython${ver}-testsuite" >/dev/null
fi
# bench/backup.py runs restic and borg beside Lamina when they are installed: Debian's
# packages (PyPI's borgbackup ships no wheel here and needs C headers to build).
if [ "$extra" = bench ] && command -v apt-get >/dev/null 2>&1 \
        && ! { command -v restic && command -v borg; } >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq restic borgbackup >/dev/null || echo "restic/borg not installed: bench/backup.py skips them" >&2
fi
case "$extra" in
    "") .venv/bin/python -m pip install -q . ;;
    test) .venv/bin/python -m pip install -q -e '.[test]' ;;
    bench) .venv/bin/python -m pip install -q -e '.[test,bench]' ;;
    *) echo "usage: scripts/venv.sh [test|bench]" >&2; exit 2 ;;
esac
