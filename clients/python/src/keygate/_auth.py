"""`keygate.Auth()`: the `auth=` of requests and of httpx (sync and async).

Both libraries accept a callable that takes the request and returns it: this
one sets ``Authorization: Bearer <token>`` with a token from :func:`get_token`
(or from the `token` callable given), fetched again only when it is due.
"""

from __future__ import annotations

from typing import Callable, Optional

from ._token import get_token


class Auth:
    """Bearer authentication with a fresh keygate token on every request.

    >>> requests.get(url, auth=keygate.Auth())
    >>> httpx.Client(auth=keygate.Auth()).get(url)
    >>> await httpx.AsyncClient(auth=keygate.Auth()).get(url)

    With httpx's async client a token that is due is fetched with a short blocking call
    (the cached one costs nothing).
    """

    def __init__(self, token: Optional[Callable[[], str]] = None) -> None:
        self._token = token or get_token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token()}"
        return request

    def __repr__(self) -> str:
        return "keygate.Auth()"
