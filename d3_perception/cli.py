"""Console-script entry points (DESIGN §6). Each imports its tool lazily so `--help` stays fast."""

from __future__ import annotations

import importlib
import sys


def _run(module: str) -> int:
    return importlib.import_module(module).main(sys.argv[1:])


def demo() -> int:
    return _run("d3_perception.ros.demo")


def predict() -> int:
    return _run("d3_perception.predict")


def export() -> int:
    return _run("d3_perception.export")


def eval_bag() -> int:
    return _run("d3_perception.evaluation.bag_cli")


def eval_benchmark() -> int:
    return _run("d3_perception.evaluation.benchmark_cli")


def convert_official() -> int:
    return _run("d3_perception.model.convert_official")


def synth_bag() -> int:
    return _run("d3_perception.synthetic.bag_cli")
