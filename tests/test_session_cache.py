"""The test session scores into a cache of its own (tests/conftest.py, session_cache)."""

import os
from pathlib import Path


def test_the_session_scores_into_a_cache_of_its_own(tmp_path_factory):
    cache = Path(os.environ["PROMPTRL_CACHE"])
    assert cache.is_relative_to(tmp_path_factory.getbasetemp())  # made for this session
    assert not (cache / "scores").exists() or not (cache / "scores").is_symlink()  # no one else's scores
    assert (cache / "models").is_symlink() and (cache / "gguf").is_symlink()  # conversions shared, done once
    assert not (cache / "models").resolve().is_relative_to(tmp_path_factory.getbasetemp())
