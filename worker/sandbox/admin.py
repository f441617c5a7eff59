"""``/_sandbox/*``: inspection and control for tests, the demo and the benchmark.

These endpoints take no authentication by design - the sandbox is a test double and must
never be exposed beyond localhost or a private test network. None of them returns a
token value or a secret.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from worker.sandbox.faults import Faults
from worker.sandbox.state import STATE_KEY

__all__ = ["add_routes", "faults_document"]


def faults_document(request: web.Request) -> dict[str, Any]:
    engine = request.app[STATE_KEY].faults
    return {
        "faults": engine.faults.model_dump(mode="json"),
        "remaining_overrides": engine.remaining_overrides(),
    }


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].stats())


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(faults_document(request))


async def _set_faults(request: web.Request) -> web.Response:
    try:
        faults = Faults.model_validate_json(await request.read())
    except ValidationError as exc:
        errors = json.loads(exc.json(include_url=False, include_input=False))
        return web.json_response({"message": "invalid faults", "errors": errors}, status=400)
    request.app[STATE_KEY].faults.set(faults)
    return web.json_response(faults_document(request))


async def _revoke_all(request: web.Request) -> web.Response:
    return web.json_response({"revoked": request.app[STATE_KEY].tokens.revoke_all()})


async def _reset(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        options = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return web.json_response({"message": "body is not valid JSON"}, status=400)
    tokens = bool(options.get("tokens", False)) if isinstance(options, dict) else False
    request.app[STATE_KEY].reset(tokens=tokens)
    return web.json_response({"reset": True, "tokens_cleared": tokens})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_sandbox/stats", _stats)
    app.router.add_get("/_sandbox/faults", _get_faults)
    app.router.add_post("/_sandbox/faults", _set_faults)
    app.router.add_post("/_sandbox/revoke-all", _revoke_all)
    app.router.add_post("/_sandbox/reset", _reset)
    app.router.add_get("/_sandbox/health", _health)
