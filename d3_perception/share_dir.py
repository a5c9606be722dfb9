"""Where the package's data (config/, launch/, models/) lives, without importing ROS."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PACKAGE", "package_share_dir"]

PACKAGE = "d3_perception"


def package_share_dir() -> Path:
    """Where config/, launch/ and models/ live: the source checkout when running from one (so edits to
    config/ apply without reinstalling), else the installed ``share/d3_perception`` of the first prefix in
    ``AMENT_PREFIX_PATH`` whose ament resource index lists the package (what a sourced colcon install sets),
    else the checkout path."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "package.xml").is_file() and (checkout / "config").is_dir():
        return checkout
    # ament_index_python's get_package_share_directory does this lookup, but it is ROS, which this module
    # must not import (the CLIs run without ROS); the index is one marker file per package and prefix
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        marker = Path(prefix) / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
        if prefix and marker.is_file():
            return Path(prefix) / "share" / PACKAGE
    return checkout
