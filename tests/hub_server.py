"""A Hub-protocol HTTP server on loopback, for tests: the endpoints huggingface_hub's client uses to create a repo,
upload (preupload, LFS batch, LFS upload and verify, ndjson commit), validate card YAML, and download (file resolve
with the Hub's headers, repo info, tree). Repositories live in memory; every commit is a snapshot with a 40-hex id.

It speaks the classic LFS protocol only, so clients run with HF_HUB_DISABLE_XET=1. Writes need a bearer token;
reads of private repositories too. Errors carry the Hub's `X-Error-Code` headers, so the client raises the same
exception types (RepositoryNotFoundError, RemoteEntryNotFoundError, RevisionNotFoundError) as against the Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".png", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".onnx", ".msgpack")
LFS_MIN_SIZE = 10 * 1024 * 1024
KNOWN_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "other", "unknown", "openrail"}


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    lfs: set[str]
    message: str


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def resolve(self, revision: str) -> Commit | None:
        if revision == "main":
            return self.head
        return next((c for c in self.commits if c.oid == revision), None)


class HubState:
    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def new_commit(self, repo: Repo, files: dict[str, bytes], lfs: set[str], message: str) -> Commit:
        digest = hashlib.sha1(
            json.dumps(
                [repo.repo_id, len(repo.commits), message, sorted((p, git_blob_sha(d)) for p, d in files.items())]
            ).encode()
        ).hexdigest()
        commit = Commit(digest, files, lfs, message)
        repo.commits.append(commit)
        return commit


def validate_card_yaml(content: str) -> str | None:
    """The Hub's checks on README metadata, as far as tests need them; returns an error message or None."""
    match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.S)
    if not match:
        return None  # a card without metadata is accepted
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        return f"Invalid YAML: {err}"
    if data is None:
        return None
    if not isinstance(data, dict):
        return '"metadata" must be a mapping'
    if "license" in data and data["license"] not in KNOWN_LICENSES:
        return f'"license" must be one of the Hub license ids, got {data["license"]!r}'
    if "tags" in data and not (isinstance(data["tags"], list) and all(isinstance(t, str) for t in data["tags"])):
        return '"tags" must be an array of strings'
    for key in ("pipeline_tag", "library_name"):
        if key in data and not isinstance(data[key], str):
            return f'"{key}" must be a string'
    for entry in data.get("model-index", []) or []:
        for result in entry.get("results", []):
            if "task" not in result or "dataset" not in result or "metrics" not in result:
                return '"model-index[].results[]" needs task, dataset and metrics'
            for metric in result["metrics"]:
                if not isinstance(metric.get("value"), (int, float)):
                    return '"model-index[].results[].metrics[].value" must be a number'
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState
    base_url: str

    def log_message(self, *args):  # quiet
        pass

    # -- plumbing -------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, b"" if head else json.dumps({"error": message}).encode(), headers, head=head)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def _token_or_401(self) -> bool:
        """Writes need a bearer token, as on the Hub; answers 401 and returns False without one."""
        if self._authorized():
            return True
        self._error(401, "Invalid credentials in Authorization header")
        return False

    def _repo(self, repo_type: str, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            self._error(404 if repo is None else 401, "Repository not found", "RepoNotFound", head)
            return None
        return repo

    # -- routing --------------------------------------------------------------------------------------------
    def do_HEAD(self):
        self._route("HEAD")

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    def _route(self, method: str):
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.state.requests.append((method, path))
        with self.state.lock:
            try:
                self._dispatch(method, path, query)
            except Exception as err:  # noqa: BLE001  (a test server reports, it does not die)
                self._error(500, f"test hub error: {type(err).__name__}: {err}")

    def _dispatch(self, method: str, path: str, query: dict):
        repo_id = r"(?P<repo>[^/]+(?:/[^/]+)?)"
        routes = [
            ("POST", r"^/api/repos/create$", self.create_repo),
            ("POST", r"^/api/validate-yaml$", self.validate_yaml),
            ("GET", r"^/api/whoami-v2$", self.whoami),
            ("POST", rf"^/api/(?P<type>model|dataset)s/{repo_id}/preupload/(?P<rev>[^/]+)$", self.preupload),
            ("POST", rf"^/api/(?P<type>model|dataset)s/{repo_id}/commit/(?P<rev>[^/]+)$", self.commit),
            ("GET", rf"^/api/(?P<type>model|dataset)s/{repo_id}/tree/(?P<rev>[^/]+)(?P<sub>/.*)?$", self.tree),
            ("GET", rf"^/api/(?P<type>model|dataset)s/{repo_id}/revision/(?P<rev>[^/]+)$", self.repo_info),
            ("GET", rf"^/api/(?P<type>model|dataset)s/{repo_id}$", self.repo_info),
            ("POST", rf"^/(?:(?P<type>dataset)s/)?{repo_id}\.git/info/lfs/objects/batch$", self.lfs_batch),
            ("PUT", r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$", self.lfs_upload),
            ("POST", r"^/lfs-verify$", self.lfs_verify),
            ("GET", rf"^/(?:(?P<type>dataset)s/)?{repo_id}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", self.resolve),
            ("HEAD", rf"^/(?:(?P<type>dataset)s/)?{repo_id}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", self.resolve),
        ]
        for verb, pattern, handler in routes:
            match = re.match(pattern, path)
            if verb == method and match:
                return handler(match.groupdict(), query, head=method == "HEAD")
        self._error(404, f"no such endpoint: {method} {path}", head=method == "HEAD")

    # -- endpoints ------------------------------------------------------------------------------------------
    def whoami(self, groups, query, head=False):
        if not self._token_or_401():
            return
        self._json(200, {"type": "user", "name": "tester", "orgs": [], "auth": {"type": "access_token"}})

    def create_repo(self, groups, query, head=False):
        if not self._token_or_401():
            return
        payload = json.loads(self._body())
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
        url = f"{self.base_url}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        repo = Repo(repo_id, repo_type, payload.get("visibility") == "private" or bool(payload.get("private")))
        self.state.repos[(repo_type, repo_id)] = repo
        gitattributes = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
        self.state.new_commit(repo, {".gitattributes": gitattributes}, set(), "initial commit")
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, groups, query, head=False):
        payload = json.loads(self._body())
        problem = validate_card_yaml(payload.get("content", ""))
        if problem:
            return self._error(400, problem)
        self._json(200, {"errors": [], "warnings": []})

    def preupload(self, groups, query, head=False):
        if not self._token_or_401():
            return
        repo = self._repo(groups["type"], groups["repo"])
        if repo is None:
            return
        payload = json.loads(self._body())
        files = []
        for entry in payload["files"]:
            lfs = entry["path"].endswith(LFS_SUFFIXES) or entry.get("size", 0) >= LFS_MIN_SIZE
            files.append({"path": entry["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        self._json(200, {"files": files, "commitOid": repo.head.oid})

    def lfs_batch(self, groups, query, head=False):
        if not self._token_or_401():
            return
        if self._repo(groups.get("type") or "model", groups["repo"]) is None:
            return
        payload = json.loads(self._body())
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.base_url}/lfs-upload/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.base_url}/lfs-verify", "header": {}},
                }
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, groups, query, head=False):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != groups["oid"]:
            return self._error(400, "sha256 of the uploaded content does not match the oid")
        self.state.lfs_objects[groups["oid"]] = data
        self._send(200)

    def lfs_verify(self, groups, query, head=False):
        payload = json.loads(self._body())
        data = self.state.lfs_objects.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            return self._error(404, "object not uploaded")
        self._json(200, {})

    def commit(self, groups, query, head=False):
        if not self._token_or_401():
            return
        repo = self._repo(groups["type"], groups["repo"])
        if repo is None:
            return
        if groups["rev"] != "main":
            return self._error(404, f"Revision {groups['rev']} not found", "RevisionNotFound")
        if query.get("create_pr"):
            return self._error(400, "the test hub does not implement pull requests")
        files, lfs, message = dict(repo.head.files), set(repo.head.lfs), ""
        for line in self._body().splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs.discard(value["path"])
            elif key == "lfsFile":
                data = self.state.lfs_objects.get(value["oid"])
                if data is None:
                    return self._error(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = data
                lfs.add(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                return self._error(400, f"the test hub does not implement {key!r} operations")
        commit = self.state.new_commit(repo, files, lfs, message)
        self._json(200, {"commitUrl": f"{self.base_url}/{repo.repo_id}/commit/{commit.oid}", "commitOid": commit.oid})

    def _commit_or_error(self, repo: Repo, revision: str, head: bool = False) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head)
        return commit

    def repo_info(self, groups, query, head=False):
        repo = self._repo(groups["type"], groups["repo"])
        if repo is None:
            return
        commit = self._commit_or_error(repo, groups.get("rev") or "main")
        if commit is None:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self._json(
            200,
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": commit.oid,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "createdAt": now,
                "lastModified": now,
                "siblings": [{"rfilename": name} for name in sorted(commit.files)],
            },
        )

    def tree(self, groups, query, head=False):
        repo = self._repo(groups["type"], groups["repo"])
        if repo is None:
            return
        commit = self._commit_or_error(repo, groups["rev"])
        if commit is None:
            return
        prefix = (groups.get("sub") or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for name in sorted(commit.files):
            if prefix and not name.startswith(prefix + "/"):
                continue
            rest = name[len(prefix) + 1 :] if prefix else name
            if "/" in rest and not recursive:
                folders.add((prefix + "/" if prefix else "") + rest.split("/")[0])
                continue
            data = commit.files[name]
            entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha(data)}
            if name in commit.lfs:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "path": f, "oid": git_blob_sha(f.encode()), "size": 0} for f in folders]
        self._json(200, entries)

    def resolve(self, groups, query, head=False):
        repo = self._repo(groups.get("type") or "model", groups["repo"], head)
        if repo is None:
            return
        commit = self._commit_or_error(repo, groups["rev"], head)
        if commit is None:
            return
        name = groups["file"]
        if name not in commit.files:
            return self._error(404, "Entry not found", "EntryNotFound", head)
        data = commit.files[name]
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if name in commit.lfs:
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": len(data)})
        else:
            headers["ETag"] = f'"{git_blob_sha(data)}"'
        self._send(200, data, headers, head=head)


class HubServer:
    """`with HubServer() as hub:` serves on 127.0.0.1 at `hub.url` from a daemon thread."""

    def __init__(self):
        self.state = HubState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        handler.base_url = self.url
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        return dict(self.state.repos[(repo_type, repo_id)].head.files)

    def commits(self, repo_id: str, repo_type: str = "model") -> list[Commit]:
        return list(self.state.repos[(repo_type, repo_id)].commits)
