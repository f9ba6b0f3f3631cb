"""A repository's objects read, written and removed around Lamina: the files under a local
repository's directory, or the objects of an ``s3://BUCKET/PREFIX`` through the test's own
boto3 client (the session's SeaweedFS, see :mod:`support.s3fixtures`).

Tests that damage a repository, plant foreign objects or look for plaintext use it, so that
what they see and do does not depend on the storage code under test. Keys are relative to
the repository (``images/ID.lamina``, ``keys/ID.json``), ``/``-separated on both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from support.s3server import client

SCHEME = "s3://"


class RawStore:
    """The objects of the repository at ``url`` (a local path or ``s3://``)."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.url = str(url)
        self.s3 = self.url.startswith(SCHEME)
        if self.s3:
            self.bucket, _, prefix = self.url[len(SCHEME):].partition("/")
            self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
            self.client: Any = client(os.environ["AWS_ENDPOINT_URL"])
        else:
            self.root = Path(self.url)

    def names(self, under: str = "") -> list[str]:
        """Every key (sorted) starting with ``under``, whatever its name: temporaries,
        dot-files and foreign objects included (local: files only)."""
        if not self.s3:
            if not self.root.is_dir():
                return []
            return sorted(k for k in (p.relative_to(self.root).as_posix()
                                      for p in self.root.rglob("*") if p.is_file())
                          if k.startswith(under))
        out: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + under)
        for page in pages:
            out += [str(o["Key"])[len(self.prefix):] for o in page.get("Contents", [])]
        return sorted(out)

    def sizes(self, under: str = "") -> dict[str, int]:
        """Each key's size (see :meth:`names`); a key removed while listing is left out."""
        if not self.s3:
            out = {}
            for key in self.names(under):
                try:
                    out[key] = (self.root / key).stat().st_size
                except FileNotFoundError:
                    continue
            return out
        sizes: dict[str, int] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + under)
        for page in pages:
            for o in page.get("Contents", []):
                sizes[str(o["Key"])[len(self.prefix):]] = int(o["Size"])
        return sizes

    def read(self, key: str) -> bytes:
        """The object's bytes."""
        if not self.s3:
            return (self.root / key).read_bytes()
        return bytes(self.client.get_object(Bucket=self.bucket,
                                            Key=self.prefix + key)["Body"].read())

    def write(self, key: str, data: bytes) -> None:
        """Create or replace the object."""
        if not self.s3:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def delete(self, key: str) -> None:
        """Remove the object."""
        if not self.s3:
            (self.root / key).unlink()
            return
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def exists(self, key: str) -> bool:
        """True when the object is there."""
        return key in self.names(key)

    def objects(self) -> dict[str, bytes]:
        """Every object's bytes, by key (see :meth:`names`)."""
        return {key: self.read(key) for key in self.names()}

    def copy_to(self, url: str | os.PathLike[str]) -> RawStore:
        """Copy every object to the (empty) repository location ``url``, local or S3
        (S3 to S3: server-side copies within the store); the copy's store."""
        target = RawStore(url)
        assert not target.names(), target.url
        for key in self.names():
            if self.s3 and target.s3:
                target.client.copy_object(
                    Bucket=target.bucket, Key=target.prefix + key,
                    CopySource={"Bucket": self.bucket, "Key": self.prefix + key})
            else:
                target.write(key, self.read(key))
        return target

    def multipart_uploads(self) -> list[tuple[str, str]]:
        """(key, upload id) of every unfinished multipart upload under the prefix (S3
        only; a local repository has none)."""
        if not self.s3:
            return []
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket,
                                                     Prefix=self.prefix).get("Uploads", [])
        return [(str(u["Key"])[len(self.prefix):], str(u["UploadId"])) for u in uploads]
