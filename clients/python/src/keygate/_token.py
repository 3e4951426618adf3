"""get_token(): an access token from the environment, as `keygate token` gets it.

Sources, the first complete one wins:

1. ``KEYGATE_URL`` + ``KEYGATE_API_KEY``: the gateway's ``GET /oauth/token``;
2. ``KEYGATE_URL`` + the personal key :func:`keygate.login` stored for that URL;
3. ``OIDC_ISSUER`` + ``OIDC_CLIENT_ID`` + ``OIDC_CLIENT_SECRET`` (+ ``OIDC_SCOPE``):
   the provider's client-credentials grant.

Tokens are kept in memory and in the cache directory ``keygate token`` uses (the same
file names, so the two share tokens): ``$KEYGATE_TOKEN_CACHE``, else
``$XDG_CACHE_HOME/keygate``, else ``~/.cache/keygate``; the directory ``0700``, files
``0600``, written whole. A token is handed out until 60 s before it expires (half its
lifetime when shorter than two minutes). Nothing here prints or logs a key or a token.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

MARGIN_SECS = 60
GATEWAY_VARS = ("KEYGATE_URL", "KEYGATE_API_KEY")
OIDC_VARS = ("OIDC_ISSUER", "OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET")
USER_AGENT = "keygate-python/0.1.0"


class KeygateError(Exception):
    """A token cannot be had; the message says why and what to set. Never holds a secret."""


class MissingCredentials(KeygateError):
    """The environment lacks a complete set of variables; the message names the missing ones."""


@dataclass(frozen=True)
class _Source:
    kind: str  # "keygate" or "oidc"
    url: str
    key: str = ""
    client_id: str = ""
    secret: str = ""
    scope: str = ""

    def identity(self) -> bytes:
        # The same identity as the Rust client's, so the cache files are shared.
        if self.kind == "keygate":
            parts = ["keygate", self.url, self.key]
        else:
            parts = ["oidc", self.url, self.client_id, self.secret, self.scope]
        return "\0".join(parts).encode()

    def cache_name(self) -> str:
        return "token-" + hashlib.sha256(self.identity()).hexdigest() + ".json"

    def __repr__(self) -> str:  # never the key or the secret
        return f"_Source(kind={self.kind!r}, url={self.url!r})"


@dataclass
class _Token:
    access_token: str
    expires_at: Optional[int]
    refresh_at: Optional[int]

    @classmethod
    def new(cls, access_token: str, expires_in: Optional[int]) -> "_Token":
        now = int(time.time())
        if expires_in is None:
            return cls(access_token, None, None)
        return cls(access_token, now + expires_in, now + expires_in - min(MARGIN_SECS, expires_in // 2))

    def fresh(self) -> bool:
        return self.refresh_at is not None and int(time.time()) < self.refresh_at

    def __repr__(self) -> str:
        return f"_Token(expires_at={self.expires_at})"


def _and_list(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _partial(names, get) -> Optional[str]:
    present = [n for n in names if get(n)]
    missing = [n for n in names if not get(n)]
    if not present or not missing:
        return None
    verb = lambda ns: _and_list(ns) + (" is" if len(ns) == 1 else " are")  # noqa: E731
    return f"{verb(missing)} not set ({verb(present)})"


def source_from_env(env: Mapping[str, str]) -> _Source:
    """The source the environment names; :class:`MissingCredentials` says what is missing."""

    def get(name: str) -> str:
        return (env.get(name) or "").strip()

    url = get("KEYGATE_URL").rstrip("/")
    if url and get("KEYGATE_API_KEY"):
        return _Source("keygate", url, key=get("KEYGATE_API_KEY"))
    if url:
        stored = stored_key(url, env)
        if stored:
            return _Source("keygate", url, key=stored)
    if all(get(n) for n in OIDC_VARS):
        return _Source(
            "oidc",
            get("OIDC_ISSUER").rstrip("/"),
            client_id=get("OIDC_CLIENT_ID"),
            secret=env.get("OIDC_CLIENT_SECRET") or "",
            scope=get("OIDC_SCOPE"),
        )
    gateway, oidc = _partial(GATEWAY_VARS, get), _partial(OIDC_VARS, get)
    if gateway and url:
        gateway += "; or run keygate.login() to store a personal key for it"
    if gateway and oidc:
        message = f"{gateway}; {oidc}"
    elif gateway:
        message = f"{gateway}; or set OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET"
    elif oidc:
        message = f"{oidc}; or set KEYGATE_URL and KEYGATE_API_KEY"
    else:
        message = (
            "set KEYGATE_URL and KEYGATE_API_KEY (a keygate gateway and an API key for it), "
            "or OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET (a provider client with "
            "the client-credentials grant)"
        )
    raise MissingCredentials(message)


# ------------------------------------------------------------------ private files


def _private_dir(path: Path) -> Optional[Path]:
    """`path`, created 0700; None when it exists but another user owns it or others may write it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    if st.st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError:
            return None
    return path


def _read_private(path: Path) -> Optional[bytes]:
    """The file's bytes, only if it is a regular file of this user that no one else can read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(1 << 20)
    finally:
        os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    """Writes `data` whole: a 0600 temporary file in the same directory, then renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def cache_dir(env: Mapping[str, str]) -> Optional[Path]:
    """`$KEYGATE_TOKEN_CACHE`, `$XDG_CACHE_HOME/keygate`, `~/.cache/keygate`."""
    if env.get("KEYGATE_TOKEN_CACHE"):
        return Path(env["KEYGATE_TOKEN_CACHE"])
    xdg = env.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "keygate"
    home = env.get("HOME")
    return Path(home) / ".cache" / "keygate" if home else None


def credentials_file(env: Mapping[str, str]) -> Optional[Path]:
    """Where :func:`keygate.login` keeps personal keys: `$KEYGATE_CREDENTIALS`, else
    `$XDG_CONFIG_HOME/keygate/credentials.json`, else `~/.config/keygate/credentials.json`."""
    if env.get("KEYGATE_CREDENTIALS"):
        return Path(env["KEYGATE_CREDENTIALS"])
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "keygate" / "credentials.json"
    home = env.get("HOME")
    return Path(home) / ".config" / "keygate" / "credentials.json" if home else None


def stored_key(url: str, env: Mapping[str, str]) -> Optional[str]:
    """The personal key stored for gateway `url`, if any."""
    path = credentials_file(env)
    data = _read_private(path) if path else None
    if not data:
        return None
    try:
        key = json.loads(data).get("keys", {}).get(url.rstrip("/"))
    except (ValueError, AttributeError):
        return None
    return key if isinstance(key, str) and key else None


def store_key(url: str, key: str, env: Mapping[str, str]) -> Path:
    """Keeps `key` for gateway `url` in the credentials file (0600, in a 0700 directory)."""
    path = credentials_file(env)
    if path is None or _private_dir(path.parent) is None:
        raise KeygateError("no private place for the key: set KEYGATE_CREDENTIALS or HOME")
    current = {}
    data = _read_private(path)
    if data:
        try:
            current = json.loads(data)
        except ValueError:
            current = {}
    keys = current.get("keys") if isinstance(current.get("keys"), dict) else {}
    keys[url.rstrip("/")] = key
    _write_private(path, json.dumps({"keys": keys}).encode())
    return path


# ------------------------------------------------------------------ fetching


def _request(url: str, *, data: Optional[bytes] = None, headers: Mapping[str, str], who: str, timeout: float = 30):
    """(status, JSON body or None). Connection errors become KeygateError naming `who`."""
    req = urllib.request.Request(url, data=data, headers={"User-Agent": USER_AGENT, **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise KeygateError(f"cannot reach {who}: {reason}") from None
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None


def _refused(who: str, status: int, body) -> KeygateError:
    body = body if isinstance(body, dict) else {}
    code, description = body.get("error"), body.get("error_description")
    if code and description:
        return KeygateError(f"{who} refused ({status}): {description} [{code}]")
    if description or code:
        return KeygateError(f"{who} refused ({status}): {description or code}")
    return KeygateError(f"{who} answered {status}")


def _check_scheme(url: str, var: str) -> None:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise KeygateError(f"{var} must be an http:// or https:// URL")


def _fetch(source: _Source) -> _Token:
    if source.kind == "keygate":
        _check_scheme(source.url, "KEYGATE_URL")
        who = f"the gateway {source.url}"
        status, body = _request(
            f"{source.url}/oauth/token",
            headers={"Authorization": f"Bearer {source.key}", "Accept": "application/json"},
            who=who,
        )
    else:
        _check_scheme(source.url, "OIDC_ISSUER")
        who = f"the provider {source.url}"
        status, meta = _request(f"{source.url}/.well-known/openid-configuration", headers={"Accept": "application/json"}, who=who)
        if status != 200 or not isinstance(meta, dict) or not meta.get("token_endpoint"):
            raise KeygateError(f"{who} has no usable discovery document (HTTP {status})")
        form = {"grant_type": "client_credentials"}
        if source.scope:
            form["scope"] = source.scope
        import base64

        basic = base64.b64encode(
            f"{urllib.parse.quote(source.client_id, safe='')}:{urllib.parse.quote(source.secret, safe='')}".encode()
        ).decode()
        status, body = _request(
            meta["token_endpoint"],
            data=urllib.parse.urlencode(form).encode(),
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            who=who,
        )
    if status != 200:
        raise _refused(who, status, body)
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str) or not body["access_token"].strip():
        raise KeygateError(f"{who}'s answer has no access_token")
    expires_in = body.get("expires_in")
    try:
        expires_in = int(expires_in) if expires_in is not None else None
    except (TypeError, ValueError):
        expires_in = None
    return _Token.new(body["access_token"], expires_in)


# ------------------------------------------------------------------ the cache


class _Cache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._memory: dict = {}

    def get(self, source: _Source, env: Mapping[str, str], use_files: bool) -> _Token:
        name = source.cache_name()
        with self._lock:
            token = self._memory.get(name)
            if token is not None and token.fresh():
                return token
            directory = _private_dir(cache_dir(env)) if use_files and cache_dir(env) else None
            if directory is not None:
                token = self._load(directory / name)
                if token is not None and token.fresh():
                    self._memory[name] = token
                    return token
            token = _fetch(source)
            self._memory[name] = token
            if directory is not None and token.refresh_at is not None:
                entry = {"access_token": token.access_token, "expires_at": token.expires_at, "refresh_at": token.refresh_at}
                try:
                    _write_private(directory / name, json.dumps(entry).encode())
                except OSError:
                    pass
            return token

    @staticmethod
    def _load(path: Path) -> Optional[_Token]:
        data = _read_private(path)
        if not data:
            return None
        try:
            entry = json.loads(data)
            return _Token(str(entry["access_token"]), int(entry["expires_at"]), entry.get("refresh_at"))
        except (ValueError, KeyError, TypeError):
            return None

    def clear(self) -> None:
        with self._lock:
            self._memory.clear()


_CACHE = _Cache()


def get_token(*, env: Optional[Mapping[str, str]] = None, cache: bool = True) -> str:
    """A valid access token from the environment's credentials (see the module's doc).

    Cheap to call before every request: the token is reused until shortly before it
    expires, then renewed. Raises :class:`MissingCredentials` naming the variables to set,
    or :class:`KeygateError` when the gateway or the provider refuses (with its reason).
    `env` replaces ``os.environ`` (for tests); `cache=False` skips the files.
    """
    env = os.environ if env is None else env
    source = source_from_env(env)
    return _CACHE.get(source, env, cache).access_token


def _clear_memory() -> None:
    """Forgets the tokens held in memory (tests)."""
    _CACHE.clear()


TokenGetter = Callable[[], str]
