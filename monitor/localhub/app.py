"""The Hub's HTTP surface as plain functions: `Request` in, `Response` out (hub-api.md §12).

=====  ====================================================================  ==========================
verb   path                                                                  answer
=====  ====================================================================  ==========================
GET    ``/api/agent-harnesses``                                              empty harness list
GET    ``/api/models``                                                       listing, Link-paged
GET    ``/api/models/{org}/{name}[/revision/{rev}]``                         model info
GET    ``/api/models/{org}/{name}/tree/{rev}[/{path}]``                      tree, Link-paged
POST   ``/api/models/{org}/{name}/paths-info/{rev}``                         entries of given paths
GET    ``/api/models/{org}/{name}/safetensors-metadata/{index}``             index + shard headers
HEAD   ``/{org}/{name}/resolve/{rev}/{path}`` (and GET)                      file, or 302 to the CDN
HEAD   ``/cdn/{sha256}?exp=&sig=`` (and GET)                                 file by content id
=====  ====================================================================  ==========================

Every GET route also answers HEAD (same headers, no body). Access rules: a private repo is invisible
(401 ``RepoNotFound``) without the hub's token; a gated repo shows its metadata to anyone but its files
(and their headers) only with the token; a request carrying a *wrong* token is refused everywhere but
on the CDN (401, "Invalid credentials in Authorization header"), as on the Hub. Without a configured
token the hub ignores whatever token a client sends.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from monitor.errors import FormatError
from monitor.localhub.cdn import UrlSigner
from monitor.localhub.files import cdn_error, file_response, redirect_response
from monitor.localhub.listing import MAX_PAGE, SORT_KEYS, CursorError, ListQuery, list_page
from monitor.localhub.modelinfo import (
    EXPAND_KEYS,
    INFO_FIELDS,
    LIST_DEFAULT_FIELDS,
    LIST_FULL_FIELDS,
    ModelCatalog,
)
from monitor.localhub.repos import BrokenRepoError, Repo, RepoIndex, StaleFileError, valid_repo_path
from monitor.localhub.summaries import read_safetensors_header
from monitor.localhub.trees import (
    RepoTree,
    TreeCursorError,
    decode_tree_cursor,
    encode_tree_cursor,
    tree_order_key,
)
from monitor.localhub.wire import Request, Response, error_response, json_response

__all__ = ["HubApp", "HubSettings"]

log = logging.getLogger(__name__)

MAX_PATHS_INFO = 1000
_INDEX_LIMIT = 25_000_000
_TREE_EXPAND_PAGE = 50
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class HubSettings:
    """Everything the endpoints need to know about the server they run in.

    Attributes:
        endpoint (`str`): ``http://127.0.0.1:PORT`` (used in ``Link`` URLs).
        cdn_origin (`str`): ``http://localhost:PORT`` (used in redirect ``Location`` URLs).
        cdn_redirect (`bool`): redirect LFS files to the CDN (else serve them directly).
        token (`str | None`): the token that grants private/gated access.
        page_size (`int`): ``/api/models`` page size (``limit`` lowers it; at most 1000).
        tree_page_size (`int`): ``/tree`` page size (50 with ``expand``, as on the Hub).
    """

    endpoint: str
    cdn_origin: str
    cdn_redirect: bool = True
    token: str | None = None
    page_size: int = 100
    tree_page_size: int = 1000


class _RejectError(Exception):
    """Carries an error response out of a helper."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class HubApp:
    """Routes requests to endpoint functions over a `RepoIndex`.

    Args:
        index (`RepoIndex`): the served repos.
        settings (`HubSettings`): server identity and options.
        signer (`UrlSigner`): signs and checks CDN URLs.
    """

    def __init__(self, index: RepoIndex, settings: HubSettings, signer: UrlSigner) -> None:
        self.index = index
        self.settings = settings
        self.signer = signer
        self.catalog = ModelCatalog()
        self._trees: dict[tuple[str, str], RepoTree] = {}
        self._trees_lock = threading.Lock()

    # -- entry point -------------------------------------------------------------------------------

    def handle(self, req: Request, *, ignore_range: bool = False) -> Response:
        """Answer one request (never raises for bad input; unexpected errors become 500)."""
        method = "GET" if req.method == "HEAD" else req.method
        head = req.method == "HEAD"
        parts = req.raw_path.split("/")[1:]
        try:
            if parts[:1] == ["cdn"] and len(parts) == 2:
                return self._only(method, "GET") or self._cdn(
                    req, unquote(parts[1]), head=head, ignore_range=ignore_range
                )
            self._check_credentials(req)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._only(method, "GET") or self._resolve(
                    req, parts, head=head, ignore_range=ignore_range
                )
            if parts[:1] == ["api"]:
                return self._api(req, method, parts[1:])
            return error_response(404, "Sorry, we can't find the page you are looking for.")
        except _RejectError as rej:
            return rej.response
        except Exception as exc:
            log.exception("localhub: error answering %s %s", req.method, req.raw_path)
            return error_response(500, f"Internal error: {type(exc).__name__}: {exc}")

    @staticmethod
    def _only(method: str, allowed: str) -> Response | None:
        if method == allowed:
            return None
        return error_response(405, f"Method {method} not allowed", headers=[("Allow", f"{allowed}, HEAD")])

    def _check_credentials(self, req: Request) -> None:
        if self.settings.token is not None and req.token is not None and req.token != self.settings.token:
            raise _RejectError(error_response(401, _INVALID_CREDENTIALS))

    def _authorized(self, req: Request) -> bool:
        return self.settings.token is not None and req.token == self.settings.token

    def _api(self, req: Request, method: str, parts: list[str]) -> Response:
        if parts == ["agent-harnesses"]:
            return self._only(method, "GET") or json_response({"standardEnvVars": [], "harnesses": {}})
        if parts[:1] != ["models"]:
            return error_response(404, "Sorry, we can't find the page you are looking for.")
        if len(parts) == 1:
            return self._only(method, "GET") or self._list_models(req)
        if len(parts) < 3:
            raise _RejectError(self._repo_missing(req))
        org, name, rest = unquote(parts[1]), unquote(parts[2]), parts[3:]
        if not rest:
            return self._only(method, "GET") or self._model_info(req, org, name, "main")
        if rest[0] == "revision" and len(rest) == 2:
            return self._only(method, "GET") or self._model_info(req, org, name, unquote(rest[1]))
        if rest[0] == "tree" and len(rest) >= 2:
            path = "/".join(unquote(p) for p in rest[2:])
            return self._only(method, "GET") or self._tree(req, org, name, unquote(rest[1]), path)
        if rest[0] == "paths-info" and len(rest) == 2:
            return self._only(method, "POST") or self._paths_info(req, org, name, unquote(rest[1]))
        if rest[0] == "safetensors-metadata" and len(rest) >= 2:
            path = "/".join(unquote(p) for p in rest[1:])
            return self._only(method, "GET") or self._safetensors_metadata(req, org, name, path)
        return error_response(404, "Sorry, we can't find the page you are looking for.")

    # -- repo access -------------------------------------------------------------------------------

    def _repo_missing(self, req: Request) -> Response:
        # Anonymous callers cannot tell a missing repo from a private one (401), as on the Hub.
        status = 404 if self._authorized(req) else 401
        return error_response(status, "Repository not found", code="RepoNotFound")

    def _visible_repo(self, req: Request, org: str, name: str) -> Repo:
        repo_id = f"{org}/{name}"
        try:
            repo = self.index.repo(repo_id)
        except BrokenRepoError as exc:
            raise _RejectError(error_response(500, f"localhub cannot serve {repo_id}: {exc}")) from exc
        if repo is None or (repo.sidecar.private and not self._authorized(req)):
            raise _RejectError(self._repo_missing(req))
        if repo.sidecar.disabled:
            raise _RejectError(error_response(403, "Access to this resource is disabled."))
        return repo

    def _check_revision(self, repo: Repo, rev: str) -> None:
        if rev not in ("main", "refs/heads/main", repo.commit):
            raise _RejectError(error_response(404, f"Invalid rev id: {rev}", code="RevisionNotFound"))

    def _check_download(self, req: Request, repo: Repo) -> None:
        if repo.sidecar.gated and not self._authorized(req):
            message = (
                f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            raise _RejectError(error_response(401, message, code="GatedRepo"))

    def _tree_of(self, repo: Repo) -> RepoTree:
        key = (repo.repo_id, repo.commit)
        with self._trees_lock:
            tree = self._trees.get(key)
            if tree is None:
                for stale in [k for k in self._trees if k[0] == repo.repo_id]:
                    del self._trees[stale]
                tree = self._trees[key] = RepoTree(repo)
            return tree

    # -- /api/models -------------------------------------------------------------------------------

    def _expand(self, req: Request) -> list[str] | None:
        keys = req.query.get("expand")
        if not keys:
            return None
        bad = [k for k in keys if k not in EXPAND_KEYS]
        if bad:
            raise _RejectError(error_response(400, f'"expand" must be one of {list(EXPAND_KEYS)}; got {bad}'))
        return ["_id", "id", *dict.fromkeys(k for k in keys if k not in ("_id", "id"))]

    def _list_models(self, req: Request) -> Response:
        sort = req.param("sort") or "createdAt"
        if sort not in SORT_KEYS:
            return error_response(400, f'"sort" must be one of {sorted(SORT_KEYS)}')
        limit_raw = req.param("limit")
        size = self.settings.page_size
        if limit_raw is not None:
            if not limit_raw.isdigit() or int(limit_raw) < 1:
                return error_response(400, '"limit" must be a positive integer')
            size = min(size, int(limit_raw))
        size = max(1, min(size, MAX_PAGE))
        gated_raw = req.param("gated")
        query = ListQuery(
            search=req.param("search"),
            author=req.param("author"),
            filters=tuple(req.query.get("filter", [])),
            gated=None if gated_raw is None else gated_raw.lower() in {"1", "true"},
            pipeline_tag=req.param("pipeline_tag"),
        )
        expand = self._expand(req)
        authorized = self._authorized(req)
        repos = [r for r in self.index.scan() if authorized or not r.sidecar.private]
        catalog = self.catalog
        try:
            page, next_cursor = list_page(
                repos,
                query=query,
                labels=lambda r: {*catalog.tags(r), *filter(None, [catalog.library_name(r)])},
                pipeline_tag=catalog.pipeline_tag,
                sort=sort,
                cursor=req.param("cursor"),
                size=size,
            )
        except CursorError as exc:
            return error_response(400, str(exc))
        if expand is not None:
            fields: list[str] = expand
        else:
            fields = list(LIST_FULL_FIELDS if req.flag("full") else LIST_DEFAULT_FIELDS)
            if req.flag("cardData") or req.flag("full"):
                fields.append("cardData")
            if req.flag("config"):
                fields.append("config")
        items = [catalog.render(r, fields) for r in page]
        headers = [("Link", self._next_link(req, next_cursor))] if next_cursor else []
        return json_response(items, headers=headers)

    def _next_link(self, req: Request, cursor: str) -> str:
        params = [(k, v) for k, values in req.query.items() if k != "cursor" for v in values]
        params.append(("cursor", cursor))
        path = quote(req.raw_path, safe="/%")  # keep the client's encoding; never let "<>;," through
        return f'<{self.settings.endpoint}{path}?{urlencode(params)}>; rel="next"'

    def _model_info(self, req: Request, org: str, name: str, rev: str) -> Response:
        repo = self._visible_repo(req, org, name)
        self._check_revision(repo, rev)
        expand = self._expand(req)
        blobs = req.flag("blobs")
        fields = expand if expand is not None else list(INFO_FIELDS)
        body = self.catalog.render(repo, fields, blobs=blobs)
        if req.flag("securityStatus") and expand is None:
            body["securityRepoStatus"] = {"scansDone": True, "filesWithIssues": []}
        return json_response(body)

    # -- tree, paths-info, safetensors-metadata ----------------------------------------------------

    def _tree(self, req: Request, org: str, name: str, rev: str, path: str) -> Response:
        repo = self._visible_repo(req, org, name)
        self._check_revision(repo, rev)
        tree = self._tree_of(repo)
        path = path.strip("/")
        if path and not valid_repo_path(path):
            return error_response(400, f"Invalid path: {path!r}")
        if not tree.is_dir(path):
            return error_response(
                404,
                f"Entry not found: {path}",
                code="EntryNotFound",
                headers=[("X-Repo-Commit", repo.commit)],
            )
        expand = req.flag("expand")
        entries = tree.entries(path, recursive=req.flag("recursive"), expand=expand)
        cursor = req.param("cursor")
        if cursor:
            try:
                after = decode_tree_cursor(cursor)
            except TreeCursorError as exc:
                return error_response(400, str(exc))
            entries = [
                e for e in entries if tree_order_key(e["path"], is_dir=e["type"] == "directory") > after
            ]
        size = (
            min(_TREE_EXPAND_PAGE, self.settings.tree_page_size) if expand else self.settings.tree_page_size
        )
        page = entries[:size]
        headers = [("X-Repo-Commit", repo.commit)]
        if len(entries) > size:
            headers.append(("Link", self._next_link(req, encode_tree_cursor(page[-1]))))
        return json_response(page, headers=headers)

    def _paths_info(self, req: Request, org: str, name: str, rev: str) -> Response:
        repo = self._visible_repo(req, org, name)
        self._check_revision(repo, rev)
        paths, expand = self._paths_request(req)
        tree = self._tree_of(repo)
        out = []
        for path in dict.fromkeys(p.strip("/") for p in paths):
            entry = tree.entry(path, expand=expand) if valid_repo_path(path) else None
            if entry is not None:
                out.append(entry)
        return json_response(out, headers=[("X-Repo-Commit", repo.commit)])

    @staticmethod
    def _paths_request(req: Request) -> tuple[list[str], bool]:
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if ctype == "application/json":
                data = json.loads(req.body or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("body must be a JSON object")
                paths, expand = data.get("paths", []), bool(data.get("expand", False))
                if isinstance(paths, str):
                    paths = [paths]
            else:
                form = parse_qs(req.body.decode("utf-8"), keep_blank_values=True)
                paths = form.get("paths", [])
                expand = form.get("expand", ["false"])[-1].lower() in {"1", "true"}
        except (ValueError, UnicodeDecodeError) as exc:
            raise _RejectError(error_response(400, f"Invalid paths-info body: {exc}")) from exc
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise _RejectError(error_response(400, '"paths" must be a list of strings'))
        if len(paths) > MAX_PATHS_INFO:
            raise _RejectError(error_response(400, f"at most {MAX_PATHS_INFO} paths per request"))
        return paths, expand

    def _safetensors_metadata(self, req: Request, org: str, name: str, index_path: str) -> Response:
        repo = self._visible_repo(req, org, name)
        self._check_download(req, repo)
        commit_hdr = [("X-Repo-Commit", repo.commit)]
        index_file = repo.files.get(index_path)
        if index_file is None:
            return error_response(
                404, f"Entry not found: {index_path}", code="EntryNotFound", headers=commit_hdr
            )
        try:
            if index_file.size > _INDEX_LIMIT:
                raise FormatError(f"index larger than {_INDEX_LIMIT} bytes")
            with index_file.opened() as read:
                index = json.loads(read(0, index_file.size))
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise FormatError("index has no weight_map of tensor -> shard")
            base = index_path.rsplit("/", 1)[0] + "/" if "/" in index_path else ""
            headers: dict[str, Any] = {}
            for shard in dict.fromkeys(weight_map.values()):
                f = repo.files.get(base + shard)
                if f is None:
                    return error_response(
                        404,
                        f"Shard {shard} listed in {index_path} not found",
                        code="EntryNotFound",
                        headers=commit_hdr,
                    )
                with f.opened() as read:
                    headers[shard] = read_safetensors_header(read, f.size)
        except (FormatError, ValueError) as exc:
            return error_response(400, f"Cannot parse safetensors metadata: {exc}", headers=commit_hdr)
        except StaleFileError as exc:
            return error_response(503, f"{exc}; retry", headers=[("Retry-After", "1")])
        summary = {k: v for k, v in index.items() if k != "weight_map"}
        return json_response({"index": summary, "headers": headers}, headers=commit_hdr)

    # -- files -------------------------------------------------------------------------------------

    def _resolve(self, req: Request, parts: list[str], *, head: bool, ignore_range: bool) -> Response:
        org, name, rev = unquote(parts[0]), unquote(parts[1]), unquote(parts[3])
        path = "/".join(unquote(p) for p in parts[4:])
        if not valid_repo_path(path):
            return error_response(400, f"Invalid path: {path!r}")
        for attempt in range(2):
            repo = self._visible_repo(req, org, name)
            commit_hdr = [("X-Repo-Commit", repo.commit)]
            self._check_revision(repo, rev)
            rf = repo.files.get(path)
            if rf is None:
                return error_response(
                    404, f"Entry not found: {path}", code="EntryNotFound", headers=commit_hdr
                )
            self._check_download(req, repo)
            if rf.sha256 is not None and self.settings.cdn_redirect:
                location = f"{self.settings.cdn_origin}/cdn/{rf.sha256}?{self.signer.sign(rf.sha256)}"
                return redirect_response(rf, location, headers=commit_hdr)
            extra = commit_hdr + (
                [("X-Linked-Size", str(rf.size)), ("X-Linked-Etag", f'"{rf.sha256}"')] if rf.sha256 else []
            )
            try:
                return file_response(rf, req, head=head, ignore_range=ignore_range, headers=extra)
            except StaleFileError:
                if attempt:
                    break
        return error_response(503, "File is changing on disk; retry", headers=[("Retry-After", "1")])

    def _cdn(self, req: Request, sha256: str, *, head: bool, ignore_range: bool) -> Response:
        reason = self.signer.check(sha256, req.param("exp"), req.param("sig"))
        if reason is not None:
            return cdn_error(403, "AccessDenied", reason)
        for _ in range(2):
            rf = self.index.blob(sha256)
            if rf is None:
                return cdn_error(404, "NoSuchKey", "The specified key does not exist.")
            try:
                return file_response(rf, req, head=head, ignore_range=ignore_range)
            except StaleFileError:
                continue
        return cdn_error(503, "SlowDown", "Object is changing; retry")
