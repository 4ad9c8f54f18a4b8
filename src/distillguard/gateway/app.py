"""``build_app``: the gateway's ASGI app, its routes and its middleware, in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from distillguard.backends.base import Backend
from distillguard.clock import Clock, wall_clock
from distillguard.config import Settings
from distillguard.console import views as console
from distillguard.detection.driver import DriverFactory, timer_driver
from distillguard.gateway import admin, analyst, errors, routes
from distillguard.gateway.middleware import Admission, Authenticate, ErrorsAndEvents
from distillguard.gateway.runtime import Runtime
from distillguard.signup import routes as signup_routes
from distillguard.signup.service import SignupService

if TYPE_CHECKING:
    from distillguard.detection.space import PromptSpace
    from distillguard.telemetry.store import Store
    from distillguard.watermark.service import WatermarkService

_HTTP_ERRORS: dict[int, type[errors.APIError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
}


async def _http_exception(request: Request, exc: Exception) -> Response:
    # Starlette raises HTTPException for unknown paths and wrong methods; answer those in
    # the same OpenAI shape as everything else.
    assert isinstance(exc, HTTPException)
    kind = _HTTP_ERRORS.get(exc.status_code, errors.InvalidRequest)
    message = (f"Unknown path {request.url.path}" if exc.status_code == 404
               else f"Method {request.method} is not allowed on {request.url.path}"
               if exc.status_code == 405 else str(exc.detail))
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    api_error = kind(message, headers=headers)
    api_error.status = exc.status_code
    raise api_error


def _allowed_methods(request: Request) -> str:
    # RFC 9110 wants every method of the resource in Allow; Starlette lists only those of
    # the first route on the path, and /admin/keys has one route per method.
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


def build_app(settings: Settings, *, backend: Backend | None = None,
              store: Store | None = None, watermark: WatermarkService | None = None,
              clock: Clock = wall_clock, driver: DriverFactory = timer_driver,
              prompt_space: PromptSpace | None = None) -> Starlette:
    """The gateway for ``settings``; parts not passed in are built at start-up (see
    ``Runtime``, which ``app.state.runtime`` holds)."""
    runtime = Runtime(settings, backend=backend, store=store, watermark=watermark,
                      clock=clock, driver=driver, prompt_space=prompt_space)
    # Built here so that bad sign-up settings fail at build time, started after the
    # runtime (it needs the store and the policy engine). Read from the runtime at start,
    # so that a bench can hand in one with its own clock and mailer before start-up.
    runtime.signup = SignupService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        signup = runtime.signup
        assert signup is not None
        await runtime.start()
        try:
            await signup.start(store=runtime.store, policy=runtime.policy)
            detection = runtime.detection
            if detection is not None and detection.signup_evidence is None:
                # Campaigns link accounts that signed up from one source.
                detection.signup_evidence = signup.all_evidence
            yield
        finally:
            # Detection (stopped by runtime.close) reads sign-up evidence: close after.
            await runtime.close()
            await signup.close()

    app_routes = [
        Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
        Route("/v1/completions", routes.completions, methods=["POST"]),
        Route("/v1/models", routes.list_models, methods=["GET"]),
        Route("/healthz", routes.healthz, methods=["GET"]),
        Route("/metrics", routes.metrics, methods=["GET"]),
        *admin.ROUTES,
        *analyst.ROUTES,
        *console.ROUTES,
        *signup_routes.ROUTES,
    ]
    # Metrics label series by these templates only (any other path: "unmatched").
    runtime.metrics.routes = frozenset(r.path for r in app_routes if hasattr(r, "path"))
    # Outermost first: errors and events see everything, including failed auth.
    middleware = [
        Middleware(ErrorsAndEvents, runtime=runtime),
        Middleware(Authenticate, runtime=runtime),
        Middleware(Admission, runtime=runtime),
    ]
    app = Starlette(routes=app_routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_exception})
    # Starlette's trailing-slash redirect builds its Location from the Host header, so a
    # forged Host turned /admin/accounts/ into a redirect to any site: a 404 instead.
    app.router.redirect_slashes = False
    app.state.runtime = runtime
    return app
