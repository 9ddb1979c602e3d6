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

Every request is recorded in ``server.log``; :meth:`HubServer.downloads` lists the files sent.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

TOKEN = "hf_stand_in_token"


@dataclass
class Repo:
    """A model repo: commits (commit id -> folder), refs (branch or tag -> commit id)."""

    commits: dict[str, Path] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False

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

    def stop(self) -> None:
        """Stop answering: later connections are refused."""
        self._server.shutdown()
        self._server.server_close()

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


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

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
            info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
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
