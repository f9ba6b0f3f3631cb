"""Talking to an S3-compatible object store: ``s3://BUCKET/PREFIX`` locations, the boto3
client (imported only here, only when an ``s3://`` repository is used), and what its errors
mean in Lamina's error tree.

Where the client connects and as whom come from the standard AWS settings, as every AWS
tool reads them: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``,
``AWS_PROFILE`` and the shared ``~/.aws/config`` and ``~/.aws/credentials`` files. An
explicit endpoint (``--s3-endpoint``) overrides them. With an endpoint (a self-hosted store)
requests use path-style addressing (``http://host/bucket/key``), which most self-hosted
stores need; without one boto3 chooses.

Retries: botocore's "standard" mode retries 5xx answers, throttling, timeouts and
connection errors with exponential back-off and jitter, ``AWS_MAX_ATTEMPTS`` attempts in all
(default :data:`DEFAULT_MAX_ATTEMPTS`). What still fails becomes one line: StorageError
(exit 9), AccessDeniedError (12: credentials or permission), NoSuchBucketError (13).

Concurrency: a client is thread-safe and pools up to :data:`MAX_CONNECTIONS` connections.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from lamina.errors import (
    AccessDeniedError,
    LaminaError,
    NoSuchBucketError,
    NotFoundError,
    StorageError,
    UsageError,
)

#: The URL scheme of an object-store repository.
SCHEME = "s3://"
#: Attempts per request (the first and its retries) unless ``AWS_MAX_ATTEMPTS`` says.
DEFAULT_MAX_ATTEMPTS = 6
#: Connections per client (uploads and ranged reads run in parallel).
MAX_CONNECTIONS = 32
#: Seconds to connect, and to wait for any answer byte, before a retry.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
           "ExpiredToken", "AllAccessDisabled", "AccountProblem", "InvalidSecurity",
           "403", "Forbidden"}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
#: Answers to a conditional request whose condition did not hold.
PRECONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def is_s3_url(text: str | os.PathLike[str]) -> bool:
    """True when ``text`` names an object-store repository (``s3://...``)."""
    return isinstance(text, str) and text.startswith(SCHEME)


@dataclass(frozen=True, slots=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing ``/``; may be empty)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Parse ``s3://BUCKET[/PREFIX]``. Raises UsageError naming the URL."""
        if not is_s3_url(url):
            raise UsageError(f"{url!r} is not an s3:// URL")
        bucket, _, prefix = url[len(SCHEME):].partition("/")
        prefix = prefix.strip("/")
        if not _BUCKET.match(bucket):
            raise UsageError(f"invalid bucket name {bucket!r} in {url} (3-63 characters: "
                             "lowercase letters, digits, '.' and '-')")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise UsageError(f"invalid prefix {prefix!r} in {url} (empty, '.' or '..' "
                             "components)")
        return cls(bucket, prefix)

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``."""
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else \
            f"{SCHEME}{self.bucket}"

    def object_key(self, key: str) -> str:
        """The bucket key of repository key ``key``."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def repository_key(self, object_key: str) -> str:
        """Inverse of :meth:`object_key` (``object_key`` is under the prefix)."""
        return object_key[len(self.prefix) + 1:] if self.prefix else object_key


def max_attempts() -> int:
    """Attempts per request: ``AWS_MAX_ATTEMPTS`` (at least 1), else the default."""
    raw = os.environ.get("AWS_MAX_ATTEMPTS", "")
    try:
        return max(1, int(raw)) if raw else DEFAULT_MAX_ATTEMPTS
    except ValueError:
        raise UsageError(f"AWS_MAX_ATTEMPTS={raw!r} is not a whole number") from None


def endpoint_from_env(explicit: str | None) -> str | None:
    """The endpoint URL to use: ``explicit``, else ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL``, else None (boto3's default: AWS)."""
    return (explicit or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL") or None)


def make_client(endpoint: str | None) -> Any:
    """A boto3 S3 client for ``endpoint`` (see the module doc). Imports boto3 (UsageError
    naming the extra to install when it is missing)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise UsageError("s3:// repositories need boto3: pip install 'lamina[s3]'") from None
    endpoint = endpoint_from_env(endpoint)
    session = boto3.session.Session()
    region = session.region_name or "us-east-1"
    s3_config: dict[str, str] = {"addressing_style": "path"} if endpoint else {}
    config = Config(retries={"mode": "standard", "max_attempts": max_attempts()},
                    max_pool_connections=MAX_CONNECTIONS, connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT, s3=s3_config or None,
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    try:
        return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise UsageError(f"S3 endpoint {endpoint!r} is not a URL ({exc}); give "
                         "--s3-endpoint http(s)://HOST:PORT or set AWS_ENDPOINT_URL") from None


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError (or its HTTP status as text when the
    answer had no body, as HEAD answers), None for any other exception."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    if code:
        return str(code)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None if status is None else str(status)


def translate(exc: Exception, action: str, where: str) -> LaminaError:
    """The Lamina error for a failed client call: ``action`` (a verb phrase) on ``where``
    (an ``s3://`` URL), one line. The caller raises it ``from exc``. A Lamina error
    (raised by our own code inside the call) is returned as it is."""
    if isinstance(exc, LaminaError):
        return exc
    code = error_code(exc)
    name = type(exc).__name__
    if code == "NoSuchBucket":
        return NoSuchBucketError(f"cannot {action} {where}: the bucket does not exist "
                                 "(create the repository with 'lamina repo init')")
    if code in _DENIED or name in ("NoCredentialsError", "PartialCredentialsError"):
        detail = (f"HTTP {code}" if code.isdigit() else code) if code else \
            "no credentials found"
        return AccessDeniedError(f"cannot {action} {where}: access denied ({detail}); check "
                                 "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    if code in _MISSING_KEY:
        return NotFoundError(f"no object {where}")
    if code is not None:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message") or code
        return StorageError(f"cannot {action} {where}: {code}: {_one_line(str(message))}")
    return StorageError(f"cannot {action} {where}: {_one_line(str(exc)) or name}")


def _one_line(text: str) -> str:
    return " ".join(text.split())
