"""A small in-memory Hugging Face Hub for tests.

It speaks the subset of the Hub HTTP API that the real `huggingface_hub` client uses to create repos,
commit files (regular and LFS), create branches and download files, so push/pull code can be tested
against the real client with no network access. The server runs in the test process, the client in a
subprocess: `huggingface_hub` reads `HF_ENDPOINT` at import time (see `client_env`).

Model, dataset and Space repos are served, each type in its own namespace (a Space may share its id with a
model), by the same routes: `/api/{models,datasets,spaces}/...` and `/{datasets/,spaces/,}{repo}/resolve/...`.
Repo ids must be namespaced (`user/name`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# Files the server asks the client to send through LFS, as the real Hub does for weights.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"

REPO_TYPES = ("model", "dataset", "space")
_REPO = r"(?P<repo>[^/]+/[^/]+)"
# Where the Hub's URLs name the repo type: `/api/{type}s/...` always; `/{type}s/{repo}...` except for models.
_API_TYPE = r"(?P<type>models|datasets|spaces)"
_URL_TYPE = r"(?:(?P<type>datasets|spaces)/)?"
_API_REPO_RE = re.compile(
    rf"^/api/{_API_TYPE}/{_REPO}(?:/(?P<action>preupload|commit|branch|revision|tree|refs|commits)(?:/(?P<rest>.*))?)?$"
)
_LFS_BATCH_RE = re.compile(rf"^/{_URL_TYPE}{_REPO}\.git/info/lfs/objects/batch$")
_LFS_VERIFY_RE = re.compile(rf"^/{_URL_TYPE}{_REPO}\.git/info/lfs/objects/verify$")
_LFS_UPLOAD_RE = re.compile(rf"^/__lfs_upload__/(?P<type>model|dataset|space)/{_REPO}/(?P<oid>[0-9a-f]{{64}})$")
_RESOLVE_RE = re.compile(rf"^/{_URL_TYPE}{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def repo_type_of(match: re.Match) -> str:
    """'model', 'dataset' or 'space' from a route's `type` group (plural or singular; absent: a model)."""
    return (match["type"] or "model").removesuffix("s")


def url_prefix(repo_type: str) -> str:
    """The path before a repo id in the Hub's web and git URLs: '' for models, 'spaces/' for Spaces."""
    return "" if repo_type == "model" else f"{repo_type}s/"


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob: what the Hub reports as `oid`/`blobId` for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs_path(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size > LFS_SIZE_THRESHOLD


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Commit:
    oid: str
    message: str
    description: str
    parent: str | None
    files: dict[str, bytes]
    lfs_paths: frozenset[str]
    date: str


@dataclass
class Repo:
    repo_id: str
    owner: str
    private: bool = False
    repo_type: str = "model"
    sdk: str | None = None  # a Space's SDK (gradio, docker, ...), as create_repo sent it
    created_at: str = field(default_factory=_now)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    history: list[Commit] = field(default_factory=list)  # every commit, all branches, in push order
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit oid

    def commit_by_oid(self, oid: str) -> Commit | None:
        return next((c for c in self.history if c.oid == oid), None)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name or a full commit oid."""
        if revision in self.refs:
            return self.commit_by_oid(self.refs[revision])
        return self.commit_by_oid(revision)

    @property
    def head(self) -> Commit:
        return self.resolve("main")

    @property
    def files(self) -> dict[str, bytes]:
        """Files on `main`, LFS files resolved to their bytes."""
        return self.head.files

    @property
    def lfs_paths(self) -> frozenset[str]:
        return self.head.lfs_paths

    @property
    def commits(self) -> list[str]:
        """Commit messages, oldest first, all branches (the first one is the Hub's "initial commit")."""
        return [c.message for c in self.history]

    @property
    def branches(self) -> dict[str, dict[str, bytes]]:
        return {name: self.commit_by_oid(oid).files for name, oid in self.refs.items()}


class HubError(Exception):
    """Turned into an error reply shaped like the Hub's (JSON body plus X-Error-* headers)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.extra = extra


class HubServer:
    """In-memory Hub on 127.0.0.1, served from a daemon thread; use as a context manager."""

    def __init__(
        self,
        token: str = "hf_test_token",
        user: str = "alice",
        port: int = 0,
        other_owner_repos: set[str] | frozenset[str] = frozenset(),
        orgs: tuple[str, ...] = (),
    ):
        self.token = token
        self.user = user
        self.orgs = tuple(orgs)
        self.repos: dict[str, Repo] = {}  # model repos
        self.datasets: dict[str, Repo] = {}
        self.spaces: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path without query string)
        self.unhandled: list[tuple[str, str]] = []  # requests that matched no route: a gap in this server
        self.errors: list[str] = []  # tracebacks of server-side crashes (replied as 500)
        self._lock = threading.RLock()
        self._counter = 0
        # LFS upload URLs carry no Authorization header (like presigned S3 URLs): a secret guards them.
        self._upload_secret = secrets.token_hex(16)
        for repo_id in other_owner_repos:
            owner = repo_id.split("/")[0]
            if owner == user:
                owner = f"not-{user}"
            self._new_repo(repo_id, owner=owner, private=False)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HubServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def store(self, repo_type: str) -> dict[str, Repo]:
        """The repos of one type: `repos` (models), `datasets` or `spaces`."""
        return {"model": self.repos, "dataset": self.datasets, "space": self.spaces}[repo_type]

    def create_repo(self, repo_id: str, private: bool = False, owner: str | None = None, repo_type: str = "model",
                    sdk: str | None = None) -> Repo:
        """Seed a repo directly (no HTTP)."""
        with self._lock:
            return self._new_repo(repo_id, owner=owner or repo_id.split("/")[0], private=private,
                                  repo_type=repo_type, sdk=sdk)

    def add_commit(self, repo_id: str, files: dict[str, bytes], message: str = "seed", branch: str = "main",
                   repo_type: str = "model") -> str:
        """Seed files directly (no HTTP), stored as an upload would store them (LFS for weights); returns the oid."""
        with self._lock:
            repo = self.store(repo_type)[repo_id]
            head = repo.resolve(branch)
            lfs_paths = set(head.lfs_paths) - set(files)
            for path, data in files.items():
                if is_lfs_path(path, len(data)):
                    lfs_paths.add(path)
                    repo.lfs_objects[hashlib.sha256(data).hexdigest()] = data
            return self._add_commit(repo, branch, message, "", {**head.files, **files}, lfs_paths).oid

    # Storage -----------------------------------------------------------------------------------------

    def _new_repo(self, repo_id: str, owner: str, private: bool, repo_type: str = "model",
                  sdk: str | None = None) -> Repo:
        repo = Repo(repo_id=repo_id, owner=owner, private=private, repo_type=repo_type, sdk=sdk)
        # The real Hub creates repos with one commit, so `main` always resolves to a sha.
        self._add_commit(repo, "main", "initial commit", "", {}, frozenset())
        self.store(repo_type)[repo_id] = repo
        return repo

    def repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{url_prefix(repo.repo_type)}{repo.repo_id}"

    def _add_commit(self, repo, branch, message, description, files, lfs_paths) -> Commit:
        self._counter += 1
        parent = repo.refs.get(branch)
        seed = f"{repo.repo_id}\n{parent}\n{message}\n{self._counter}\n" + "\n".join(
            f"{p}:{git_blob_sha1(c)}" for p, c in sorted(files.items())
        )
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            message=message,
            description=description,
            parent=parent,
            files=dict(files),
            lfs_paths=frozenset(lfs_paths),
            date=_now(),
        )
        repo.history.append(commit)
        repo.refs[branch] = commit.oid
        return commit

    def _entry(self, path: str, commit: Commit) -> dict:
        """Tree entry of a file, in the shape of `GET /api/models/{repo}/tree`."""
        content = commit.files[path]
        entry = {"type": "file", "path": path, "size": len(content)}
        if path in commit.lfs_paths:
            sha256 = hashlib.sha256(content).hexdigest()
            pointer = lfs_pointer(sha256, len(content))
            entry["oid"] = git_blob_sha1(pointer)
            entry["lfs"] = {"oid": sha256, "size": len(content), "pointerSize": len(pointer)}
        else:
            entry["oid"] = git_blob_sha1(content)
        return entry

    def _repo_info(self, repo: Repo, commit: Commit) -> dict:
        """`GET /api/{models,datasets,spaces}/{repo}`: ModelInfo's fields (a Space's add its sdk)."""
        siblings = []
        for path in sorted(commit.files):
            entry = self._entry(path, commit)
            sibling = {"rfilename": path, "size": entry["size"], "blobId": entry["oid"]}
            if "lfs" in entry:
                lfs = entry["lfs"]
                sibling["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        info = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.owner,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(len(c) for c in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
        return info


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, so every reply must carry Content-Length and every body be read.
    protocol_version = "HTTP/1.1"
    server_version = "TestHub/1.0"

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def log_message(self, format, *args):
        # Silent: the default handler writes request lines to stderr; tests must never print a token.
        pass

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    # Plumbing ----------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailer section ends with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str | None = None):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers, "application/json; charset=utf-8")

    def _dispatch(self):
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        with self.hub._lock:
            self.hub.requests.append((self.command, path))
        try:
            body = self._read_body()
            self._route(path, query, body)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json(err.status, {"error": err.message, **err.extra}, headers)
        except Exception:
            with self.hub._lock:
                self.hub.errors.append(traceback.format_exc())
            self._json(500, {"error": "Internal error in the test hub server"})

    def _auth(self) -> str:
        """'valid', 'invalid' or 'missing', for the Bearer token of this request."""
        header = self.headers.get("Authorization")
        if not header:
            return "missing"
        scheme, _, value = header.partition(" ")
        ok = scheme.lower() == "bearer" and secrets.compare_digest(value.strip(), self.hub.token)
        return "valid" if ok else "invalid"

    def _require_token(self):
        if self._auth() != "valid":
            raise HubError(401, INVALID_CREDENTIALS)

    def _readable_repo(self, repo_type: str, repo_id: str) -> Repo:
        # A wrong token is refused everywhere, as on the real Hub; no token only hides private repos.
        auth = self._auth()
        if auth == "invalid":
            raise HubError(401, INVALID_CREDENTIALS)
        repo = self.hub.store(repo_type).get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        if repo.private and (auth != "valid" or repo.owner not in (self.hub.user, *self.hub.orgs)):
            raise HubError(401 if auth == "missing" else 404, "Repository not found", code="RepoNotFound")
        return repo

    def _writable_repo(self, repo_type: str, repo_id: str) -> Repo:
        self._require_token()
        repo = self._readable_repo(repo_type, repo_id)
        if repo.owner not in (self.hub.user, *self.hub.orgs):
            raise HubError(403, f"You don't have the rights to write to {repo_id}: it belongs to {repo.owner}")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    # Routes ------------------------------------------------------------------------------------------

    def _route(self, path: str, query: dict, body: bytes):
        method = self.command
        if path == "/api/whoami-v2" and method == "GET":
            return self._whoami()
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if path == "/api/repos/delete" and method == "DELETE":
            return self._delete_repo(json.loads(body or b"{}"))
        if path == "/api/validate-yaml" and method == "POST":
            return self._json(200, {"errors": [], "warnings": []})
        if m := _API_REPO_RE.match(path):
            repo_type, repo_id, action = repo_type_of(m), unquote(m["repo"]), m["action"]
            rest = [unquote(part) for part in m["rest"].split("/")] if m["rest"] else []
            handler = {
                ("GET", None): self._repo_info_route,
                ("GET", "revision"): self._repo_info_route,
                ("GET", "tree"): self._tree,
                ("GET", "refs"): self._refs,
                ("GET", "commits"): self._list_commits,
                ("POST", "preupload"): self._preupload,
                ("POST", "commit"): self._commit,
                ("POST", "branch"): self._create_branch,
            }.get((method, action))
            if handler is not None:
                return handler(repo_type, repo_id, rest, query, body)
        if (m := _LFS_BATCH_RE.match(path)) and method == "POST":
            return self._lfs_batch(repo_type_of(m), unquote(m["repo"]), json.loads(body or b"{}"))
        if (m := _LFS_UPLOAD_RE.match(path)) and method == "PUT":
            return self._lfs_upload(repo_type_of(m), unquote(m["repo"]), m["oid"], query, body)
        if (m := _LFS_VERIFY_RE.match(path)) and method == "POST":
            return self._lfs_verify(repo_type_of(m), unquote(m["repo"]), json.loads(body or b"{}"))
        if (m := _RESOLVE_RE.match(path)) and method in ("GET", "HEAD"):
            return self._resolve(repo_type_of(m), unquote(m["repo"]), unquote(m["rev"]), unquote(m["path"]))
        with self.hub._lock:
            self.hub.unhandled.append((method, path))
        raise HubError(404, f"Not found: the test hub has no route for {method} {path}")

    def _whoami(self):
        self._require_token()
        hub = self.hub
        self._json(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(hub.user.encode()).hexdigest()[:24],
                "name": hub.user,
                "fullname": hub.user.title(),
                "email": f"{hub.user}@example.com",
                "emailVerified": True,
                "isPro": False,
                "orgs": [{"type": "org", "name": org, "roleInOrg": "write"} for org in hub.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            },
        )

    def _create_repo(self, payload: dict):
        self._require_token()
        hub = self.hub
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        if repo_type == "space" and payload.get("sdk") not in ("gradio", "streamlit", "docker", "static"):
            raise HubError(400, "A Space needs an sdk: gradio, streamlit, docker or static")
        namespace = payload.get("organization") or hub.user
        repo_id = f"{namespace}/{payload['name']}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = f"{hub.url}/{url_prefix(repo_type)}{repo_id}"
        with hub._lock:
            if repo_id in hub.store(repo_type):
                # `create_repo(exist_ok=True)` reads `url` from this 409 reply.
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            if namespace not in (hub.user, *hub.orgs):
                raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace "
                                    f"{namespace}")
            hub._new_repo(repo_id, owner=namespace, private=private, repo_type=repo_type, sdk=payload.get("sdk"))
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict):
        self._require_token()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        with self.hub._lock:
            self._writable_repo(repo_type, repo_id)
            del self.hub.store(repo_type)[repo_id]
        self._json(200, {})

    def _repo_info_route(self, repo_type, repo_id, rest, query, body):
        repo = self._readable_repo(repo_type, repo_id)
        with self.hub._lock:
            commit = self._commit_at(repo, "/".join(rest) or "main")
            self._json(200, self.hub._repo_info(repo, commit))

    def _tree(self, repo_type, repo_id, rest, query, body):
        repo = self._readable_repo(repo_type, repo_id)
        if not rest:
            raise HubError(404, "Missing revision")
        # The client quotes the revision and the folder path with safe="", so each is one segment.
        revision, folder = rest[0], "/".join(rest[1:]).strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        with self.hub._lock:
            commit = self._commit_at(repo, revision)
            prefix = f"{folder}/" if folder else ""
            paths = [p for p in sorted(commit.files) if p.startswith(prefix)]
            if folder and not paths:
                raise HubError(
                    404, f"Entry not found: {folder}", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid}
                )
            entries, folders = [], set()
            for path in paths:
                parts = path[len(prefix):].split("/")
                # Every ancestor folder inside the listed one is a "directory" entry.
                for depth in range(1, len(parts)):
                    if depth == 1 or recursive:
                        folders.add(prefix + "/".join(parts[:depth]))
                if len(parts) == 1 or recursive:
                    entries.append(self.hub._entry(path, commit))
            for sub in sorted(folders):
                oid = hashlib.sha1(sub.encode()).hexdigest()
                entries.append({"type": "directory", "path": sub, "size": 0, "oid": oid})
        self._json(200, entries)

    def _refs(self, repo_type, repo_id, rest, query, body):
        repo = self._readable_repo(repo_type, repo_id)
        with self.hub._lock:
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid} for name, oid in repo.refs.items()
            ]
        self._json(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def _list_commits(self, repo_type, repo_id, rest, query, body):
        repo = self._readable_repo(repo_type, repo_id)
        with self.hub._lock:
            commit = self._commit_at(repo, "/".join(rest) or "main")
            items = []
            while commit is not None:
                items.append(
                    {
                        "id": commit.oid,
                        "title": commit.message,
                        "message": commit.description,
                        "authors": [{"user": repo.owner}],
                        "date": commit.date,
                    }
                )
                commit = repo.commit_by_oid(commit.parent) if commit.parent else None
        self._json(200, items)

    def _preupload(self, repo_type, repo_id, rest, query, body):
        repo = self._writable_repo(repo_type, repo_id)
        payload = json.loads(body or b"{}")
        with self.hub._lock:
            commit = repo.resolve("/".join(rest) or "main")
            files = []
            for item in payload.get("files", []):
                path, size = item["path"], int(item.get("size", 0))
                mode = "lfs" if is_lfs_path(path, size) else "regular"
                info = {"path": path, "uploadMode": mode, "shouldIgnore": False}
                # The client skips files whose remote oid equals its local one (sha256 for LFS, git sha1 otherwise).
                if commit is not None and path in commit.files:
                    content = commit.files[path]
                    if path in commit.lfs_paths:
                        info["oid"] = hashlib.sha256(content).hexdigest()
                    else:
                        info["oid"] = git_blob_sha1(content)
                files.append(info)
        self._json(200, {"files": files, "commitOid": commit.oid if commit else None})

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict):
        repo = self._writable_repo(repo_type, repo_id)
        base = self.hub.repo_url(repo)
        if payload.get("operation") != "upload":
            raise HubError(400, "The test hub only supports LFS uploads")
        objects = []
        with self.hub._lock:
            for obj in payload.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                entry = {"oid": oid, "size": size, "authenticated": True}
                if oid not in repo.lfs_objects:
                    # No "header"/"chunk_size": the client then does a single PUT ("basic" transfer).
                    entry["actions"] = {
                        "upload": {
                            "href": f"{self.hub.url}/__lfs_upload__/{repo_type}/{repo_id}/{oid}"
                                    f"?secret={self.hub._upload_secret}",
                        },
                        "verify": {"href": f"{base}.git/info/lfs/objects/verify"},
                    }
                objects.append(entry)
        body = json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()
        self._send(200, body, content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self, repo_type: str, repo_id: str, oid: str, query: dict, body: bytes):
        if not secrets.compare_digest(query.get("secret", [""])[0], self.hub._upload_secret):
            raise HubError(403, "Invalid upload signature")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match its sha256 oid")
        with self.hub._lock:
            repo = self.hub.store(repo_type).get(repo_id)
            if repo is None:
                raise HubError(404, "Repository not found", code="RepoNotFound")
            repo.lfs_objects[oid] = body
        self._send(200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _lfs_verify(self, repo_type: str, repo_id: str, payload: dict):
        repo = self._writable_repo(repo_type, repo_id)
        data = repo.lfs_objects.get(payload.get("oid"))
        if data is None or len(data) != int(payload.get("size", -1)):
            raise HubError(404, f"LFS object {payload.get('oid')} was not uploaded")
        self._json(200, {"success": True})

    def _commit(self, repo_type, repo_id, rest, query, body):
        repo = self._writable_repo(repo_type, repo_id)
        if query.get("create_pr", ["0"])[0] not in ("0", ""):
            raise HubError(400, "The test hub does not support pull requests (create_pr)")
        branch = "/".join(rest) or "main"
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        with self.hub._lock:
            if branch not in repo.refs:
                raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            head = repo.resolve(branch)
            files, lfs_paths = dict(head.files), set(head.lfs_paths)
            header = {}
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    header = value
                    parent = value.get("parentCommit")
                    if parent and parent != head.oid:
                        raise HubError(412, "A commit has happened since. Please refresh and try again.")
                elif key == "file":
                    content = value["content"]
                    data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                    files[value["path"]] = data
                    lfs_paths.discard(value["path"])
                elif key == "lfsFile":
                    data = repo.lfs_objects.get(value["oid"])
                    if data is None:
                        raise HubError(
                            400,
                            f"Your push was rejected because an LFS pointer pointed to a file that does not exist"
                            f" ({value['path']})",
                        )
                    files[value["path"]] = data
                    lfs_paths.add(value["path"])
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise HubError(404, "A file with this name doesn't exist", code="EntryNotFound")
                    del files[value["path"]]
                    lfs_paths.discard(value["path"])
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(prefix)]:
                        del files[path]
                        lfs_paths.discard(path)
                else:
                    raise HubError(400, f"Unsupported commit operation {key!r}")
            commit = self.hub._add_commit(
                repo, branch, header.get("summary", ""), header.get("description", ""), files, lfs_paths
            )
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.hub.repo_url(repo)}/commit/{commit.oid}",
                "pullRequestUrl": None,
            },
        )

    def _create_branch(self, repo_type, repo_id, rest, query, body):
        repo = self._writable_repo(repo_type, repo_id)
        branch = "/".join(rest)
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        with self.hub._lock:
            if branch in repo.refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.refs[branch] = self._commit_at(repo, start).oid
        self._json(200, {})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str):
        repo = self._readable_repo(repo_type, repo_id)
        with self.hub._lock:
            commit = self._commit_at(repo, revision)
            if path not in commit.files:
                # X-Repo-Commit lets the client cache the absence of the file for this commit.
                raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid})
            data = commit.files[path]
            is_lfs = path in commit.lfs_paths
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if is_lfs:
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": len(data)})
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        # Only open-ended ranges: the client sends `bytes=N-` to resume a partial download.
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "").strip())
        if m and int(m[1]) < len(data):
            start = int(m[1])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(206, data[start:], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")


_UNSET = object()


def client_env(hub: HubServer, tmp_path, token=_UNSET) -> dict:
    """Environment for a subprocess running the real `huggingface_hub` client against `hub`.

    `token` defaults to the hub's valid token; pass another string to act with a bad token, or None
    for no token at all. The Hub cache goes to `<tmp_path>/hf_home`.
    """
    env = os.environ.copy()
    # Variables that would leak the developer's cache, token or proxy settings into the client.
    for key in (
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "TRANSFORMERS_CACHE",
        "HF_TOKEN_PATH",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_ENABLE_HF_TRANSFER",
        "HUGGINGFACE_CO_STAGING",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HF_TOKEN",
    ):
        env.pop(key, None)
    env.update(
        {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(Path(tmp_path) / "hf_home"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_OFFLINE": "0",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    token = hub.token if token is _UNSET else token
    if token is not None:
        env["HF_TOKEN"] = token
    return env
