"""A small in-memory S3 endpoint so that tansu's persistent storage survives broker restarts.

DESIGN.md section 4: ``tansu broker --storage-engine s3://BUCKET/`` keeps topics in
object storage, so a restarted broker still has every record. The S3 server must
outlive the broker; here it is a thread of the test process (no npm, no Docker).

It implements what tansu's object store client uses: ``PUT`` (with conditional
``If-None-Match: *`` / ``If-Match: <etag>``, answered 412 on conflict), ``GET``
(with ``Range``), ``HEAD``, ``DELETE``, ``ListObjectsV2`` (``list-type=2`` with
``prefix``, ``delimiter``, ``continuation-token``), bucket ``HEAD``/``PUT``, and a
multipart upload (initiate, part, complete, abort). Authentication headers are
accepted and ignored. Not for production use of any kind.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

_LIST_PAGE = 1000


class _Objects:
    """Buckets of objects: key -> (bytes, etag, last modified); one lock for all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, dict[str, tuple[bytes, str, datetime]]] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.requests = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return

    # ------------------------------------------------------------------ plumbing

    def _target(self) -> tuple[str, str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        path = unquote(parts.path).lstrip("/")
        bucket, _, key = path.partition("/")
        return bucket, key, parse_qs(parts.query, keep_blank_values=True)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n) if n else b""
        if "aws-chunked" in (self.headers.get("Content-Encoding") or "") or self.headers.get(
            "x-amz-content-sha256", ""
        ).startswith("STREAMING-"):
            data = _dechunk(data)
        return data

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code: int, s3_code: str) -> None:
        body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{s3_code}</Code><Message>{s3_code}</Message>'
        body += "</Error>"
        self._send(code, body.encode(), {"Content-Type": "application/xml"})

    # ------------------------------------------------------------------ verbs

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._get(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._get(head=False)

    def _get(self, *, head: bool) -> None:
        store = self.server.objects
        bucket, key, query = self._target()
        with store.lock:
            store.requests += 1
            objects = store.buckets.setdefault(bucket, {})
            if not key:
                if head:
                    self._send(200)
                    return
                self._list(objects, query)
                return
            found = objects.get(key)
        if found is None:
            self._error(404, "NoSuchKey")
            return
        data, etag, modified = found
        headers = {
            "ETag": etag,
            "Last-Modified": modified.strftime("%a, %d %b %Y %H:%M:%S GMT"),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        if_none = self.headers.get("If-None-Match")
        if if_none is not None and if_none in (etag, "*"):
            self._send(304, b"", headers)
            return
        if_match = self.headers.get("If-Match")
        if if_match is not None and if_match not in (etag, "*"):
            self._error(412, "PreconditionFailed")
            return
        rng = self.headers.get("Range")
        if rng and not head:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m:
                start_s, end_s = m.groups()
                if start_s == "":
                    start, end = max(0, len(data) - int(end_s)), len(data) - 1
                else:
                    start = int(start_s)
                    end = int(end_s) if end_s else len(data) - 1
                end = min(end, len(data) - 1)
                if start >= len(data):
                    self._error(416, "InvalidRange")
                    return
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                self._send(206, data[start : end + 1], headers)
                return
        if head:
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return
        self._send(200, data, headers)

    def _list(self, objects: dict[str, tuple[bytes, str, datetime]], query: dict[str, list[str]]) -> None:
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        after = query.get("continuation-token", query.get("start-after", [""]))[0]
        keys = sorted(k for k in objects if k.startswith(prefix) and k > after)
        contents: list[str] = []
        prefixes: list[str] = []
        truncated = False
        last = ""
        for k in keys:
            if len(contents) + len(prefixes) >= _LIST_PAGE:
                truncated = True
                break
            if delimiter:
                rest = k[len(prefix) :]
                if delimiter in rest:
                    common = prefix + rest.split(delimiter, 1)[0] + delimiter
                    if common not in prefixes:
                        prefixes.append(common)
                    last = k
                    continue
            data, etag, modified = objects[k]
            contents.append(
                f"<Contents><Key>{escape(k)}</Key><LastModified>{modified.isoformat().replace('+00:00', 'Z')}"
                f"</LastModified><ETag>{escape(etag)}</ETag><Size>{len(data)}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
            last = k
        token = f"<NextContinuationToken>{escape(last)}</NextContinuationToken>" if truncated else ""
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Prefix>{escape(prefix)}</Prefix><KeyCount>{len(contents) + len(prefixes)}</KeyCount>"
            f"<MaxKeys>{_LIST_PAGE}</MaxKeys><IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{token}"
            + "".join(contents)
            + "".join(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes)
            + "</ListBucketResult>"
        )
        self._send(200, body.encode(), {"Content-Type": "application/xml"})

    def do_PUT(self) -> None:  # noqa: N802
        store = self.server.objects
        bucket, key, query = self._target()
        data = self._body()
        with store.lock:
            store.requests += 1
            objects = store.buckets.setdefault(bucket, {})
            if not key:
                self._send(200)
                return
            if "uploadId" in query:  # a part of a multipart upload
                upload = store.uploads.get(query["uploadId"][0])
                if upload is None:
                    self._error(404, "NoSuchUpload")
                    return
                upload[int(query["partNumber"][0])] = data
                self._send(200, b"", {"ETag": _etag(data)})
                return
            current = objects.get(key)
            if self.headers.get("If-None-Match") == "*" and current is not None:
                self._error(412, "PreconditionFailed")
                return
            if_match = self.headers.get("If-Match")
            if if_match is not None and (current is None or current[1] != if_match):
                self._error(412 if current is not None else 404, "PreconditionFailed")
                return
            etag = _etag(data)
            objects[key] = (data, etag, datetime.now(UTC))
        self._send(200, b"", {"ETag": etag})

    def do_POST(self) -> None:  # noqa: N802
        store = self.server.objects
        bucket, key, query = self._target()
        body = self._body()
        with store.lock:
            store.requests += 1
            objects = store.buckets.setdefault(bucket, {})
            if "uploads" in query:
                upload_id = uuid.uuid4().hex
                store.uploads[upload_id] = {}
                xml = (
                    '<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult>'
                    f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
                    "</InitiateMultipartUploadResult>"
                )
                self._send(200, xml.encode(), {"Content-Type": "application/xml"})
                return
            if "uploadId" in query:
                parts = store.uploads.pop(query["uploadId"][0], None)
                if parts is None:
                    self._error(404, "NoSuchUpload")
                    return
                numbers = [int(n) for n in re.findall(rb"<PartNumber>(\d+)</PartNumber>", body)] or sorted(parts)
                data = b"".join(parts[n] for n in numbers)
                etag = _etag(data)
                objects[key] = (data, etag, datetime.now(UTC))
                xml = (
                    '<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult>'
                    f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key><ETag>{escape(etag)}</ETag>"
                    "</CompleteMultipartUploadResult>"
                )
                self._send(200, xml.encode(), {"Content-Type": "application/xml"})
                return
        self._error(400, "InvalidRequest")

    def do_DELETE(self) -> None:  # noqa: N802
        store = self.server.objects
        bucket, key, query = self._target()
        with store.lock:
            store.requests += 1
            if "uploadId" in query:
                store.uploads.pop(query["uploadId"][0], None)
            else:
                store.buckets.setdefault(bucket, {}).pop(key, None)
        self._send(204)


def _etag(data: bytes) -> str:
    return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'


def _dechunk(data: bytes) -> bytes:
    """Decode an ``aws-chunked`` body: ``<hex size>;chunk-signature=...\\r\\n<data>\\r\\n`` ... ``0;...``."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";", 1)[0], 16)
        if size == 0:
            break
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects = _Objects()


class FakeS3:
    """An S3 endpoint on ``127.0.0.1:<free port>``, in a daemon thread; objects live in memory."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-s3", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> int:
        """Requests served so far (tests assert the broker really used the store)."""
        return self._server.objects.requests

    def object_count(self, bucket: str) -> int:
        with self._server.objects.lock:
            return len(self._server.objects.buckets.get(bucket, {}))

    def env(self) -> dict[str, str]:
        """Environment for a client of this endpoint (tansu's object_store reads the AWS_* variables)."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }

    def start(self) -> FakeS3:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def fake_s3() -> Iterator[FakeS3]:
    """A running :class:`FakeS3` for the ``with`` block."""
    s3 = FakeS3().start()
    try:
        yield s3
    finally:
        s3.stop()
