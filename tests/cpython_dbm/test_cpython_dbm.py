"""CPython's own generic dbm and shelve tests, run against :mod:`lamina.dbm`.

Nothing of CPython is copied here: the tests are imported from the running interpreter's
``test`` package (``test.test_dbm``, ``test.test_shelve``, ``test.mapping_tests``) and their
per-module classes are instantiated once more with ``lamina.dbm`` as the module, exactly as
those files do for ``dbm.dumb``, ``dbm.gnu`` and ``dbm.ndbm``:

* ``TestCase_lamina`` — ``test_dbm.AnyDBMTestCase`` (every test of it);
* ``TestProto{0..HIGHEST}File_laminaShelve`` — ``test_shelve.TestShelveFileBase`` with
  ``mapping_tests.BasicTestMappingProtocol``, once per pickle protocol.

Those tests reach the module through ``dbm.open`` (``dbm._defaultmod`` set to it). For the
``'r'``/``'w'`` opens of an existing database, ``dbm.open`` asks ``dbm.whichdb``, which
knows only the standard library's formats; so for the duration of each test ``dbm.whichdb``
is replaced by :func:`lamina.dbm.whichdb` and ``dbm._modules`` maps ``"lamina.dbm"`` to the
module — the registration the standard library's own modules get by being built in. Each
test also runs in a fresh temporary working directory (the CPython tests use relative
``TESTFN`` paths).

A missing ``test`` package is an error, never a skip: the interpreter the virtual
environment is built on must ship it (Debian: ``libpython3.X-testsuite``).
"""

from __future__ import annotations

import dbm
import importlib
import os
import pickle
import shutil
import sys
import tempfile
import unittest
from types import ModuleType

import lamina.dbm


def _cpython_test_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        raise ImportError(
            f"{sys.executable} has no CPython test package ({name}: {exc}); these tests "
            f"need it. On Debian/Ubuntu: apt-get install libpython{ver}-testsuite, then "
            f"re-run scripts/venv.sh test") from exc


_test_dbm = _cpython_test_module("test.test_dbm")
_test_shelve = _cpython_test_module("test.test_shelve")
_mapping_tests = _cpython_test_module("test.mapping_tests")


class _LaminaRegistered:
    """Registers lamina.dbm with the stdlib ``dbm`` and runs in a temporary directory."""

    def setUp(self) -> None:
        cwd = os.getcwd()
        scratch = tempfile.mkdtemp(prefix="lamina-cpython-dbm-")
        self.addCleanup(shutil.rmtree, scratch, ignore_errors=True)
        os.chdir(scratch)
        self.addCleanup(os.chdir, cwd)
        saved_whichdb = dbm.whichdb
        dbm.whichdb = lamina.dbm.whichdb  # type: ignore[assignment]
        self.addCleanup(setattr, dbm, "whichdb", saved_whichdb)
        dbm._modules["lamina.dbm"] = lamina.dbm  # type: ignore[attr-defined]
        self.addCleanup(dbm._modules.pop, "lamina.dbm", None)  # type: ignore[attr-defined]
        super().setUp()


TestCase_lamina = type("TestCase_lamina",
                       (_LaminaRegistered, _test_dbm.AnyDBMTestCase, unittest.TestCase),
                       {"module": lamina.dbm})

for _proto in range(pickle.HIGHEST_PROTOCOL + 1):
    _name = f"TestProto{_proto}File_laminaShelve"
    globals()[_name] = type(_name, (_LaminaRegistered, _test_shelve.TestShelveFileBase,
                                    _mapping_tests.BasicTestMappingProtocol),
                            {"dbm_mod": lamina.dbm, "_args": {"protocol": _proto}})
del _proto, _name


def test_all_cpython_classes_present() -> None:
    """Guard: the generated classes exist and hold the expected CPython tests."""
    loader = unittest.TestLoader()
    names = loader.getTestCaseNames(TestCase_lamina)
    assert "test_anydbm_read" in names and "test_open_with_bytes" in names
    shelve_classes = [v for k, v in globals().items() if k.endswith("File_laminaShelve")]
    assert len(shelve_classes) == pickle.HIGHEST_PROTOCOL + 1
    for cls in shelve_classes:
        assert "test_read" in loader.getTestCaseNames(cls)
