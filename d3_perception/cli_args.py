"""argparse pieces shared by the command-line tools: one-line errors and validated argument types."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from d3_perception.share_dir import package_share_dir


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): the reason, and where to look."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(prog: str, body: Callable[[], int], errors: tuple[type[BaseException], ...], *,
            interrupted: str = "interrupted", error_code: int = 2) -> int:
    """``body()``'s exit code; an expected error becomes ``prog: error: <reason on one line>`` and
    ``error_code``, Ctrl-C becomes ``prog: <interrupted>`` and 130. Anything else is a bug: its traceback stays."""
    try:
        return body()
    except errors as exc:
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return error_code
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0; got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0; got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text!r}")
    return value


def image_size(min_px: int, max_px: int) -> Callable[[str], tuple[int, int]]:
    """An argparse type for 'WxH' that returns ``(H, W)``, each side in ``[min_px, max_px]``."""

    def parse(text: str) -> tuple[int, int]:
        try:
            w, h = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT such as 320x240; got {text!r}") from None
        if not (min_px <= w <= max_px and min_px <= h <= max_px):
            raise argparse.ArgumentTypeError(f"width and height must be in [{min_px}, {max_px}]; got {text!r}")
        return h, w

    return parse


DEMO_MODEL_NAME = "d3_demo_tiny"


def bundled_demo_checkpoint() -> Path | None:
    """``models/d3_demo_tiny`` of the source checkout or the installed ROS share directory; None if absent."""
    ckpt = package_share_dir() / "models" / DEMO_MODEL_NAME
    return ckpt if (ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file() else None


def checkpoint_or_demo(checkpoint: str | os.PathLike | None, prog: str) -> Path:
    """``checkpoint`` as given, else the bundled demo model, announced on stderr in one line.

    Raises ``ValueError`` (one line: how to give real weights) when neither exists.
    """
    if checkpoint not in (None, ""):
        return Path(checkpoint)
    demo = bundled_demo_checkpoint()
    if demo is None:
        raise ValueError("`--checkpoint` must be given: no bundled demo model models/d3_demo_tiny is installed "
                         "here (real weights: d3-convert-official, see docs/model.md)")
    print(f"{prog}: no --checkpoint given: using the bundled demo model {demo} (4 M parameters, trained only on "
          "synthetic scenes: rough on real images); for real weights pass --checkpoint DIR "
          "(official D³ weights: d3-convert-official, docs/model.md)", file=sys.stderr)
    return demo
