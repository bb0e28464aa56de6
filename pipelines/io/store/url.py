"""Store URLs: ``chdb://PATH`` or ``http(s)://HOST:PORT/DB`` -> the backend that serves it."""

from __future__ import annotations

from pipelines.io.store.base import Store, StoreError
from pipelines.io.store.chdb import ChdbStore
from pipelines.io.store.http import HttpStore


def open_store(url: str, *, user: str = "default", password: str = "", ca_file: str | None = None) -> Store:
    """``chdb://PATH`` -> :class:`ChdbStore`; ``http(s)://HOST:PORT/DB`` -> :class:`HttpStore`.

    ``ca_file``: the CA certificate(s) that sign an https server's certificate (a private CA); the
    system's trust store when None. Verification is never turned off.
    """
    if url.startswith("chdb://"):
        return ChdbStore(url.removeprefix("chdb://"))
    if url.startswith(("http://", "https://")):
        return HttpStore(url, user=user, password=password, ca_file=ca_file)
    raise StoreError(f"unsupported store URL {url!r}: use chdb://PATH or http(s)://HOST:PORT/DB")
