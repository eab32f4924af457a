"""Who may read the fleet API: bearer tokens, kept as digests and compared in constant time.

With `web.api_tokens` set, a request needs `Authorization: Bearer <one of them>` (else a 401 with
`WWW-Authenticate: Bearer`) unless its route is one of the open routes `cloud.api` names; an unknown
/api/ path needs the token too, so that a refusal does not tell which paths exist.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Collection
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from cloud.api_params import json_response

_REALM: Final = 'Bearer realm="voltgate"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_digests(tokens: Collection[str]) -> frozenset[bytes]:
    """What the server keeps of its tokens: their SHA-256, so that comparing takes as long for any length."""
    return frozenset(hashlib.sha256(token.encode()).digest() for token in tokens)


def bearer_refusal(authorization: str | None, digests: Collection[bytes]) -> tuple[str, str] | None:
    """None when `authorization` carries a token of `digests`, else (reason, WWW-Authenticate value)."""
    if authorization is None:
        return "this API needs a token: send 'Authorization: Bearer <token>'", _REALM
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return "the Authorization header must be 'Bearer <token>'", f'{_REALM}, error="invalid_request"'
    presented = hashlib.sha256(credentials.strip().encode("utf-8", "replace")).digest()
    matched = False
    for digest in digests:  # every one compared, in constant time: no early exit to time
        matched |= hmac.compare_digest(presented, digest)
    if not matched:
        return "the bearer token is not valid", f'{_REALM}, error="invalid_token"'
    return None


def bearer_auth(digests: frozenset[bytes], open_routes: Collection[str]) -> Middleware:
    """Refuses a request for a route not in `open_routes` (or an unknown /api/ path) without a token."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        needs_token = (
            resource.canonical not in open_routes
            if resource is not None
            else request.path.startswith("/api/")
        )
        if needs_token and (refusal := bearer_refusal(request.headers.get("Authorization"), digests)):
            reason, challenge = refusal
            response = json_response({"error": reason}, 401)
            response.headers["WWW-Authenticate"] = challenge
            return response
        return await handler(request)

    return require_token
