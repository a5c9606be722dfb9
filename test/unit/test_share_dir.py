"""package_share_dir: the checkout when running from one, else the installed share of the ament prefix that
indexes the package (found without importing ROS), so `d3-predict` finds the bundled model in both."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import d3_perception.share_dir as share_dir

SOURCE = Path(share_dir.__file__)


def _installed_copy(tmp_path: Path):
    """share_dir.py loaded from a site-packages-like folder that is not a source checkout."""
    pkg = tmp_path / "site-packages" / "d3_perception"
    pkg.mkdir(parents=True)
    shutil.copy(SOURCE, pkg / "share_dir.py")
    spec = importlib.util.spec_from_file_location("installed_share_dir", pkg / "share_dir.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, pkg.parent


def test_a_checkout_is_its_own_share_dir():
    root = share_dir.package_share_dir()
    assert (root / "package.xml").is_file() and (root / "config").is_dir() and (root / "models").is_dir()


def test_an_installed_package_finds_the_indexed_prefix(tmp_path, monkeypatch):
    module, site = _installed_copy(tmp_path)
    other, prefix = tmp_path / "other", tmp_path / "install"
    (other / "share").mkdir(parents=True)  # a prefix without the package's index marker: skipped
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / "d3_perception"
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{other}:{prefix}")
    assert module.package_share_dir() == prefix / "share" / "d3_perception"
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(other))  # not indexed anywhere: the installed folder itself
    assert module.package_share_dir() == site
