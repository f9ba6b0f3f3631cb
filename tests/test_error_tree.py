"""The error tree: one root, fixed distinct exit codes per family, used by the CLI."""

from __future__ import annotations

import inspect

from lamina import errors


def _classes() -> list[type[errors.LaminaError]]:
    return [c for _n, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, errors.LaminaError)]


def test_every_error_derives_from_the_root_and_has_a_documented_code() -> None:
    for cls in _classes():
        assert issubclass(cls, errors.LaminaError)
        assert cls.exit_code in errors.EXIT_CODES, cls
        assert cls.exit_code != 0
        assert cls.__doc__, f"{cls.__name__} needs a docstring stating when it is raised"
        assert cls.__name__ in errors.__doc__, f"{cls.__name__} missing from the documented tree"


def test_usage_errors_are_apart_from_data_errors() -> None:
    for cls in _classes():
        if issubclass(cls, errors.UsageError):
            assert cls.exit_code == 2 and not issubclass(cls, errors.DataError)
        if issubclass(cls, errors.DataError):
            assert cls.exit_code not in (1, 2, 8, 9, 10)


def test_families_have_distinct_codes() -> None:
    families = {
        errors.UsageError: 2, errors.NotFoundError: 3, errors.CorruptionError: 4,
        errors.NotADatabaseError: 5, errors.VersionError: 6, errors.CheckFailedError: 7,
        errors.LockedError: 8, errors.StorageError: 9, errors.CancelledError: 10,
        errors.ChainError: 11, errors.AccessDeniedError: 12, errors.NoSuchBucketError: 13,
        errors.AuthenticationError: 14,
    }
    for cls, code in families.items():
        assert cls.exit_code == code


def test_corruption_message_names_file_and_place() -> None:
    err = errors.CorruptionError("page checksum mismatch", path="/db/data.lamina",
                                 where="page 17")
    assert str(err) == "corrupt: page checksum mismatch (/db/data.lamina, page 17)"
    assert "\n" not in str(err)


def test_storage_error_says_disk_full() -> None:
    import errno
    err = errors.storage_error(OSError(errno.ENOSPC, "No space left on device"), "write", "/x")
    assert str(err) == "cannot write /x: disk full" and err.exit_code == 9
