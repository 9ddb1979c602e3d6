"""A stand-in for the Hugging Face Hub on 127.0.0.1, serving local folders as model repos.

It answers the requests huggingface_hub makes to list and download a model, with the headers
and error codes the real Hub sends, so huggingface_hub's own functions run unchanged against it
(point HF_ENDPOINT at ``server.url``):

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{revision}``: the repo's
  ``sha`` (commit id) and ``siblings`` (every file, subfolders included);
* ``GET /api/models/{repo}/tree/{revision}[/{path}]``: the file listing, for clients that ask;
* ``HEAD`` / ``GET /{repo}/resolve/{revision}/{filename}``: a file, with ``X-Repo-Commit``,
  ``ETag`` and ``Content-Length``;
* errors as ``X-Error-Code``: ``RepoNotFound`` (404), ``RevisionNotFound`` (404),
  ``EntryNotFound`` (404), and ``GatedRepo`` for the files of a gated repo requested without the
  right ``Authorization: Bearer`` token (401 without a token, 403 with another one).

And the requests huggingface_hub's ``create_repo``, ``create_branch`` and ``create_commit`` make
to upload, each answering 401 without TOKEN (or READ_TOKEN) and 403 with READ_TOKEN:

* ``POST /api/repos/create``: a model repo with an initial commit holding ``.gitattributes``
  (409 when it exists), private with ``"visibility": "private"``; a private repo is then
  RepoNotFound (401) to requests without a token;
* ``POST /api/models/{repo}/branch/{branch}``: a branch from ``startingPoint`` (default main),
  409 when it exists;
* ``POST /api/models/{repo}/preupload/{revision}``: each file's upload mode, ``lfs`` for
  LFS_SUFFIXES and files of LFS_THRESHOLD bytes or more (as the Hub's default ``.gitattributes``
  does), else ``regular``;
* ``POST /{repo}.git/info/lfs/objects/batch`` then ``PUT /lfs/{oid}``: the git-lfs basic transfer
  of those files (the Hub's Xet transfer is not served: set HF_HUB_DISABLE_XET=1);
* ``POST /api/validate-yaml``: a README's front matter, always accepted;
* ``POST /api/models/{repo}/commit/{revision}``: the NDJSON commit (a header, then ``file`` with
  base64 content, ``lfsFile`` by sha256, ``deletedFile`` and ``deletedFolder``), stored as a new
  commit of that branch and served by the endpoints above.

Every request is recorded in ``server.log``; :meth:`HubServer.downloads` lists the files sent and
:meth:`HubServer.files` those of a revision.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

TOKEN = "hf_stand_in_token"
READ_TOKEN = "hf_stand_in_read_token"
"""A token that reads every repo and writes none (403)."""
LFS_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".pth", ".h5", ".msgpack", ".ot", ".model", ".npy", ".npz",
                ".zip", ".gz", ".tar")
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)


@dataclass
class Repo:
    """A model repo: commits (commit id -> folder), refs (branch or tag -> commit id)."""

    commits: dict[str, Path] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    private: bool = False

    def commit(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _commit_id(repo_id: str, revision: str, folder: Path) -> str:
    digest = hashlib.sha1(f"{repo_id}@{revision}".encode())
    for name in _files(folder):
        digest.update(name.encode() + hashlib.sha256((folder / name).read_bytes()).digest())
    return digest.hexdigest()


class HubServer:
    """``with HubServer() as hub: hub.add("org/name", folder)``; ``hub.url`` is the endpoint."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.commits: dict[str, str] = {}
        """``repo@revision`` -> the commit id it was served as."""
        self.log: list[tuple[str, str]] = []
        self.failing: set[str] = set()
        """File names whose download answers HTTP 500 (the metadata request still succeeds)."""
        self.lfs: dict[str, bytes] = {}
        """LFS objects uploaded, by sha256."""
        self._store = tempfile.TemporaryDirectory(prefix="hub-server-")
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def add(self, repo_id: str, folder: Path, revision: str = "main", gated: bool = False) -> str:
        """Serve ``folder`` as ``revision`` (a branch or tag) of ``repo_id``; returns its commit id."""
        repo = self.repos.setdefault(repo_id, Repo())
        repo.gated = repo.gated or gated
        commit = _commit_id(repo_id, revision, folder)
        repo.commits[commit] = Path(folder)
        repo.refs[revision] = commit
        self.commits[f"{repo_id}@{revision}"] = commit
        return commit

    def files(self, repo_id: str, revision: str = "main") -> list[str]:
        """The files of ``repo_id`` at ``revision`` (subfolders included)."""
        repo = self.repos[repo_id]
        return _files(repo.commits[repo.commit(revision)])

    def new_commit(self, repo_id: str, revision: str, parent: str | None, change) -> str:
        """A commit of ``repo_id`` on the branch ``revision``: the files of ``parent`` (a commit
        id, or None for none) changed by ``change(folder)``; returns its commit id."""
        with self._lock:
            commit = hashlib.sha1(f"{repo_id}@{revision}:{parent}:{next(self._counter)}".encode()).hexdigest()
            folder = Path(self._store.name) / commit
            repo = self.repos[repo_id]
            if parent is None:
                folder.mkdir()
            else:
                shutil.copytree(repo.commits[parent], folder)
            change(folder)
            repo.commits[commit] = folder
            repo.refs[revision] = commit
            self.commits[f"{repo_id}@{revision}"] = commit
            return commit

    def stop(self) -> None:
        """Stop answering: later connections are refused."""
        self._server.shutdown()
        self._server.server_close()
        self._store.cleanup()

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.log.append((method, path))

    def downloads(self, repo_id: str | None = None) -> list[str]:
        """The files sent in full (GET /resolve answered 200), in order, as ``repo/filename``
        when ``repo_id`` is None, else the file names of that repo."""
        out = []
        for method, path in list(self.log):
            if method != "GET 200":
                continue
            parsed = _parse_resolve(path)
            if parsed and (repo_id is None or parsed[0] == repo_id):
                out.append(parsed[2] if repo_id else f"{parsed[0]}/{parsed[2]}")
        return out


def _parse_resolve(path: str) -> tuple[str, str, str] | None:
    """``/{repo}/resolve/{revision}/{filename}`` -> (repo, revision, filename)."""
    parts = urlsplit(path).path.strip("/").split("/")
    for i in (1, 2):
        if len(parts) > i + 2 and parts[i] == "resolve":
            return "/".join(map(unquote, parts[:i])), unquote(parts[i + 1]), unquote("/".join(parts[i + 2:]))
    return None


_JSON = {"Content-Type": "application/json"}


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if path == "/api/validate-yaml":
                self._body()
                return self._send(200, json.dumps({"errors": [], "warnings": []}).encode(), _JSON)
            if path == "/api/repos/create":
                return self._create_repo()
            if path.endswith(".git/info/lfs/objects/batch"):
                return self._lfs_batch(path[1:-len(".git/info/lfs/objects/batch")])
            if len(parts) >= 5 and parts[:2] == ["api", "models"] and parts[-2] in ("branch", "preupload", "commit"):
                repo_id, action, revision = "/".join(parts[2:-2]), parts[-2], parts[-1]
                return getattr(self, f"_{action}")(repo_id, revision)
            self._body()
            return self._send(404, b"not found")

        def do_PUT(self) -> None:
            parts = urlsplit(self.path).path.strip("/").split("/")
            body = self._body()
            if len(parts) != 2 or parts[0] != "lfs" or hashlib.sha256(body).hexdigest() != parts[1]:
                return self._error(400, "BadRequest", "not an LFS object upload of this content")
            with hub._lock:
                hub.lfs[parts[1]] = body
            return self._send(200)

        def _body(self) -> bytes:
            """The request's body, sent with Content-Length or in chunks."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    chunk = self.rfile.read(size)
                    self.rfile.readline()
                    if size == 0:
                        while self.rfile.readline().strip():  # trailers
                            pass
                        return b"".join(chunks)
                    chunks.append(chunk)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization") or ""
            return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

        def _may_write(self) -> int | None:
            """None when the request's token may write; else the 401 or 403 sent."""
            token = self._token()
            if token == TOKEN:
                return None
            if token == READ_TOKEN:
                return self._error(403, "Forbidden", "You don't have the rights to write to this repository")
            return self._error(401, "Unauthorized", "Invalid username or password.")

        def _writable(self, repo_id: str, revision: str | None = None):
            """(repo, commit id of ``revision``) when the token may write there; else (None, status sent)."""
            if (refused := self._may_write()) is not None:
                return None, refused
            repo = hub.repos.get(repo_id)
            if repo is None:
                return None, self._error(404, "RepoNotFound", "Repository not found")
            if revision is not None and revision not in repo.refs:
                return None, self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
            return repo, repo.refs.get(revision) if revision else None

        def _create_repo(self) -> int:
            payload = json.loads(self._body() or b"{}")
            if (refused := self._may_write()) is not None:
                return refused
            if payload.get("type", "model") != "model":
                return self._error(400, "BadRequest", "this stand-in serves model repos only")
            name, organization = payload["name"], payload.get("organization")
            repo_id = f"{organization}/{name}" if organization else name
            url = f"{hub.url}/{repo_id}"
            if repo_id in hub.repos:  # the Hub's answer names the repo's URL too
                body = {"error": "You already created this model repo", "url": url}
                return self._send(409, json.dumps(body).encode(), {**_JSON, "X-Error-Message": body["error"]})
            with hub._lock:
                hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
            hub.new_commit(repo_id, "main", None, lambda folder: (folder / ".gitattributes").write_text(GITATTRIBUTES))
            return self._send(200, json.dumps({"url": url, "name": repo_id}).encode(), _JSON)

        def _branch(self, repo_id: str, branch: str) -> int:
            payload = json.loads(self._body() or b"{}")
            repo, answered = self._writable(repo_id)
            if repo is None:
                return answered
            start = payload.get("startingPoint") or "main"
            if branch in repo.refs:
                return self._error(409, "Conflict", f"Reference already exists: refs/heads/{branch}")
            if repo.commit(start) is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id: " + start)
            with hub._lock:
                repo.refs[branch] = repo.commit(start)
                hub.commits[f"{repo_id}@{branch}"] = repo.refs[branch]
            return self._send(200, b"{}", _JSON)

        def _preupload(self, repo_id: str, revision: str) -> int:
            payload = json.loads(self._body() or b"{}")
            repo, answered = self._writable(repo_id, revision)
            if repo is None:
                return answered
            modes = [{"path": f["path"], "shouldIgnore": False,
                      "uploadMode": "lfs" if f["size"] >= LFS_THRESHOLD or f["path"].endswith(LFS_SUFFIXES)
                      else "regular"} for f in payload["files"]]
            return self._send(200, json.dumps({"files": modes, "commitOid": answered}).encode(), _JSON)

        def _lfs_batch(self, repo_id: str) -> int:
            payload = json.loads(self._body() or b"{}")
            repo, answered = self._writable(repo_id)
            if repo is None:
                return answered
            objects = []
            for obj in payload["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in hub.lfs:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs/{obj['oid']}"}}
                objects.append(entry)
            return self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                              {"Content-Type": "application/vnd.git-lfs+json"})

        def _commit(self, repo_id: str, revision: str) -> int:
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            repo, parent = self._writable(repo_id, revision)
            if repo is None:
                return parent
            if not lines or lines[0]["key"] != "header" or not lines[0]["value"].get("summary"):
                return self._error(400, "BadRequest", "a commit starts with a header that has a summary")
            missing = [op["value"]["oid"] for op in lines
                       if op["key"] == "lfsFile" and op["value"]["oid"] not in hub.lfs]
            if missing:
                return self._error(422, "BadRequest", f"LFS objects were not uploaded: {', '.join(missing)}")

            def change(folder: Path) -> None:
                for op in lines[1:]:
                    target = folder / op["value"]["path"]
                    if op["key"] in ("file", "lfsFile"):
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(op["value"]["content"]) if op["key"] == "file"
                                           else hub.lfs[op["value"]["oid"]])
                    elif op["key"] == "deletedFile":
                        target.unlink(missing_ok=True)
                    elif op["key"] == "deletedFolder":
                        shutil.rmtree(target, ignore_errors=True)

            commit = hub.new_commit(repo_id, revision, parent, change)
            answer = {"success": True, "commitOid": commit, "commitUrl": f"{hub.url}/{repo_id}/commit/{commit}",
                      "hookOutput": ""}
            return self._send(200, json.dumps(answer).encode(), _JSON)

        def _answer(self, head: bool) -> None:
            path = urlsplit(self.path).path
            if path.startswith("/api/models/"):
                self._api(path[len("/api/models/"):])
            else:
                self._resolve(path, head)

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> int:
            hub.record(f"{self.command} {status}", self.path)  # before the client can see the answer
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return status

        def _error(self, status: int, code: str, message: str, head: bool = False, commit: str | None = None) -> int:
            headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
            if commit:
                headers["X-Repo-Commit"] = commit
            return self._send(status, json.dumps({"error": message}).encode(), headers, head)

        def _find(self, repo_id: str, revision: str, head: bool = False):
            repo = hub.repos.get(repo_id)
            if repo is not None and repo.private and self._token() not in (TOKEN, READ_TOKEN):
                return None, None, self._error(401, "RepoNotFound", "Repository not found", head)
            if repo is None:
                return None, None, self._error(404, "RepoNotFound", "Repository not found", head)
            commit = repo.commit(revision)
            if commit is None:
                return repo, None, self._error(404, "RevisionNotFound", "Invalid rev id: " + revision, head)
            return repo, commit, None

        def _api(self, rest: str) -> int:
            parts = [unquote(p) for p in rest.strip("/").split("/")]
            for keyword in ("revision", "tree"):
                if keyword in parts[1:3]:
                    i = parts.index(keyword, 1)
                    repo_id, revision, sub = "/".join(parts[:i]), parts[i + 1], "/".join(parts[i + 2:])
                    break
            else:
                keyword, repo_id, revision, sub = "revision", "/".join(parts), "main", ""
            repo, commit, answered = self._find(repo_id, revision)
            if answered:
                return answered
            names = _files(repo.commits[commit])
            if keyword == "tree":
                entries = [{"type": "file", "path": n, "oid": commit, "size": 0} for n in names
                           if n.startswith(sub + "/" if sub else "")]
                if sub and not entries:
                    return self._error(404, "EntryNotFound", f"{sub} does not exist", commit=commit)
                return self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})
            info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": repo.private,
                    "gated": "manual" if repo.gated else False, "disabled": False,
                    "siblings": [{"rfilename": n} for n in names]}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

        def _resolve(self, path: str, head: bool) -> int:
            parsed = _parse_resolve(path)
            if parsed is None:
                return self._send(404, b"not found", head=head)
            repo_id, revision, filename = parsed
            repo, commit, answered = self._find(repo_id, revision, head)
            if answered:
                return answered
            if repo.gated:
                auth = self.headers.get("Authorization")
                if auth != f"Bearer {TOKEN}":
                    status = 403 if auth else 401
                    return self._error(status, "GatedRepo", f"Access to model {repo_id} is restricted.", head)
            file = repo.commits[commit] / filename
            if ".." in filename.split("/") or not file.is_file():
                return self._error(404, "EntryNotFound", f"{filename} does not exist", head, commit)
            if not head and filename in hub.failing:
                return self._send(500, b"internal error", head=head)
            body = file.read_bytes()
            headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
                       "Content-Type": "application/octet-stream"}
            return self._send(200, body, headers, head)

    return Handler
