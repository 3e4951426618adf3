"""keygate's Python client against a running keygate and dev/idp."""

import asyncio
import json
import os
import re
import stat
import threading
import urllib.parse

import httpx
import pytest
import requests

import keygate
from keygate import _token


def claims(token: str) -> dict:
    import base64

    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_missing_variables_are_named():
    with pytest.raises(keygate.MissingCredentials) as e:
        keygate.get_token(env={"HOME": "/nonexistent"})
    assert "KEYGATE_URL and KEYGATE_API_KEY" in str(e.value)
    with pytest.raises(keygate.MissingCredentials) as e:
        keygate.get_token(env={"KEYGATE_URL": "http://127.0.0.1:1", "HOME": "/nonexistent"})
    assert "KEYGATE_API_KEY is not set (KEYGATE_URL is)" in str(e.value)
    assert "keygate.login()" in str(e.value)
    with pytest.raises(keygate.MissingCredentials) as e:
        keygate.get_token(env={"OIDC_ISSUER": "http://x", "OIDC_CLIENT_ID": "c", "HOME": "/nonexistent"})
    assert "OIDC_CLIENT_SECRET is not set (OIDC_ISSUER and OIDC_CLIENT_ID are)" in str(e.value)


def test_api_key_token_is_cached_in_memory_and_in_a_private_file(servers, home, capsys):
    env = {**home, "KEYGATE_URL": servers["url"], "KEYGATE_API_KEY": servers["key"]}
    token = keygate.get_token(env=env)
    assert claims(token)["azp"] == "svc-reporting"
    assert keygate.get_token(env=env) == token, "the same token while it is fresh"
    files = os.listdir(home["KEYGATE_TOKEN_CACHE"])
    assert len(files) == 1 and re.fullmatch(r"token-[0-9a-f]{64}\.json", files[0])
    path = os.path.join(home["KEYGATE_TOKEN_CACHE"], files[0])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(home["KEYGATE_TOKEN_CACHE"]).st_mode) == 0o700
    # A new process (memory forgotten) reads the file instead of asking the gateway.
    _token._clear_memory()
    assert keygate.get_token(env=env) == token
    out = capsys.readouterr()
    assert servers["key"] not in out.out + out.err and token not in out.out + out.err


def test_a_token_due_for_renewal_is_fetched_again(servers, home, monkeypatch):
    env = {**home, "KEYGATE_URL": servers["url"], "KEYGATE_API_KEY": servers["key"]}
    fetches = []
    real = _token._fetch
    monkeypatch.setattr(_token, "_fetch", lambda source: fetches.append(1) or real(source))
    keygate.get_token(env=env, cache=False)
    keygate.get_token(env=env, cache=False)
    assert len(fetches) == 1, "fresh: from memory"
    for held in _token._CACHE._memory.values():
        held.refresh_at = 0  # due
    token = keygate.get_token(env=env, cache=False)
    assert len(fetches) == 2, "due: fetched again"
    assert claims(token)["azp"] == "svc-reporting"


def test_a_cache_file_others_can_read_is_not_trusted(servers, home):
    env = {**home, "KEYGATE_URL": servers["url"], "KEYGATE_API_KEY": servers["key"]}
    token = keygate.get_token(env=env)
    path = os.path.join(home["KEYGATE_TOKEN_CACHE"], os.listdir(home["KEYGATE_TOKEN_CACHE"])[0])
    with open(path, "w") as f:
        json.dump({"access_token": "planted", "expires_at": 4102444800, "refresh_at": 4102444000}, f)
    os.chmod(path, 0o644)
    _token._clear_memory()
    fetched = keygate.get_token(env=env)
    assert fetched != "planted" and claims(fetched)["azp"] == "svc-reporting"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, "replaced by a private file"
    assert token


def test_a_refused_key_says_why_without_the_key(servers, home):
    bad = "kgs_" + "A" * 40
    env = {**home, "KEYGATE_URL": servers["url"], "KEYGATE_API_KEY": bad}
    with pytest.raises(keygate.KeygateError) as e:
        keygate.get_token(env=env)
    assert "refused (401)" in str(e.value)
    assert bad not in str(e.value)


def test_oidc_client_credentials(servers, home):
    env = {
        **home,
        "OIDC_ISSUER": servers["issuer"],
        "OIDC_CLIENT_ID": "svc-reporting",
        "OIDC_CLIENT_SECRET": "svc-reporting-secret",
    }
    token = keygate.get_token(env=env)
    assert claims(token)["azp"] == "svc-reporting"
    env["OIDC_CLIENT_SECRET"] = "wrong"
    with pytest.raises(keygate.KeygateError) as e:
        keygate.get_token(env=env)
    assert "refused" in str(e.value) and "wrong" not in str(e.value)


def test_auth_with_requests_and_httpx_sync_and_async(servers, home, monkeypatch):
    for k, v in {**home, "KEYGATE_URL": servers["url"], "KEYGATE_API_KEY": servers["key"]}.items():
        monkeypatch.setenv(k, v)
    url = f"{servers['url']}/api/items"

    def upstream_auth(resp):
        assert resp.status_code == 200, resp.text
        return resp.json()["headers"]["authorization"][0]

    seen = [
        upstream_auth(requests.get(url, auth=keygate.Auth(), timeout=10)),
        upstream_auth(httpx.get(url, auth=keygate.Auth(), timeout=10)),
    ]

    async def with_async():
        async with httpx.AsyncClient(auth=keygate.Auth(), timeout=10) as client:
            return upstream_auth(await client.get(url))

    seen.append(asyncio.run(with_async()))
    # The upstream got the provider's token, never the key.
    assert all(a.startswith("Bearer ey") for a in seen), seen
    assert all(servers["key"] not in a for a in seen)
    assert repr(keygate.Auth()) == "keygate.Auth()"


def approve_at_dev_idp(url: str, user: str) -> None:
    """Walks dev/idp's device pages as a browser would: confirm, sign in, consent."""
    s = requests.Session()
    page = s.get(url, timeout=10).text
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', page).group(1)
    code = re.search(r'name="user_code" value="([^"]+)"', page).group(1)
    action = urllib.parse.urljoin(url, "device")
    confirm = s.post(action, data={"xsrf": xsrf, "user_code": code}, timeout=10)
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', confirm.text).group(1)
    login = s.post(action, data={"xsrf": xsrf, "user_code": code, "confirm": "yes"}, timeout=10)
    form = re.search(r'action="([^"]+/login)"', login.text).group(1)
    done = s.post(urllib.parse.urljoin(login.url, form), data={"username": user, "password": user}, timeout=10)
    assert done.status_code == 200, done.text[:300]


def test_login_stores_a_personal_key_get_token_then_uses(servers, home, capsys):
    env = {**home, "KEYGATE_URL": servers["url"]}
    shown = {}

    def show(url, code):
        shown.update(url=url, code=code)
        threading.Thread(target=approve_at_dev_idp, args=(url, "bob"), daemon=True).start()

    key_id = keygate.login("pytest", "1d", show=show, env=env)
    assert key_id and re.fullmatch(r"[A-Z]{4}-[A-Z]{4}", shown["code"]), shown
    path = _token.credentials_file(env)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stored = json.loads(path.read_text())["keys"][servers["url"]]
    assert stored.startswith("kgp_")
    # get_token() with only KEYGATE_URL set: bob's own token, from his personal key.
    token = keygate.get_token(env=env)
    assert claims(token)["preferred_username"] == "bob"
    out = capsys.readouterr()
    assert stored not in out.out + out.err and token not in out.out + out.err
