"""A local stand-in for the part of the Hugging Face Hub API that `create_repo` + `create_commit` call.

Endpoints (as huggingface_hub 2.4 calls them): POST /api/repos/create, POST /api/validate-yaml,
POST /api/{type}s/{ns}/{name}/preupload/{revision}, POST /api/{type}s/{ns}/{name}/commit/{revision}
(an NDJSON body: a header line, then one line per file with base64 content). Every file is answered
"regular" at preupload, so contents travel inside the commit and the stand-in sees them byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_hub_app(valid_token: str):
    app = FastAPI()
    app.state.repos = {}  # repo_id -> {"private": bool, "files": {path: bytes}, "commits": [summary]}
    app.state.requests = []  # (method, path, authorization header)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if request.url.path == "/api/agent-harnesses":  # public registry huggingface_hub reads for its user agent
            return JSONResponse({})
        app.state.requests.append((request.method, request.url.path, request.headers.get("authorization")))
        if request.headers.get("authorization") != f"Bearer {valid_token}":
            return JSONResponse({"error": "Invalid credentials in Authorization header"}, status_code=401)
        return await call_next(request)

    @app.post("/api/repos/create")
    async def create_repo(request: Request):
        body = await request.json()
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        # huggingface_hub sends `visibility` since 1.x releases after 1.6, `private` before; the Hub takes both
        private = body.get("visibility") == "private" or body.get("private") is True
        app.state.repos.setdefault(repo_id, {"private": private, "type": body.get("type"), "files": {}, "commits": []})
        return {"url": f"{request.base_url}{repo_id}", "name": repo_id}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request):
        content = (await request.json())["content"]
        try:
            _, front, _ = content.split("---", 2)
            yaml.safe_load(front)
        except (ValueError, yaml.YAMLError) as e:
            return JSONResponse({"errors": [{"message": str(e)}]}, status_code=400)
        return {"errors": [], "warnings": []}

    @app.post("/api/{repo_type}s/{namespace}/{name}/preupload/{revision}")
    async def preupload(repo_type: str, namespace: str, name: str, revision: str, request: Request):
        if f"{namespace}/{name}" not in app.state.repos:
            return JSONResponse({"error": "Repository not found"}, status_code=404)
        files = (await request.json())["files"]
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                          for f in files]}

    @app.post("/api/{repo_type}s/{namespace}/{name}/commit/{revision}")
    async def commit(repo_type: str, namespace: str, name: str, revision: str, request: Request):
        repo = app.state.repos.get(f"{namespace}/{name}")
        if repo is None:
            return JSONResponse({"error": "Repository not found"}, status_code=404)
        lines = [json.loads(line) for line in (await request.body()).decode().splitlines() if line.strip()]
        header = lines[0]
        assert header["key"] == "header"
        for line in lines[1:]:
            if line["key"] != "file" or line["value"].get("encoding") != "base64":
                return JSONResponse({"error": f"stand-in does not handle {line['key']}"}, status_code=400)
            repo["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        oid = hashlib.sha1(json.dumps(lines).encode()).hexdigest()
        repo["commits"].append(header["value"]["summary"])
        return {"commitUrl": f"{request.base_url}{namespace}/{name}/commit/{oid}", "commitOid": oid,
                "pullRequestUrl": None}

    return app
