"""What a ROS executable of this package does around ``rclpy`` in ``main``: answer ``--help`` before ROS starts,
and finish cleanly however many signals arrive. No rclpy import."""

from __future__ import annotations

import argparse
import signal

__all__ = ["executable_parser", "ignore_further_signals", "split_ros_args"]


def executable_parser(prog: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
    """The parser of a ROS executable: no options of its own (settings are ROS parameters after
    ``--ros-args``), ``--help`` with ``examples``."""
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="examples:\n" + "\n".join("  " + e for e in examples))


def split_ros_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(the program's own arguments, the ``--ros-args ...`` part for ``rclpy.init``): the program parses its
    part first, so ``--help`` and mistakes are answered without starting ROS."""
    if "--ros-args" in args:
        i = args.index("--ros-args")
        return args[:i], args[i:]
    return args, []


def ignore_further_signals() -> None:
    """Call when shutdown has begun: a further SIGINT/SIGTERM (``ros2 launch`` sends a second SIGINT when it has
    no terminal) must not interrupt the cleanup with a KeyboardInterrupt traceback and exit code -2; the cleanup
    itself is bounded and the process exits 0."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):  # not on the main thread (main() run from a test thread)
            pass
