"""`keygate.login()`: a personal API key through the device flow, from a notebook.

It asks the gateway (``KEYGATE_URL``) for a device flow (``POST /oauth/keys/device``),
shows the address and the code to confirm, waits while the user approves at the
provider, and keeps the key it gets in the credentials file (``0600``), where
:func:`keygate.get_token` finds it for that gateway. The key is never shown.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Mapping, Optional

from ._token import KeygateError, MissingCredentials, _check_scheme, _refused, _request, store_key


def _show(url: str, code: str) -> None:
    text = f"To create your personal key, open {url} and approve; check that it shows the code {code}."
    try:  # a notebook: a link
        from IPython.display import HTML, display  # type: ignore

        from html import escape

        display(HTML(f'To create your personal key, open <a href="{escape(url)}" target="_blank">{escape(url)}</a> '
                     f"and approve; check that it shows the code <code>{escape(code)}</code>."))
    except Exception:  # noqa: BLE001 (no IPython: plain text)
        print(text)


def login(
    description: str = "notebook",
    expires_in: Optional[str] = None,
    *,
    url: Optional[str] = None,
    show: Callable[[str, str], None] = _show,
    env: Optional[Mapping[str, str]] = None,
    timeout: float = 600,
) -> str:
    """Creates a personal key for the signed-in user and stores it for `get_token()`.

    Returns the key's id (not the key). `show(url, code)` displays the approval address
    and code (a link in a notebook, a line elsewhere). Raises :class:`KeygateError` when
    the user denies, the flow expires, or the gateway refuses.
    """
    env = os.environ if env is None else env
    gateway = (url or env.get("KEYGATE_URL") or "").strip().rstrip("/")
    if not gateway:
        raise MissingCredentials("KEYGATE_URL is not set (the gateway to create the key at)")
    _check_scheme(gateway, "KEYGATE_URL")
    who = f"the gateway {gateway}"
    body = {"description": description}
    if expires_in:
        body["expires_in"] = expires_in
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    status, start = _request(f"{gateway}/oauth/keys/device", data=json.dumps(body).encode(), headers=headers, who=who)
    if status not in (200, 201) or not isinstance(start, dict) or not start.get("flow_id"):
        raise _refused(who, status, start)
    show(start.get("verification_uri_complete") or start.get("verification_uri", ""), start.get("user_code", ""))
    interval = max(1, int(start.get("interval") or 5))
    deadline = time.monotonic() + min(timeout, float(start.get("expires_in") or timeout))
    poll = json.dumps({"flow_id": start["flow_id"]}).encode()
    while time.monotonic() < deadline:
        time.sleep(interval)
        status, answer = _request(f"{gateway}/oauth/keys/device/token", data=poll, headers=headers, who=who)
        if status == 201 and isinstance(answer, dict) and answer.get("key"):
            store_key(gateway, answer["key"], env)
            return str(answer.get("id", ""))
        if status == 202 and isinstance(answer, dict):
            if answer.get("status") == "slow_down":
                interval = max(interval, int(answer.get("interval") or interval + 5))
            continue
        raise _refused(who, status, answer)
    raise KeygateError("the approval was not given in time; run keygate.login() again")
