"""The console's pages under /console/: log-in, overview, accounts, campaigns, forensics,
audit. Each page reads ``gateway/queries.py``, the functions behind the admin API.

Every page needs a session; every POST needs the session's CSRF token as the ``csrf``
field (the log-in form carries a token of its own, from a cookie set with the form).
Responses carry a strict Content-Security-Policy: the console runs no script at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from distillguard.console import graph, svg
from distillguard.console.auth import (
    ADMIN_ANALYST,
    NAME,
    AnalystStore,
    DeviceCookies,
    LoginThrottle,
    Session,
    client_key,
    same,
)
from distillguard.gateway import queries
from distillguard.policy.actions import KINDS

log = logging.getLogger("distillguard.console")

SESSION_COOKIE = "dg_console"
LOGIN_COOKIE = "dg_console_login"
DEVICE_COOKIE = "dg_console_device"
DEVICE_TTL = 30 * 86400.0
PAGE_SIZE = 50
# The overview chart's windows: the day, zoomed in while all traffic fits a shorter one.
ZOOMS = (86400.0, 14400.0, 3600.0, 600.0, 120.0)
STATIC = Path(__file__).parent / "static"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# The buttons on an account or campaign; "lift" removes whatever action is in force.
BUTTONS = ("throttle", "challenge", "degrade", "block", "allow", "lift")
TTLS = {"": None, "1h": 3600.0, "1d": 86400.0, "7d": 7 * 86400.0}


class Console:
    """What the console keeps on the app: templates, analysts, where reports are."""

    def __init__(self, settings: Any, clock: Callable[[], float] = time.time) -> None:
        import jinja2

        self.settings = settings
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("distillguard.console", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined)
        self.env.filters.update(when=_when, ago=_ago, pct=_pct, span=_span,
                                q=lambda s: quote(str(s), safe=""))
        self.analysts = AnalystStore(settings.data_path)
        self.throttle = LoginThrottle(settings.console_login_failures,
                                      settings.console_login_window, clock=clock)
        self.devices = DeviceCookies(DEVICE_TTL, clock=clock)
        self.forensics_dir = Path(settings.console_forensics_dir
                                  or settings.data_path / "forensics")

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)


def console_of(request: Request) -> Console:
    """The app's console (built on first use: the gateway may start without it)."""
    console = getattr(request.app.state, "console", None)
    if console is None:
        runtime = request.app.state.runtime
        console = request.app.state.console = Console(runtime.settings, runtime.clock)
    return console


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    s = time.time() - ts
    if s < 0:
        return "in " + _span(-s)
    return _span(s) + " ago"


def _span(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit}"
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


async def _form(request: Request) -> dict[str, str]:
    body = b""
    limit = request.app.state.runtime.settings.max_body_bytes
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


Handler = Callable[[Request, Console, Session], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Require a live session (GET: else off to the log-in page; POST: else 403) and,
    for POST, the session's CSRF token in the form."""

    async def endpoint(request: Request) -> Response:
        console = console_of(request)
        session = await asyncio.to_thread(console.analysts.session,
                                          request.cookies.get(SESSION_COOKIE))
        if request.method == "POST":
            if session is None:
                return _refuse(console, "Your session has expired or you are not logged "
                               "in. Log in again; nothing was changed.")
            form = await _form(request)
            if not same(form.get("csrf"), session.csrf):
                return _refuse(console, "This form is missing its security token (or it "
                               "is stale). Reload the page and try again; nothing was "
                               "changed.")
            request.state.form = form
        elif session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/console/login?" + urlencode({"next": target}), 303)
        try:
            return await handler(request, console, session)
        except RuntimeError as exc:
            return console.render("error.html", 503, session=session, nav="",
                                  title="Unavailable", message=str(exc))

    return endpoint


def _refuse(console: Console, message: str) -> HTMLResponse:
    return console.render("error.html", 403, session=None, nav="", title="Refused",
                          message=message)


def _not_found(console: Console, session: Session, message: str) -> HTMLResponse:
    return console.render("error.html", 404, session=session, nav="", title="Not found",
                          message=message)


# --- log-in ------------------------------------------------------------------------------
async def login_form(request: Request) -> Response:
    console = console_of(request)
    return _login_page(console, request.query_params.get("next", ""), "")


def _login_page(console: Console, target: str, error: str, status: int = 200,
                retry_after: int | None = None) -> Response:
    import secrets

    token = secrets.token_urlsafe(24)
    resp = console.render("login.html", status, session=None, nav="", token=token,
                          target=target, error=error,
                          admin=bool(console.settings.admin_token))
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    resp.set_cookie(LOGIN_COOKIE, token, max_age=900, httponly=True, samesite="strict",
                    path="/console/")
    return resp


def _safe_target(target: str) -> str:
    # Only our own pages: an open redirect would let a link send analysts anywhere.
    return target if target.startswith("/console/") and "//" not in target else "/console/"


async def login(request: Request) -> Response:
    import hmac

    console = console_of(request)
    form = await _form(request)
    target = form.get("next", "")
    if not same(form.get("login_token"), request.cookies.get(LOGIN_COOKIE)):
        return _login_page(console, target, "The log-in form expired. Try again.", 403)
    name, secret = form.get("name", "").strip(), form.get("secret", "")
    runtime = request.app.state.runtime
    addr = client_key(runtime.client_address.of_scope(request.scope))
    # The admin token is one name; a name that cannot exist is counted as one, so that
    # made-up names cannot spread guesses over many keys (or fill the table's memory).
    who = ADMIN_ANALYST if not name else name if NAME.match(name) else "(invalid name)"
    known = console.devices.known(request.cookies.get(DEVICE_COOKIE), who)
    wait = console.throttle.begin(addr, who, known_device=known)
    if wait is not None:
        seconds = int(wait + 0.999)
        return _login_page(console, target, "Too many failed log-ins from this address or "
                           f"for this name. Try again in {_span(seconds)}.", 429,
                           retry_after=seconds)
    analyst = None
    if not name:
        token = console.settings.admin_token.reveal()
        if token and secret and hmac.compare_digest(secret.encode(), token.encode()):
            analyst = ADMIN_ANALYST
    elif await asyncio.to_thread(console.analysts.check_password, name, secret):
        analyst = name
    if analyst is None:
        await asyncio.to_thread(_audit_failure, runtime, console, addr, who)
        return _login_page(console, target, "Wrong name, password or admin token.", 403)
    console.throttle.succeeded(addr, who)
    # The overview comes next: start counting its chart while the browser follows.
    queries.traffic_index(request.app).warm(runtime, window=ZOOMS[0], buckets=60)
    cookie, _ = await asyncio.to_thread(console.analysts.open_session, analyst,
                                        console.settings.console_session_ttl)
    resp = RedirectResponse(_safe_target(target), 303, headers=HEADERS)
    resp.set_cookie(SESSION_COOKIE, cookie, max_age=int(console.settings.console_session_ttl),
                    httponly=True, samesite="strict", path="/console/",
                    secure=request.url.scheme == "https")
    resp.delete_cookie(LOGIN_COOKIE, path="/console/")
    # This browser may log in under this name while the name is locked by others' guesses.
    resp.set_cookie(DEVICE_COOKIE, console.devices.issue(who), max_age=int(DEVICE_TTL),
                    httponly=True, samesite="strict", path="/console/",
                    secure=request.url.scheme == "https")
    return resp


def _audit_failure(runtime: Any, console: Console, addr: str, who: str) -> None:
    # Who tried and from where, never what they typed as the secret.
    n = console.throttle.failures(addr, who)
    limit = console.throttle.limit
    log.warning("console log-in failed for %s from %s (%d of %d allowed)", who, addr, n,
                limit)
    policy = getattr(runtime, "policy", None)
    if policy is not None and console.throttle.may_audit():
        locked = "; further log-ins are refused for now" if n >= limit else ""
        policy.note("console:login", "console_login_failed", author="console",
                    reason=f"failed log-in as {who} from {addr} ({n} of {limit} failures "
                           f"allowed in {_span(console.throttle.window)}){locked}")


@page
async def logout(request: Request, console: Console, session: Session) -> Response:
    await asyncio.to_thread(console.analysts.close_session, request.cookies.get(SESSION_COOKIE))
    resp = RedirectResponse("/console/login", 303, headers=HEADERS)
    resp.delete_cookie(SESSION_COOKIE, path="/console/")
    return resp


# --- pages -------------------------------------------------------------------------------
def _overview_traffic(app: Any) -> dict[str, Any]:
    """The whole gateway's requests and active accounts over the last day, or over the
    shortest of ``ZOOMS`` that holds all of it (a fresh gateway, a simulation in fast
    time), from the app's ``TrafficIndex``: a render counts only the last minutes."""
    gateway = app.state.runtime
    index = queries.traffic_index(app)
    now = gateway.clock()
    h = index.histogram(gateway, window=ZOOMS[0], buckets=60, until=now)
    for window in ZOOMS[1:]:
        first = next((i for i, n in enumerate(h["requests"]) if n), None)
        # The shorter chart's buckets end with the one holding now.
        if not h["complete"] or first is None or \
                h["start"] + first * h["bucket_s"] < now - window + window / 60:
            break
        h = index.histogram(gateway, window=window, buckets=60, until=now)
    return h


def _traffic(gateway: Any, account: str, window: float) -> dict[str, Any]:
    """One account's histogram over the last ``window``, zoomed in to where the traffic
    is while it all falls in the window's last sixth, down to a two-minute window."""
    now = time.time()
    since = now - window
    for _ in range(5):
        h = queries.histogram(gateway, since=since, until=now, buckets=60, account=account)
        first = next((i for i, n in enumerate(h["requests"]) if n), None)
        if first is None or first < 50 or now - since <= 120.0:
            break
        since = min(h["start"] + (first - 1) * h["bucket_s"], now - 120.0)
    return h


def _detection_status(gateway: Any) -> dict[str, Any]:
    detection = getattr(gateway, "detection", None)
    runner = getattr(gateway, "runner", None)
    return {
        "interval": gateway.settings.detection_interval,
        "refreshed_at": getattr(detection, "refreshed_at", None),
        "newest_event": getattr(detection, "newest_event_ts", None),
        # The runner reads the durable log; its backlog and lag are also on /metrics.
        "backlog": runner.backlog() if runner is not None else None,
        "lag_s": runner.lag_seconds() if runner is not None else None,
        # A count, not a list: listing 100,000 tracked accounts takes 0.1-0.3 s.
        "tracked": detection.account_count() if detection is not None else 0,
    }


def _signup_funnel(gateway: Any, since: float) -> dict[str, Any] | None:
    """The funnel's stages as rows (label, count, a sub-stage?), for gateways that take
    sign-ups or took some; else None."""
    f = queries.signup_funnel(gateway, since)
    if f is None or (f["configured_mode"] == "closed" and not f["requests"]):
        return None
    rows = [("sign-up requests (puzzle solved)", f["requests"], False),
            ("screened out", f["screened_out"], False),
            *((kind, n, True) for kind, n in f["screened_out_by_reason"].items()),
            ("address had an account", f["existing"], False),
            ("accepted", f["accepted"], False),
            ("verification mails sent", f["verification_mailed"], False),
            ("waitlisted", f["waitlisted"], False),
            ("approved", f["approved"], True), ("denied", f["denied"], True),
            ("keys issued", f["keys_issued"], False)]
    return {"mode": f["mode"], "rows": rows, "top": max(f["requests"], 1)}


@page
async def overview(request: Request, console: Console, session: Session) -> Response:
    gateway = request.app.state.runtime

    def read() -> dict[str, Any]:
        h = _overview_traffic(request.app)
        since = time.time() - 86400
        return {
            "chart": svg.time_series(h["start"], h["bucket_s"],
                                     [("requests", h["requests"]),
                                      ("active accounts", h["accounts"])],
                                     title="requests and active accounts over time"),
            "bucket_s": h["bucket_s"], "chart_complete": h["complete"],
            "acted": queries.acted_since(gateway, since),
            "campaigns": queries.campaign_summaries(gateway, limit=10),
            "campaign_total": queries.campaign_count(gateway),
            "detection": _detection_status(gateway),
            "funnel": _signup_funnel(gateway, since),
            "top": queries.ranked_page(gateway, queries.risk_index(request.app),
                                       limit=5)["data"],
        }

    data = await asyncio.to_thread(read)
    return console.render("overview.html", session=session, nav="overview", **data)


@page
async def accounts(request: Request, console: Console, session: Session) -> Response:
    gateway = request.app.state.runtime
    q = request.query_params
    filters = {k: (q.get(k) or None) for k in ("action", "campaign", "signal")}
    try:
        number = max(1, int(q.get("page", "1")))
    except ValueError:
        number = 1

    def read() -> dict[str, Any]:
        detection, _ = queries.parts(gateway)
        result = queries.ranked_page(gateway, queries.risk_index(request.app),
                                     offset=(number - 1) * PAGE_SIZE, limit=PAGE_SIZE,
                                     **filters)
        return {"result": result, "signals": [s.name for s in detection.signals]}

    try:
        data = await asyncio.to_thread(read)
    except queries.QueryError as exc:
        return console.render("error.html", 400, session=session, nav="accounts",
                              title="Bad filter", message=str(exc))
    pages = max(1, -(-data["result"]["total"] // PAGE_SIZE))
    link = {k: v for k, v in filters.items() if v}
    return console.render("accounts.html", session=session, nav="accounts", filters=filters,
                          kinds=KINDS, page=number, pages=pages, page_size=PAGE_SIZE,
                          link=lambda n: "?" + urlencode({**link, "page": n}), **data)


@page
async def account(request: Request, console: Console, session: Session) -> Response:
    gateway = request.app.state.runtime
    name = request.path_params["name"]

    def read() -> dict[str, Any] | None:
        view = queries.account_view(gateway, name)
        if view is None:
            return None
        h = _traffic(gateway, account=name, window=7 * 86400.0)
        return {
            "view": view,
            "chart": svg.time_series(h["start"], h["bucket_s"], [("requests", h["requests"])],
                                     title=f"requests of {name} over time"),
            "events": queries.timeline(gateway, name, 20),
            "keys": queries.account_keys(gateway, name),
            "history": queries.audit(gateway, account=name, limit=50),
            "retain": gateway.settings.retain_prompts,
        }

    data = await asyncio.to_thread(read)
    if data is None:
        return _not_found(console, session, f"No activity or action recorded for account "
                                            f"{name!r}.")
    return console.render("account.html", session=session, nav="accounts", name=name,
                          buttons=BUTTONS, done=request.query_params.get("done"), **data)


async def _act(gateway: Any, accounts_: list[str], form: dict[str, str], analyst: str,
               why: str = "") -> str | None:
    """Apply the form's button to ``accounts_``; an error message, or None."""
    kind = form.get("kind", "")
    reason = form.get("reason", "").strip()
    if kind not in BUTTONS:
        return f"Unknown action {kind!r}."
    if not reason:
        return "Give a reason: it goes into the audit log."
    if form.get("ttl", "") not in TTLS:
        return "Pick a duration from the list."
    ttl = TTLS[form.get("ttl", "")]
    factor: float | None = None
    if kind == "throttle":
        try:
            factor = float(form.get("rate_factor") or "0.25")
        except ValueError:
            return "The throttle factor must be a number between 0 and 1."

    def run() -> str | None:
        for name in accounts_:
            if kind == "lift":
                queries.lift(gateway, name, analyst=analyst, reason=why + reason)
            else:
                queries.set_action(gateway, name, kind, reason=why + reason, analyst=analyst,
                                   ttl=ttl, rate_factor=factor)
        return None

    try:
        return await asyncio.to_thread(run)
    except queries.QueryError as exc:
        return str(exc)


@page
async def account_action(request: Request, console: Console, session: Session) -> Response:
    gateway = request.app.state.runtime
    name = request.path_params["name"]
    form = request.state.form
    error = await _act(gateway, [name], form, session.analyst)
    if error:
        return console.render("error.html", 400, session=session, nav="accounts",
                              title="Not applied", message=error,
                              back=f"/console/accounts/{quote(name, safe='')}")
    return RedirectResponse(f"/console/accounts/{quote(name, safe='')}?done="
                            f"{quote(form['kind'])}", 303, headers=HEADERS)


@page
async def campaign_list(request: Request, console: Console, session: Session) -> Response:
    gateway = request.app.state.runtime
    try:
        number = max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        number = 1

    def read() -> tuple[list[dict[str, Any]], int]:
        return (queries.campaign_summaries(gateway, offset=(number - 1) * PAGE_SIZE,
                                           limit=PAGE_SIZE),
                queries.campaign_count(gateway))

    data, total = await asyncio.to_thread(read)
    return console.render("campaigns.html", session=session, nav="campaigns", campaigns=data,
                          total=total, page=number, pages=max(1, -(-total // PAGE_SIZE)),
                          offset=(number - 1) * PAGE_SIZE)


@page
async def campaign(request: Request, console: Console, session: Session) -> Response:
    gateway = request.app.state.runtime
    cid = request.path_params["campaign_id"]

    def read() -> dict[str, Any] | None:
        view = queries.campaign_view(gateway, cid)
        if view is None:
            return None
        return {"view": view, "graph": graph.campaign_graph(gateway, view)}

    data = await asyncio.to_thread(read)
    if data is None:
        return _not_found(console, session, "No campaign with this id in the latest "
                                            "detection round (campaigns are found afresh "
                                            "each round).")
    return console.render("campaign.html", session=session, nav="campaigns", buttons=BUTTONS,
                          done=request.query_params.get("done"), **data)


@page
async def campaign_action(request: Request, console: Console, session: Session) -> Response:
    gateway = request.app.state.runtime
    cid = request.path_params["campaign_id"]
    view = await asyncio.to_thread(queries.campaign_view, gateway, cid)
    if view is None:
        return _not_found(console, session, "No campaign with this id in the latest "
                                            "detection round.")
    form = request.state.form
    error = await _act(gateway, view["members"], form, session.analyst,
                       why=f"campaign {cid}: ")
    if error:
        return console.render("error.html", 400, session=session, nav="campaigns",
                              title="Not applied", message=error,
                              back=f"/console/campaigns/{quote(cid, safe='')}")
    return RedirectResponse(f"/console/campaigns/{quote(cid, safe='')}?done="
                            f"{quote(form['kind'])}", 303, headers=HEADERS)


MAX_REPORTS = 200


def _reports(folder: Path) -> list[dict[str, Any]]:
    """Evidence reports in ``folder`` (the folder itself or its subfolders), newest first."""
    if not folder.is_dir():
        return []
    found = []
    candidates = [folder, *(p for p in folder.iterdir() if p.is_dir())]
    for d in candidates:
        f = d / "evidence.json"
        if f.is_file():
            found.append((f.stat().st_mtime, d))
    found.sort(reverse=True)
    out = []
    for mtime, d in found[:MAX_REPORTS]:
        record = _summary(_record(d))
        out.append({"id": "." if d == folder else d.name, "mtime": mtime, "record": record,
                    "html": (d / "report.html").is_file()})
    return out


def _record(d: Path) -> dict[str, Any]:
    try:
        data = json.loads((d / "evidence.json").read_text())
        return data if isinstance(data, dict) else {"error": "not a JSON object"}
    except (OSError, ValueError) as exc:
        return {"error": f"unreadable: {exc}"}


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """The fields the pages show, each present (a report is a file anyone may write)."""
    suspect = record.get("suspect")
    if isinstance(suspect, dict):
        suspect = ", ".join(f"{k}: {v}" for k, v in suspect.items())[:200]
    tests = [t for t in record.get("tests") or [] if isinstance(t, dict)]
    return {
        "verdict": str(record.get("verdict") or record.get("error") or ""),
        "p_value": _number(record.get("p_value")),
        "correction": str(record.get("p_value_correction") or ""),
        "alpha": _number(record.get("alpha")),
        "created": str(record.get("created") or ""),
        "command": str(record.get("command") or ""),
        "suspect": str(suspect or ""),
        "key_ids": ", ".join(map(str, record.get("key_ids") or [])),
        "tests": [{"name": str(t.get("name") or t.get("test") or t.get("kind") or i + 1),
                   "p_value": _number(t.get("p_value")),
                   "tokens_scored": t.get("tokens_scored", ""),
                   "empirical_p_value": _number(t.get("empirical_p_value"))}
                  for i, t in enumerate(tests)],
    }


def _report_dir(console: Console, report_id: str) -> Path | None:
    # Only the folder itself or one of its direct subfolders, by name.
    if report_id == ".":
        d = console.forensics_dir
    elif "/" in report_id or "\\" in report_id or report_id.startswith("."):
        return None
    else:
        d = console.forensics_dir / report_id
    return d if (d / "evidence.json").is_file() else None


@page
async def forensics(request: Request, console: Console, session: Session) -> Response:
    reports = await asyncio.to_thread(_reports, console.forensics_dir)
    return console.render("forensics.html", session=session, nav="forensics", reports=reports,
                          folder=str(console.forensics_dir))


@page
async def forensics_report(request: Request, console: Console, session: Session) -> Response:
    d = _report_dir(console, request.path_params["report_id"])
    if d is None:
        return _not_found(console, session, "No evidence report with this name.")
    record = await asyncio.to_thread(_record, d)
    return console.render("report.html", session=session, nav="forensics",
                          report_id=request.path_params["report_id"], record=_summary(record),
                          html=(d / "report.html").is_file(),
                          pretty=json.dumps(record, indent=1)[:200_000])


@page
async def forensics_html(request: Request, console: Console, session: Session) -> Response:
    d = _report_dir(console, request.path_params["report_id"])
    if d is None or not (d / "report.html").is_file():
        return _not_found(console, session, "No HTML rendering of this report.")
    # The report's own page, sandboxed: it can run nothing and reach nothing.
    return FileResponse(d / "report.html", media_type="text/html", headers={
        **HEADERS, "Content-Security-Policy": "sandbox; default-src 'none'; "
                                              "style-src 'unsafe-inline'; img-src data:"})


@page
async def audit(request: Request, console: Console, session: Session) -> Response:
    gateway = request.app.state.runtime
    account_ = request.query_params.get("account") or None
    entries = await asyncio.to_thread(queries.audit, gateway, account=account_, limit=200)
    return console.render("audit.html", session=session, nav="audit", entries=entries,
                          account=account_)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    path = STATIC / name
    if "/" in name or not path.is_file():
        return Response("not found", 404)
    return FileResponse(path, headers={"Cache-Control": "max-age=3600",
                                       "X-Content-Type-Options": "nosniff"})


async def root(request: Request) -> Response:
    return RedirectResponse("/console/", 308)


ROUTES = [
    Route("/console", root, methods=["GET"]),
    Route("/console/", overview, methods=["GET"]),
    Route("/console/login", login_form, methods=["GET"]),
    Route("/console/login", login, methods=["POST"]),
    Route("/console/logout", logout, methods=["POST"]),
    Route("/console/accounts", accounts, methods=["GET"]),
    Route("/console/accounts/{name:path}/action", account_action, methods=["POST"]),
    Route("/console/accounts/{name:path}", account, methods=["GET"]),
    Route("/console/campaigns", campaign_list, methods=["GET"]),
    Route("/console/campaigns/{campaign_id}", campaign, methods=["GET"]),
    Route("/console/campaigns/{campaign_id}/action", campaign_action, methods=["POST"]),
    Route("/console/forensics", forensics, methods=["GET"]),
    Route("/console/forensics/{report_id}", forensics_report, methods=["GET"]),
    Route("/console/forensics/{report_id}/report.html", forensics_html, methods=["GET"]),
    Route("/console/audit", audit, methods=["GET"]),
    Route("/console/static/{name}", static, methods=["GET"]),
]
