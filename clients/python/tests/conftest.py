"""The servers come from crates/keygate/tests/python.rs, which starts dev/idp, an echo
upstream and keygate, creates a service key, and passes them in KG_TEST_* variables."""

import os

import pytest


def need(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through `cargo test -p keygate --test python`")
    return value


@pytest.fixture
def servers():
    return {
        "url": need("KG_TEST_URL"),
        "key": need("KG_TEST_KEY"),
        "issuer": need("KG_TEST_ISSUER"),
    }


@pytest.fixture
def home(tmp_path):
    """A private HOME, cache and credentials for each test."""
    return {"HOME": str(tmp_path), "KEYGATE_TOKEN_CACHE": str(tmp_path / "cache")}


@pytest.fixture(autouse=True)
def fresh_memory():
    import keygate._token

    keygate._token._clear_memory()
    yield
    keygate._token._clear_memory()
