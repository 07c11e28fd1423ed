"""The page's routes (Starlette). Every response carries a strict Content-Security-Policy (only
this server's own scripts, styles, images and media) and, but for the static files, no-store.

Reads go straight to the store; commands go through `actions.Commands` (the daemon's Controller,
or the same one here). Blocking work (the store, the hand-off, the password check) runs in
Starlette's thread pool, so one slow request never holds up another.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jinja2 import Environment, PackageLoader
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from device.control import consent, save_mode, sensitivity
from device.control.save_mode import SAVE_MODES, SaveState
from device.control.sensitivity import SensitivityState
from device.core.config import SENSITIVITY_LEVELS, Settings
from device.core.errors import ConfigError, EdgeRecorderError, StoreError
from device.storage.clips import ClipStore
from device.web import auth, pages, policy
from device.web.actions import Commands, describe

log = logging.getLogger(__name__)

COOKIE = "er_session"
MAX_FORM_BYTES = 512 * 1024
CHUNK = 64 * 1024
CLIP_ID = re.compile(r"^[0-9a-f]{32}$")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "media-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # not no-referrer: a POST then says Origin: null
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
PAGES = ("/", "/days", "/sent", "/settings")


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response, and Cache-Control: no-store to all but /static."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"cache-control"]
                headers += SECURITY_HEADERS
                headers.append((b"cache-control", b"no-cache" if static else b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass(frozen=True)
class Context:
    """What a guarded handler gets: the session, whether the browser is on this device, the form."""

    session: auth.Session
    local: bool
    form: dict[str, list[str]]

    def first(self, name: str, default: str = "") -> str:
        return (self.form.get(name) or [default])[0]


Handler = Callable[[Request, Context], Awaitable[Response]]


class WebApp:
    def __init__(self, settings: Settings, store: ClipStore, commands: Commands,
                 sensitivity: SensitivityState, save: SaveState, binding: policy.Binding) -> None:
        self.settings = settings
        self.store = store
        self.commands = commands
        self.sensitivity = sensitivity
        self.save = save
        self.binding = binding
        self.password_file = policy.password_path(store.state_dir)
        self.sessions = auth.Sessions(settings.web.session_hours * 3600)
        self.limiter = auth.LoginLimiter()
        self.templates = Environment(loader=PackageLoader("device.web", "templates"),
                                     autoescape=True, trim_blocks=True, lstrip_blocks=True)

    # -- the ASGI app -------------------------------------------------------------------------
    def asgi(self) -> ASGIApp:
        g = self.guarded
        routes = [
            Route("/", g(self.clips)), Route("/days", g(self.days)), Route("/sent", g(self.sent)),
            Route("/settings", g(self.controls)),
            Route("/clips/{clip_id}/audio", g(self.audio)),
            Route("/clips/{clip_id}/wav", g(self.wav)),
            Route("/clips/delete", g(self.delete), methods=["POST"]),
            Route("/clips/reject", g(self.reject), methods=["POST"]),
            Route("/settings/sensitivity", g(self.set_sensitivity), methods=["POST"]),
            Route("/settings/save", g(self.set_save), methods=["POST"]),
            Route("/settings/consent", g(self.set_consent), methods=["POST"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", g(self.logout), methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("device.web", "static")]), name="static"),
        ]
        return SecurityHeaders(Starlette(routes=routes))

    # -- who may do what ----------------------------------------------------------------------
    @property
    def password_set(self) -> bool:
        return self.password_file.exists()

    def _refused(self, request: Request) -> Response | None:
        """Without a password, only this device may use the page, by a loopback name (a DNS
        rebinding page, whose Host is its own name, is refused)."""
        if self.password_set:
            return None
        host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
        if not policy.is_loopback(host) or not _is_local(request):
            return HTMLResponse("Refused: without a password, only this device may open the page.",
                                status_code=403)
        return None

    def guarded(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if (refused := self._refused(request)) is not None:
                return refused
            session = self.sessions.get(request.cookies.get(COOKIE))
            fresh = None
            if self.password_set:
                if session is None or not session.signed_in:
                    return self._to_login(request)
            elif session is None:  # no password: this device only, a session for the CSRF token
                if request.method == "POST":
                    return self._to_login(request)
                session = fresh = self.sessions.new(signed_in=False)
            form: dict[str, list[str]] = {}
            if request.method == "POST":
                form = await read_form(request)
                if not auth.csrf_ok(session, (form.get("csrf") or [""])[0]) \
                        or not _same_origin(request):
                    log.warning("web: refused a %s without a valid CSRF token", request.url.path)
                    return HTMLResponse("Refused: this form is stale or did not come from this "
                                        "page. Reload the page and try again.", status_code=403)
            response = await handler(request, Context(session, _is_local(request), form))
            if fresh is not None:
                self._set_cookie(response, fresh)
            return response

        return endpoint

    def _to_login(self, request: Request) -> Response:
        if request.method == "POST":
            return HTMLResponse("Refused: sign in first.", status_code=403)
        return RedirectResponse("/login", status_code=303)

    def _set_cookie(self, response: Response, session: auth.Session) -> None:
        response.set_cookie(COOKIE, session.token, httponly=True, samesite="strict",
                            secure=self.binding.tls, path="/")

    # -- pages --------------------------------------------------------------------------------
    def render(self, name: str, ctx: Context | None, status: int = 200, **values: Any) -> HTMLResponse:
        session = ctx.session if ctx else None
        flash = list(session.flash) if session else []
        if session:
            session.flash.clear()
        html = self.templates.get_template(name).render(
            csrf=session.csrf if session else "", flash=flash, local=ctx.local if ctx else False,
            signed_in=bool(session and session.signed_in), form_id=secrets.token_hex(8), **values)
        return HTMLResponse(html, status_code=status)

    async def show(self, name: str, ctx: Context, **values: Any) -> HTMLResponse:
        """A page under the header, whose "Saving now" is read afresh from the store: this process
        does not follow it, and the CLI, a voice or the daemon may have changed it since."""
        now = await run_in_threadpool(self.save.refresh)
        return self.render(name, ctx, saving=now.mode, **values)

    async def clips(self, request: Request, ctx: Context) -> Response:
        rows = await run_in_threadpool(pages.clip_rows, self.store, self.settings.upload.hold_s)
        return await self.show("clips.html", ctx, rows=rows, page="clips",
                               uploads=self.settings.upload.url is not None)

    async def days(self, request: Request, ctx: Context) -> Response:
        rows = await run_in_threadpool(pages.days, self.commands.controller.stats)
        return await self.show("days.html", ctx, rows=rows, chart=pages.chart(rows), page="days")

    async def sent(self, request: Request, ctx: Context) -> Response:
        rows = await run_in_threadpool(pages.sent, self.store)
        pending = await run_in_threadpool(self.store.uploads.pending_remote)
        return await self.show("sent.html", ctx, rows=rows, pending=pending, page="sent",
                               upload_host=self.settings.upload.host)

    async def controls(self, request: Request, ctx: Context) -> Response:
        now = await run_in_threadpool(pages.controls, self.sensitivity, self.save, self.store)
        levels = [lv for lv in SENSITIVITY_LEVELS
                  if sensitivity.rank(lv) >= sensitivity.rank(self.sensitivity.configured)]
        floor = max(save_mode.rank(self.save.configured), 0 if ctx.local else save_mode.rank(now["save"]))
        modes = [m for m in SAVE_MODES if save_mode.rank(m) >= floor]  # from the network: less only
        return await self.show("settings.html", ctx, now=now, levels=levels, modes=modes,
                               page="settings", uploads=self.settings.upload.url is not None)

    # -- audio --------------------------------------------------------------------------------
    async def audio(self, request: Request, ctx: Context) -> Response:
        return await self._wav(request, attachment=False)

    async def wav(self, request: Request, ctx: Context) -> Response:
        return await self._wav(request, attachment=True)

    async def _wav(self, request: Request, attachment: bool) -> Response:
        """The clip decrypted in memory and streamed; never written to disk, never cached."""
        clip_id = request.path_params["clip_id"]
        if not CLIP_ID.match(clip_id):
            return Response("no such clip", status_code=404)
        try:
            audio = await run_in_threadpool(lambda: self.store.read_audio(self.store.get(clip_id)))
        except StoreError as exc:
            return Response(str(exc), status_code=404, media_type="text/plain")
        span = _byte_range(request.headers.get("range"), len(audio))
        if span is None:
            return Response(status_code=416, headers={"content-range": f"bytes */{len(audio)}"})
        start, end = span
        headers = {"accept-ranges": "bytes", "content-length": str(end - start)}
        if attachment:
            headers["content-disposition"] = f'attachment; filename="{clip_id}.wav"'
        status = 200
        if request.headers.get("range") and (start, end) != (0, len(audio)):
            status = 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{len(audio)}"
        return StreamingResponse(_chunks(audio, start, end), status_code=status,
                                 media_type="audio/wav", headers=headers)

    # -- commands -----------------------------------------------------------------------------
    async def command(self, ctx: Context, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run one command; its request id comes from the form that was drawn and the command
        itself, so the same form sent twice is the same request (replayed, not done twice)."""
        digest = hashlib.sha256(repr(sorted(body.items())).encode()).hexdigest()[:12]
        form_id = re.sub(r"[^0-9a-f]", "", ctx.first("form_id"))[:16] or secrets.token_hex(8)
        payload = {"request_id": f"web-{form_id}-{kind}-{digest}", **body}
        try:
            reply = await run_in_threadpool(self.commands.run, kind, payload, ctx.local)
        except EdgeRecorderError as exc:  # the store is busy too long, the daemon hangs
            log.error("web: %s %s failed: %s", kind, payload["request_id"], exc)
            reply = {"type": "error", "message": f"{exc}; reload the page to see what is kept now"}
        ctx.session.flash.append(describe(reply))
        return reply

    def back(self, ctx: Context, default: str = "/") -> Response:
        target = ctx.first("next", default)
        return RedirectResponse(target if target in PAGES else default, status_code=303)

    async def delete(self, request: Request, ctx: Context) -> Response:
        scope = ctx.first("scope", "ids")
        if scope in ("today", "all"):
            if ctx.first("confirm") != "yes":
                ctx.session.flash.append("Not done: tick the box to confirm.")
                return self.back(ctx)
            await self.command(ctx, "delete", {scope: True})
        else:
            ids = [i for i in ctx.form.get("ids") or ctx.form.get("selected", []) if CLIP_ID.match(i)]
            if not ids:
                ctx.session.flash.append("Not done: no clip was selected.")
                return self.back(ctx)
            await self.command(ctx, "delete", {"ids": ids})
        return self.back(ctx)

    async def reject(self, request: Request, ctx: Context) -> Response:
        ids = [i for i in ctx.form.get("ids", []) if CLIP_ID.match(i)]
        if ids:
            await self.command(ctx, "reject", {"ids": ids})
        return self.back(ctx)

    async def set_sensitivity(self, request: Request, ctx: Context) -> Response:
        await self.command(ctx, "sensitivity", {"level": ctx.first("level")})
        return self.back(ctx, "/settings")

    async def set_save(self, request: Request, ctx: Context) -> Response:
        body: dict[str, Any] = {"mode": ctx.first("mode")}
        if ctx.first("for"):
            body["for"] = ctx.first("for")
        await self.command(ctx, "save", body)
        return self.back(ctx, "/settings")

    async def set_consent(self, request: Request, ctx: Context) -> Response:
        if ctx.first("action") == "revoke":
            await self.command(ctx, "consent", {"action": "revoke"})
        elif ctx.first("action") == "grant" and ctx.local:
            try:
                scope = consent.parse_scope(ctx.first("scope", "audio"))
                await run_in_threadpool(consent.grant, self.store, scope)
                ctx.session.flash.append(f"Uploads allowed ({', '.join(scope)}) for clips recorded "
                                         "from now on; earlier clips stay here.")
            except ConfigError as exc:
                ctx.session.flash.append(f"Not done: {exc}")
        else:
            ctx.session.flash.append("Not done: consent can only be granted on the device itself "
                                     "(open the page on the speaker, or use the CLI).")
        return self.back(ctx, "/settings")

    # -- signing in ---------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        if not self.password_set:
            return RedirectResponse("/", status_code=303)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if request.method == "GET" or session is None:
            session = session or self.sessions.new(signed_in=False)
            response = self.render("login.html", Context(session, _is_local(request), {}),
                                   page="login")
            self._set_cookie(response, session)
            return response
        return await self._try_password(request, session)

    async def _try_password(self, request: Request, session: auth.Session) -> Response:
        form = await read_form(request)
        ctx = Context(session, _is_local(request), form)
        if not auth.csrf_ok(session, ctx.first("csrf") or None) or not _same_origin(request):
            return HTMLResponse("Refused: reload the sign-in page and try again.", status_code=403)
        client = request.client.host if request.client else "?"
        if wait := self.limiter.wait_s(client):
            return self._held_back(ctx, client, wait)

        def check() -> tuple[bool, float]:
            """(right, seconds to wait): one check at a time, and the limit asked again once this
            one's turn comes (guesses sent at once all passed the first look) and a failure counted
            before the next check starts."""
            with self.limiter.checking:
                if wait := self.limiter.wait_s(client):
                    return False, wait
                if auth.check_password(self.password_file, ctx.first("password")):
                    return True, 0.0
                self.limiter.failed(client)
                return False, 0.0

        right, wait = await run_in_threadpool(check)
        if wait:
            return self._held_back(ctx, client, wait)
        if not right:
            log.warning("web: a wrong password from %s", client)
            return self.render("login.html", ctx, status=401, page="login",
                               error="Wrong password.")
        self.sessions.end(session)  # a new token on sign-in: one seen before is worth nothing
        signed_in = self.sessions.new(signed_in=True)
        log.info("web: signed in from %s", client)
        home = RedirectResponse("/", status_code=303)
        self._set_cookie(home, signed_in)
        return home

    def _held_back(self, ctx: Context, client: str, wait: float) -> Response:
        log.warning("web: sign-in from %s refused for %.0f s (too many failures)", client, wait)
        response = self.render("login.html", ctx, status=429, page="login",
                               error=f"Too many wrong passwords. Try again in {wait / 60:.0f} "
                                     "minute(s).")
        response.headers["retry-after"] = str(int(wait) + 1)
        return response

    async def logout(self, request: Request, ctx: Context) -> Response:
        self.sessions.end(ctx.session)
        response: Response = RedirectResponse("/login" if self.password_set else "/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response


def _is_local(request: Request) -> bool:
    return request.client is not None and policy.is_loopback(request.client.host)


def _same_origin(request: Request) -> bool:
    """A browser names the page a POST came from (Origin); it must be this very server."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host")


async def read_form(request: Request) -> dict[str, list[str]]:
    """An urlencoded form, bounded in size (the page sends nothing else)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20_000)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=a-b` range, clamped; the whole body without a range or with
    one this page does not take (several ranges, b before a: RFC 9110 lets a server ignore those);
    None for a range that selects nothing (`bytes=-0`, a start at or past the end): a 416."""
    m = re.fullmatch(r"bytes=(\d{0,18})-(\d{0,18})", (header or "").strip())
    if not m or not (m.group(1) or m.group(2)):
        return 0, size
    if not m.group(1):
        suffix = int(m.group(2))
        return (max(0, size - suffix), size) if suffix and size else None
    start = int(m.group(1))
    if m.group(2) and int(m.group(2)) < start:
        return 0, size
    end = min(int(m.group(2)) + 1, size) if m.group(2) else size
    return (start, end) if start < size else None


async def _chunks(data: bytes, start: int, end: int) -> AsyncIterator[bytes]:
    for at in range(start, end, CHUNK):
        yield data[at:min(at + CHUNK, end)]
