"""Shared test setup: no model-hub traffic, a private BIOBENCH_HOME, the local HTTP server."""

import os

# Set before anything imports huggingface_hub: each hub miss would otherwise retry for ~46 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402

from tests.http_server import http_server  # noqa: E402,F401  (fixture)


@pytest.fixture(scope="session", autouse=True)
def biobench_home(tmp_path_factory):
    """Data, features and results of this test session live in one temporary folder."""
    patch = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("biobench_home")
    patch.setenv("BIOBENCH_HOME", str(home))
    patch.setenv("BIOBENCH_STORE", str(home / "results.sqlite"))
    for derived in ("BIOBENCH_DATA", "BIOBENCH_FEATURES"):  # follow BIOBENCH_HOME
        patch.delenv(derived, raising=False)
    yield home
    patch.undo()
