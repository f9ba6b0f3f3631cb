"""Encryption tests create many key files: they use the documented test-only knob
(``LAMINA_TEST_CHEAP_KDF``, lamina.core.crypto.kdf) so that each costs microseconds, for
this process and every ``lamina`` process it starts."""

from __future__ import annotations

import pytest

from lamina.core.crypto.kdf import CHEAP_KDF_ENV


@pytest.fixture(autouse=True)
def _cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHEAP_KDF_ENV, "1")
