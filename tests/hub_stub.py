"""A loopback stand-in for the Hugging Face Hub: the endpoints huggingface_hub uses to create a repository, upload a
folder (every file as a regular, inline commit operation), and list and download it back. Every request is recorded
(method, path, headers, body) so tests can check what was sent.

    with HubStub() as hub:            # then HF_ENDPOINT=hub.endpoint
        ...
        hub.repos["user/name"]["main"]   # {path: bytes}
"""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class HubStub:
    def __init__(self):
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo id -> revision -> path -> content
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status: int, body=b"", headers=None):
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = unquote(urlparse(self.path).path)
                stub.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
                status, reply, headers = stub.route(self.command, path, body)
                self._reply(status, reply, headers)

            do_GET = do_POST = do_HEAD = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def sha(files: dict[str, bytes]) -> str:
        digest = hashlib.sha1()
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha1(files[path]).digest())
        return digest.hexdigest()

    def _revision(self, repo: str, revision: str) -> dict[str, bytes] | None:
        revisions = self.repos.get(repo, {})
        if revision in revisions:
            return revisions[revision]
        return next((files for files in revisions.values() if self.sha(files) == revision), None)

    def route(self, method: str, path: str, body: bytes):
        parts = path.strip("/").split("/")
        if path == "/api/agent-harnesses":
            return 200, {}, None
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}, None
        if path == "/api/repos/create":
            request = json.loads(body)
            repo = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            self.repos.setdefault(repo, {"main": {}})
            return 200, {"url": f"{self.endpoint}/{repo}", "name": repo}, None
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo, action, rest = f"{parts[2]}/{parts[3]}", parts[4] if len(parts) > 4 else "", "/".join(parts[5:])
            if repo not in self.repos:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            if action == "preupload":
                files = json.loads(body)["files"]
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}, None
            if action == "commit":
                files = dict(self.repos[repo].get(rest, self.repos[repo]["main"]))
                for line in body.decode().splitlines():
                    operation = json.loads(line)
                    if operation["key"] == "file":
                        files[operation["value"]["path"]] = base64.b64decode(operation["value"]["content"])
                self.repos[repo][rest] = files
                return 200, {"commitUrl": f"{self.endpoint}/{repo}/commit/{self.sha(files)}", "commitOid": self.sha(files)}, None
            if action == "branch":
                self.repos[repo].setdefault(rest, dict(self.repos[repo]["main"]))
                return 200, {}, None
            if action in ("revision", "tree", ""):
                revision = rest.split("/")[0] if rest else "main"
                files = self._revision(repo, revision)
                if files is None:
                    return 404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"}
                if action == "tree":
                    entries = [{"type": "file", "path": p, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
                               for p, c in sorted(files.items())]  # fmt: skip
                    return 200, entries, None
                info = {"id": repo, "sha": self.sha(files), "private": False,
                        "siblings": [{"rfilename": p} for p in sorted(files)]}  # fmt: skip
                return 200, info, None
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, revision, file_path = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
            files = self._revision(repo, revision)
            if files is None or file_path not in files:
                return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
            content = files[file_path]
            headers = {"X-Repo-Commit": self.sha(files), "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                       "Content-Type": "application/octet-stream"}  # fmt: skip
            return 200, content, headers
        return 404, {"error": f"stub Hub: no route for {method} {path}"}, None
