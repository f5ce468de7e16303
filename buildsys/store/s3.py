"""The shared store in S3 (or any S3-compatible endpoint), same layout as the
local one:

    s3://bucket/prefix/cas/<d[:2]>/<digest>     blobs
    s3://bucket/prefix/ac/<k[:2]>/<key>         action results
    s3://bucket/prefix/an/<k[:2]>/<name>        empty objects whose names carry what
                                                planning needs of a result (result_name)
    s3://bucket/prefix/bundles/<project digest> results of recent builds in one object

A listing returns names, not contents: 10,000 result names arrive in about
ten listing pages, where their results would take 10,000 GETs. A name is
written after its result and removed before it, and trusted no more than the
result: one that does not parse is ignored, and one that disagrees with its
result makes the entry corrupt.

boto3 is configured as a user would: the standard credential chain and
profiles (AWS_PROFILE), the region, and AWS_ENDPOINT_URL for S3-compatible
endpoints (MinIO, LocalStack, moto), or the `endpoint` setting. Throttling
(503 SlowDown) and dropped connections are retried by botocore with
backoff. boto3 is imported only when a shared cache is in use.
"""
from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from dataclasses import dataclass

from buildsys.digest import blake3, is_digest
from buildsys.errors import BBError
from buildsys.store.api import ActionResult, CorruptEntry, OutputEntry

SMALL = 8 << 20  # below this a blob moves in one request; above, multipart
NAME_LIMIT = 1024  # S3's longest object key, in UTF-8 bytes
_COUNT = re.compile(r"[0-9]{1,18}")
_B64 = re.compile(r"[A-Za-z0-9_-]+")


def result_name(result: ActionResult) -> str:
    """A result as an object name: its key, log, start and duration (ms),
    then per output its digest, size, x or f (executable or not) and its
    path in unpadded URL-safe base64, all joined by dots (no field holds
    one, and every character is safe in an S3 key). Only a successful
    result has a name (a failed recipe leaves no result)."""
    fields = [result.key, result.log or "-", str(round(result.started * 1000)), str(round(result.duration * 1000))]
    for o in result.outputs:
        path = base64.urlsafe_b64encode(o.path.encode()).rstrip(b"=").decode()
        fields += [o.digest, str(o.size), "x" if o.executable else "f", path]
    return ".".join(fields)


def parse_name(name: str) -> ActionResult | None:
    """The light result a name carries (no action, no provenance), or None
    when it is not one that result_name writes."""
    fields = name.split(".")
    if len(fields) < 8 or len(fields) % 4:
        return None
    key, log, started, duration = fields[:4]
    if not is_digest(key) or not (log == "-" or is_digest(log)) or not (_COUNT.fullmatch(started) and _COUNT.fullmatch(duration)):
        return None
    outputs = []
    for i in range(4, len(fields), 4):
        digest, size, mode, path = fields[i : i + 4]
        if not is_digest(digest) or not _COUNT.fullmatch(size) or mode not in ("x", "f") or not _B64.fullmatch(path):
            return None
        try:
            text = base64.urlsafe_b64decode(path + "=" * (-len(path) % 4)).decode()
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            return None
        outputs.append(OutputEntry(text, digest, int(size), mode == "x"))
    result = ActionResult(key, tuple(outputs), 0, "" if log == "-" else log, int(started) / 1000, int(duration) / 1000, {})
    # one spelling per result: base64's spare bits, leading zeros and the like are not
    return result if result_name(result) == name else None


def agrees(named: ActionResult | None, full: ActionResult | None) -> bool:
    """Does a result say what its name says (outputs, log, success)?"""
    return named is not None and full is not None and full.exit_code == 0 and full.outputs == named.outputs and full.log == named.log


class S3Error(BBError):
    """The shared cache cannot be used as configured."""


@dataclass(frozen=True)
class CacheURL:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> "CacheURL":
        m = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
        if not m:
            raise S3Error(f"'{url}' is not an S3 location.", hint="Write the cache as s3://bucket/prefix.")
        return cls(m.group(1), m.group(2).strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _explain(err: Exception, url: CacheURL, doing: str) -> S3Error:
    """One paragraph for what a user can fix."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
        ReadTimeoutError,
    )

    where = f"the shared cache {url}"
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return S3Error(
            f"no AWS credentials were found for {where} while {doing}.",
            hint="Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run 'aws configure'; or build without the cache (--no-cache).",
        )
    if isinstance(err, ProfileNotFound):
        return S3Error(f"the AWS profile named by AWS_PROFILE does not exist ({err}).", hint="Check ~/.aws/config.")
    if isinstance(err, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the AWS S3 endpoint"
        return S3Error(
            f"cannot reach {endpoint} for {where} while {doing} ({err}).",
            hint="Check the network and AWS_ENDPOINT_URL; or build without the cache (--no-cache).",
        )
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return S3Error(f"the bucket '{url.bucket}' of {where} does not exist.", hint="Check the 'cache' setting, $BB_CACHE or --cache, and the region.")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AuthorizationHeaderMalformed"):
            return S3Error(
                f"AWS rejected the credentials for {where} while {doing} ({code}).",
                hint="Check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile; refresh expired session tokens.",
            )
        if code in ("AccessDenied", "AllAccessDisabled", "Forbidden") or status == 403:
            return S3Error(
                f"access to {where} was denied while {doing}.",
                hint="Ask for s3:GetObject/s3:ListBucket (and s3:PutObject to share results) on the bucket, or use the cache read-only (--cache-read-only).",
            )
        return S3Error(f"{where} answered {code or status} while {doing}: {err}.")
    return S3Error(f"{where} failed while {doing}: {type(err).__name__}: {err}.")


class S3Store:
    """The remote tier. Every method that moves bytes verifies digests."""

    def __init__(self, url: str, *, endpoint: str = "", region: str = ""):
        import boto3
        from botocore.config import Config

        self.url = CacheURL.parse(url)
        self.requests = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self._lock = threading.Lock()
        session = boto3.session.Session()
        # Transfers retry throttling and dropped connections with backoff; the
        # first check fails fast, so a dead endpoint is reported in seconds.
        patient = Config(retries={"max_attempts": 8, "mode": "standard"}, max_pool_connections=64, connect_timeout=5, read_timeout=60)
        brisk = Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10)
        self.client = session.client("s3", region_name=region or None, endpoint_url=endpoint or None, config=patient)
        self._probe = session.client("s3", region_name=region or None, endpoint_url=endpoint or None, config=brisk)
        for client in (self.client, self._probe):
            client.meta.events.register("before-send.s3", self._count)

    def _count(self, **_kw):
        with self._lock:
            self.requests += 1

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.url.prefix, *parts) if p)

    def blob_key(self, digest: str) -> str:
        if not is_digest(digest):
            raise CorruptEntry(f"'{str(digest)[:20]}' is not a digest")
        return self._key("cas", digest[:2], digest)

    def result_key(self, key: str) -> str:
        if not is_digest(key):
            raise CorruptEntry(f"'{str(key)[:20]}' is not an action key")
        return self._key("ac", key[:2], key)

    def _call(self, doing: str, fn, **kw):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.url.bucket, **kw)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise KeyError(kw.get("Key")) from None
            raise _explain(err, self.url, doing) from None
        except BotoCoreError as err:
            raise _explain(err, self.url, doing) from None

    # -- checks ----------------------------------------------------------------------

    def check(self) -> None:
        """Fail early, with one clear paragraph, when the cache cannot be used."""
        # A listing, not HEAD: its error answers carry a code (NoSuchBucket,
        # AccessDenied...). Throttling and resets are retried; an endpoint that
        # refuses connections is reported at once.
        from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

        for attempt in range(6):
            try:
                self._probe.list_objects_v2(Bucket=self.url.bucket, Prefix=self._key("ac") + "/", MaxKeys=1)
                return
            except EndpointConnectionError as err:
                if attempt >= 1:
                    raise _explain(err, self.url, "checking the bucket") from None
            except (ConnectionClosedError, ReadTimeoutError) as err:
                if attempt == 5:
                    raise _explain(err, self.url, "checking the bucket") from None
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if code not in ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "InternalError", "ServiceUnavailable", "503") or attempt == 5:
                    raise _explain(err, self.url, "checking the bucket") from None
            except Exception as err:
                raise _explain(err, self.url, "checking the bucket") from None
            time.sleep(min(0.2 * 2**attempt, 3.0))

    # -- action results --------------------------------------------------------------------

    def get_result(self, key: str) -> ActionResult | None:
        try:
            body = self._call("reading an action result", self.client.get_object, Key=self.result_key(key))["Body"].read()
        except KeyError:
            return None
        return ActionResult.parse(body, key, str(self.url))

    def put_result(self, result: ActionResult) -> None:
        """The result, then its name (so a name never announces a result not
        yet written; a crash in between leaves a result found by GET)."""
        data = result.to_bytes()
        self._call("uploading an action result", self.client.put_object, Key=self.result_key(result.key), Body=data)
        with self._lock:
            self.bytes_up += len(data)
        name = self.name_key(result)
        if name is not None:
            self._call("uploading a result name", self.client.put_object, Key=name, Body=b"")

    def name_key(self, result: ActionResult) -> str | None:
        """Where the result's name goes, or None when it has none: a failed
        result, or outputs too many or too long for an object key (such a
        result is found by GET)."""
        if result.exit_code != 0:
            return None
        name = result_name(result)
        where = self._key("an", result.key[:2], name)
        if len(where.encode()) > NAME_LIMIT or not agrees(parse_name(name), result):
            return None
        return where

    def get_bundle(self, name: str) -> dict:
        """key -> result JSON, or {} when there is no such bundle."""
        try:
            body = self._call("reading a result bundle", self.client.get_object, Key=self._key("bundles", name))["Body"].read()
            data = json.loads(body)
            return data if isinstance(data, dict) else {}
        except KeyError:
            return {}
        except ValueError:
            return {}

    def put_bundle(self, name: str, results: dict) -> None:
        data = json.dumps(results, separators=(",", ":")).encode()
        self._call("uploading a result bundle", self.client.put_object, Key=self._key("bundles", name), Body=data)

    # -- blobs -----------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        try:
            self._call("checking a blob", self.client.head_object, Key=self.blob_key(digest))
            return True
        except KeyError:
            return False

    def missing_blobs(self, digests) -> set[str]:
        """Which of these blobs the bucket lacks, from listings of their shards."""
        wanted = set(digests)
        present: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        for shard in sorted({d[:2] for d in wanted}):
            try:
                for page in paginator.paginate(Bucket=self.url.bucket, Prefix=self._key("cas", shard) + "/"):
                    present.update(o["Key"].rsplit("/", 1)[-1] for o in page.get("Contents", ()))
            except Exception as err:
                raise _explain(err, self.url, "listing blobs") from None
        return wanted - present

    def upload_blob(self, source: bytes | str, digest: str, force: bool = False) -> bool:
        """Upload a blob's bytes, or the file at `source`, unless present
        (force: replace a copy found corrupt); True if bytes were sent."""
        if not force and self.has_blob(digest):
            return False
        if isinstance(source, bytes):
            size = len(source)
            self._call("uploading a blob", self.client.put_object, Key=self.blob_key(digest), Body=source)
        elif (size := os.path.getsize(source)) < SMALL:
            with open(source, "rb") as f:
                self._call("uploading a blob", self.client.put_object, Key=self.blob_key(digest), Body=f.read())
        else:
            from boto3.s3.transfer import TransferConfig

            try:
                self.client.upload_file(source, self.url.bucket, self.blob_key(digest), Config=TransferConfig(multipart_threshold=SMALL, multipart_chunksize=SMALL, max_concurrency=8))
            except Exception as err:  # boto3's transfer wraps errors in its own types
                raise _explain(getattr(err, "last_exception", None) or err, self.url, "uploading a blob") from None
        with self._lock:
            self.bytes_up += size
        return True

    def download_blob(self, digest: str, dest: str) -> None:
        """Download to `dest`, verifying the digest; a mismatch raises CorruptEntry."""
        h = blake3()
        try:
            obj = self._call("downloading a blob", self.client.get_object, Key=self.blob_key(digest))
            size = 0
            with open(dest, "wb") as f:
                for chunk in obj["Body"].iter_chunks(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
        except KeyError:
            raise CorruptEntry(f"blob {digest[:12]} is missing from {self.url}") from None
        with self._lock:
            self.bytes_down += size
        if h.hexdigest() != digest:
            os.unlink(dest)
            raise CorruptEntry(f"blob {digest[:12]} in {self.url} does not match its digest")

    # -- listing and removal (cache ls, stats, gc) ---------------------------------------

    def listing(self, kinds, pmap=map) -> dict[str, list[str]]:
        """kind -> the name of every object under it (ac/, an/...): sixteen
        listings per kind, one per first hex digit, run through `pmap` side
        by side (1,000 names a page)."""
        def one(job: tuple[str, str]) -> tuple[str, list[str]]:
            kind, first = job
            paginator = self.client.get_paginator("list_objects_v2")
            try:
                return kind, [
                    o["Key"].rsplit("/", 1)[-1]
                    for page in paginator.paginate(Bucket=self.url.bucket, Prefix=f"{self._key(kind)}/{first}")
                    for o in page.get("Contents", ())
                ]
            except Exception as err:
                raise _explain(err, self.url, f"listing {kind}/") from None

        found: dict[str, list[str]] = {kind: [] for kind in kinds}
        for kind, names in pmap(one, [(kind, first) for kind in kinds for first in "0123456789abcdef"]):
            found[kind].extend(names)
        return found

    def result_index(self, pmap=map) -> tuple[set[str], dict[str, ActionResult]]:
        """The key of every result in the bucket, and the light result of
        every named one that is there. A key with two names (a result
        written again with other outputs) keeps neither: GET decides."""
        found = self.listing(("ac", "an"), pmap)
        keys = {k for k in found["ac"] if is_digest(k)}
        named: dict[str, ActionResult | None] = {}
        for name in found["an"]:
            result = parse_name(name)
            if result is not None and result.key in keys:
                named[result.key] = None if result.key in named else result
        return keys, {k: r for k, r in named.items() if r is not None}

    def list(self, kind: str):
        """(name, size, last modified epoch) of every object under cas/, ac/ or an/."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.url.bucket, Prefix=self._key(kind) + "/"):
                for obj in page.get("Contents", ()):
                    yield obj["Key"].rsplit("/", 1)[-1], obj["Size"], obj["LastModified"].timestamp()
        except Exception as err:
            raise _explain(err, self.url, f"listing {kind}/") from None

    def delete(self, kind: str, names: list[str]) -> None:
        keys = [self._key(kind, n[:2], n) for n in names]
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[i : i + 1000]]
            self._call("deleting objects", self.client.delete_objects, Delete={"Objects": chunk, "Quiet": True})
