"""keygate for Python: `get_token()` with no arguments, `Auth()` for requests and
httpx, and `login()` for a personal key from a notebook. See docs/token.md."""

from ._auth import Auth
from ._login import login
from ._token import KeygateError, MissingCredentials, get_token

__all__ = ["Auth", "KeygateError", "MissingCredentials", "get_token", "login"]
__version__ = "0.1.0"
