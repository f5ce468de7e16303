"""The local store in front of a shared one (S3).

Reads: the local store first, then the shared one; a shared hit fills the
local store as its blobs are downloaded (each verified, each downloaded
once). Writes: always local; unless read-only, each new result is uploaded in
the background, blobs first and the action result last, so a shared result
never names a blob that is not there. The results of a project's recent
builds also travel as one bundle object (a few per target), so planning a
cached graph costs one request, not one per target, whatever the selection.
Where no bundle answers (none at all, or a few hundred lookups it cannot
answer), one listing of the shared results and their names (s3.result_name)
answers the rest: a named result is planned from its name alone, and its
full result is fetched, and checked against the name, only where it is
needed (its outputs are downloaded, it is kept locally or bundled, `bb why`).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from buildsys.store.s3 import S3Store, agrees
from buildsys.store.api import ActionResult, CorruptEntry, read_manifest
from buildsys.store.local import LocalStore

TRANSFER_THREADS = 16
LIST_ABOVE = 1000  # blobs to upload above which the bucket is listed instead of asked blob by blob
BUNDLE_KEEP = 3  # results per target a project's bundle keeps
LIST_RESULTS_AFTER = 256  # lookups a bundle did not answer after which the shared results are listed once
LIST_UNBUNDLED_AFTER = 32  # the same without any bundle: a listing costs 32 requests at least


class TieredStore:
    def __init__(self, local: LocalStore, remote: S3Store, *, read_only: bool = False):
        self.local = local
        self.remote = remote
        self.read_only = read_only
        self.root = local.root
        self.remote_hits = 0
        self.uploaded_results = 0
        self._remote_results: dict[str, ActionResult | None] = {}
        self._named: set[str] = set()  # blobs that remote results name
        self._bundle: dict[str, dict] = {}
        self.corrupt_in_bundle: set[str] = set()  # keys whose bundle entry was ignored
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=TRANSFER_THREADS, thread_name_prefix="bb-s3")
        # blob transfers get their own threads: a result's upload waits on its
        # blobs' uploads, which must never wait for a free result thread
        self._blob_pool = ThreadPoolExecutor(max_workers=TRANSFER_THREADS, thread_name_prefix="bb-s3-blob")
        self._uploads = []
        self._errors: list[BaseException] = []
        self._bad: set[str] = set()  # digests whose shared copy is missing or corrupt
        self._uploaded: set[str] = set()
        self._sending: dict = {}  # digest -> its upload (a future)
        self._bundle_name: str | None = None
        self._asked = 0  # lookups the bundle did not answer
        self._list_after = LIST_RESULTS_AFTER
        self._listed: set[str] | None = None  # keys of every shared result, once listed
        self._names: dict[str, ActionResult] = {}  # key -> the light result its name carries, once listed
        self._listing = threading.Lock()  # held while they are listed
        self._from_names: set[str] = set()  # keys answered by a name
        self._light: dict[str, ActionResult] = {}  # key -> its light result, not yet checked against the full one
        self._by_name: dict[str, set[str]] = {}  # digest -> keys answered by names that name it
        self._false_names: dict[str, str] = {}  # key -> why its name was found false

    # -- results --------------------------------------------------------------------

    def load_bundle(self, name: str) -> None:
        self._bundle_name = name
        self._bundle = self.remote.get_bundle(name)
        # Without a bundle every lookup is a request: list as soon as that costs more.
        self._list_after = LIST_RESULTS_AFTER if self._bundle else LIST_UNBUNDLED_AFTER

    def _from_remote(self, key: str, ask: bool = False) -> ActionResult | None:
        """`ask`: send the request, whatever a listing says (a remote worker
        may have written the result since)."""
        if key in self._remote_results:
            return self._remote_results[key]
        raw = self._bundle.get(key)
        result = None
        if raw is not None:
            try:
                result = ActionResult.from_json(raw)
                if result.key != key:
                    result = None
            except CorruptEntry:
                result = None
            if result is None:
                self.corrupt_in_bundle.add(key)
        if result is None and not ask:
            with self._guard:
                self._asked += 1
                due = self._asked >= self._list_after
            if due:
                self._list()
            result = self._names.get(key)
            if result is not None:
                self._named_answer(result)
        if result is None and (ask or self._listed is None or key in self._listed):
            result = self.remote.get_result(key)
        self._remote_results[key] = result
        if result is not None:
            self._named.update(o.digest for o in result.outputs)
        return result

    def _list(self) -> None:
        """List the shared results and their names, once; a caller that
        comes while the listing is under way waits for it."""
        with self._listing:
            if self._listed is not None:
                return
            # threads of its own: this runs on a transfer thread, and the
            # listings must never wait for one
            with ThreadPoolExecutor(max_workers=16, thread_name_prefix="bb-s3-list") as pool:
                self._listed, self._names = self.remote.result_index(pool.map)

    def _named_answer(self, result: ActionResult) -> None:
        with self._guard:
            self._from_names.add(result.key)
            self._light[result.key] = result
            for digest in _blobs_named(result):
                self._by_name.setdefault(digest, set()).add(result.key)

    def _full(self, result: ActionResult) -> ActionResult:
        """The full result for one answered by its name: fetched once, and
        it must say what the name says, else the entry is corrupt."""
        key = result.key
        if key not in self._from_names:
            return result
        light = self._light.get(key)
        if light is None:
            if key in self._false_names:
                raise CorruptEntry(self._false_names[key])
            return self._remote_results[key]  # checked already
        try:
            full = self.remote.get_result(key)
            problem = None if agrees(light, full) else "names other outputs than the result" if full else "names a result that is not there"
        except CorruptEntry as err:
            problem = f"names a result that is not valid ({err})"
        with self._guard:
            if problem:
                self._false_names[key] = f"the name of action result {key[:12]} in {self.remote.url} {problem}"
            else:
                self._remote_results[key] = full
            self._light.pop(key, None)
        if problem:
            raise CorruptEntry(self._false_names[key])
        return full

    def _check_names(self, digest: str) -> None:
        """Before a blob that names named is used: fetch their results and
        check them, once (a false name raises CorruptEntry, every time)."""
        for key in list(self._by_name.get(digest, ())):
            self._full(self._remote_results[key])

    def full_result(self, key: str) -> ActionResult | None:
        """Like get_result, but never a result known only by its name (`bb why` reads its action)."""
        result = self.get_result(key)
        return None if result is None else self._full(result)

    def prefetch(self, keys, *, even_local: bool = False) -> None:
        """Ask the shared store for several results at once (by default only
        for keys the local store lacks)."""
        missing = [
            k for k in dict.fromkeys(keys)
            if k not in self._remote_results and k not in self._bundle and (even_local or not self.local.has_result(k))
        ]
        if self._asked + len(missing) >= self._list_after:
            self._list()  # before sending requests the listing would answer
        if len(missing) > 1:
            list(self._pool.map(self._quiet_fetch, missing))

    def _quiet_fetch(self, key: str) -> None:
        try:
            self._from_remote(key)
        except CorruptEntry:
            self._remote_results[key] = None

    def bundled(self, key: str) -> bool:
        """Is this result in the loaded plan bundle (so already shared)?"""
        return key in self._bundle

    def shared_has(self, key: str) -> bool:
        """Does the shared store hold a (well-formed) result for this key?"""
        try:
            return self._from_remote(key) is not None
        except CorruptEntry:
            return False

    def map(self, fn, items):
        """fn over items on the transfer threads, in order."""
        return self._pool.map(fn, items)

    def claim(self, key: str, give_up):
        return self.local.claim(key, give_up)

    def batched(self):
        return self.local.batched()

    def flush(self) -> None:
        self.local.flush()

    def get_result(self, key: str, fresh: bool = False) -> ActionResult | None:
        """`fresh`: ask again, even where an earlier answer was a miss (a
        remote worker may have written the result since)."""
        result = self.local.get_result(key, fresh)
        if result is not None:
            return result
        if fresh:
            self._remote_results.pop(key, None)
            self._bundle.pop(key, None)
        result = self._from_remote(key, ask=fresh)
        if result is not None:
            self.remote_hits += 1
        return result

    def put_result(self, result: ActionResult) -> None:
        self.local.put_result(result)
        if not self.read_only:
            self._uploads.append(self._pool.submit(self._upload, result))

    # -- blobs ------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        # A shared result is trusted to name blobs that exist (they are written
        # first); the bytes are verified when they are downloaded.
        return self.local.has_blob(digest) or digest in self._named

    def _ensure_local(self, digest: str) -> None:
        self._check_names(digest)
        if self.local.has_blob(digest):
            return
        with self._guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:  # one download per blob, however many targets want it
            if self.local.has_blob(digest):
                return
            tmp = self.local.temp_path()
            try:
                try:
                    self.remote.download_blob(digest, tmp)
                except CorruptEntry:
                    self._bad.add(digest)  # replace it when this digest is uploaded next
                    raise
                self.local.adopt(digest, tmp)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def fetch(self, digest: str, dest: str) -> None:
        self._ensure_local(digest)
        self.local.fetch(digest, dest)

    def fetch_many(self, digests) -> None:
        """Download blobs concurrently (materializing a tree, pulling outputs)."""
        todo = [d for d in dict.fromkeys(digests) if d in self._by_name or not self.local.has_blob(d)]
        for future in [self._blob_pool.submit(self._ensure_local, d) for d in todo]:
            future.result()

    def read_bytes(self, digest: str) -> bytes:
        self._ensure_local(digest)
        return self.local.read_bytes(digest)

    def put_file(self, path: str):
        return self.local.put_file(path)

    def put_bytes(self, data: bytes) -> str:
        return self.local.put_bytes(data)

    def discard(self, digest: str) -> None:
        self.local.discard(digest)

    # -- uploads ------------------------------------------------------------------------

    def push_blobs(self, digests, fresh=()) -> None:
        """Upload these local blobs now, skipping those the bucket has (the
        inputs of remote jobs, which read them from the shared store).
        `fresh`: blobs made just now (action specs), sent without asking."""
        fresh = list(dict.fromkeys(fresh))
        made = set(fresh)
        digests = [d for d in dict.fromkeys(digests) if d not in made]
        absent = self.remote.missing_blobs(digests) if len(digests) > LIST_ABOVE else None
        todo = [d for d in digests if absent is None or d in absent]
        futures = [self._send(d, force=absent is not None) for d in todo] + [self._send(d, force=True) for d in fresh]
        for future in futures:
            future.result()

    def blobs_of(self, result: ActionResult) -> list[str]:
        digests = [result.log] if result.log else []
        for out in result.outputs:
            digests.append(out.digest)
            if out.path.endswith("/"):
                digests.extend(fd.digest for fd in read_manifest(self.local, out.digest).values() if fd.digest)
        return digests

    def _upload(self, result: ActionResult, absent: set[str] | None = None) -> None:
        """Blobs, then the result. `absent`: the blobs known missing remotely
        (from a listing); otherwise each blob is checked before it is sent."""
        try:
            digests = list(dict.fromkeys(self.blobs_of(result)))
            if absent is None and len(digests) > LIST_ABOVE:
                absent = self.remote.missing_blobs(digests)
            if absent is not None:
                digests = [d for d in digests if d in absent or d in self._bad]
            for future in [self._send(d, force=absent is not None or d in self._bad) for d in digests]:
                future.result()
            self.remote.put_result(result)  # last: it names the blobs above
            with self._guard:
                self.uploaded_results += 1
                self._uploaded.add(result.key)
        except BaseException as err:
            self._errors.append(err)

    def _send(self, digest: str, force: bool):
        """One upload per blob however many results name it; every result
        naming it waits for that one upload before it is written."""
        with self._guard:
            future = self._sending.get(digest)
            if future is None:
                future = self._sending[digest] = self._blob_pool.submit(self.remote.upload_blob, self.local.blob_source(digest), digest, force=force)
        return future

    def push(self, results, on_done=None) -> None:
        """Upload these results (and their blobs) now, concurrently; `on_done`
        is called as each one finishes (progress)."""
        results = list(results)
        digests = [d for r in results for d in self.blobs_of(r)]
        # Many blobs: one listing per shard beats one HEAD per blob.
        absent = self.remote.missing_blobs(digests) if len(digests) > LIST_ABOVE else None
        futures = [self._pool.submit(self._upload, r, absent) for r in results]
        for f in futures:
            f.result()
            if on_done:
                on_done()
        self._raise_upload_errors()

    def _raise_upload_errors(self) -> None:
        if self._errors:
            err = self._errors[0]
            self._errors = []
            raise err

    def finish(self, results: dict[str, ActionResult]) -> None:
        """Wait for uploads; keep shared hits locally when their blobs are here."""
        for future in self._uploads:
            future.result()
        self._uploads = []
        self._raise_upload_errors()
        kept = [r for r in results.values() if r.key in self._remote_results and all(self.local.has_blob(d) for d in self.blobs_of_local(r))]
        for result in self._pool.map(self._full_or_none, kept):  # a result known by its name is fetched first
            try:
                if result is None:
                    continue
                if result.log:
                    self._ensure_local(result.log)
            except CorruptEntry:
                continue  # its log is gone or bad: keep only the outputs
            self.local.put_result(result)

    def _full_or_none(self, result: ActionResult) -> ActionResult | None:
        try:
            return self._full(result)
        except CorruptEntry:
            return None

    def share(self, results: dict[str, ActionResult]) -> None:
        """After a build (`results`: target -> its result): share local
        results the shared store may lack (an earlier upload was cut short,
        or they were built without the cache; the bundle says what is
        already there), then the project's bundle, merged with what it held."""
        if self.read_only or not results:
            return
        self.push([
            r for r in results.values()
            if r.key not in self._bundle and r.key not in self._uploaded and self._remote_results.get(r.key) is None
        ])
        bundle = self._bundle_name
        if bundle and not {r.key for r in results.values()} <= self._bundle.keys():
            # full results only (those known by their names are fetched now); a false name stays out
            full = dict(zip(results, self._pool.map(self._full_or_none, results.values())))
            ours = {r.key: {**r.to_json(), "target": name} for name, r in full.items() if r is not None}
            self.remote.put_bundle(bundle, merge_bundle(self._bundle, ours))

    def blobs_of_local(self, result: ActionResult) -> list[str]:
        """Blobs of a result, reading tree manifests only if they are local."""
        digests = [o.digest for o in result.outputs]
        for out in result.outputs:
            if out.path.endswith("/") and self.local.has_blob(out.digest):
                digests.extend(fd.digest for fd in read_manifest(self.local, out.digest).values() if fd.digest)
        return digests

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._blob_pool.shutdown(wait=True)
        self.local.close()

    def stats(self) -> dict:
        return {
            "requests": self.remote.requests,
            "bytes_down": self.remote.bytes_down,
            "bytes_up": self.remote.bytes_up,
            "hits": self.remote_hits,
            "uploaded": self.uploaded_results,
        }


def _blobs_named(result: ActionResult) -> list[str]:
    return [o.digest for o in result.outputs] + ([result.log] if result.log else [])


def merge_bundle(old: dict, ours: dict, keep: int = BUNDLE_KEEP) -> dict:
    """A project's bundle after a build: this build's results, and for each
    target the `keep` most recent results of earlier builds (other branches,
    other parameter values, the sources before an edit), so the bundle serves
    many plans and stays bounded. Entries name their target."""
    merged = dict(ours)
    counts: dict[str, int] = {}
    for raw in ours.values():
        counts[raw["target"]] = counts.get(raw["target"], 0) + 1
    earlier: dict[str, list] = {}
    for key, raw in old.items():
        if key in merged or type(raw) is not dict or type(raw.get("target")) is not str:
            continue  # one of ours, or not what bb writes: dropped
        started = raw.get("started")
        earlier.setdefault(raw["target"], []).append((started if type(started) in (int, float) else 0, key, raw))
    for name, entries in earlier.items():
        entries.sort(key=lambda e: e[0], reverse=True)
        for _, key, raw in entries[: max(0, keep - counts.get(name, 0))]:
            merged[key] = raw
    return merged
