"""Launch arguments -> node command, parameters, remaps and environment, and what a launch starts (no ROS
imports).

ROS 2 launch is not on the package registries, so the decisions live here, unit-tested: ``launch/camera.launch.py``
calls :func:`node_command`, ``launch/demo.launch.py`` calls ``d3_perception.ros.demo.demo_specs``, and both hand
their :class:`NodeLaunchSpec` list to :func:`launch_plan` (rviz2 added, or left out with a message when it is not
installed) through the one launch fragment :mod:`d3_perception.ros.launch_actions`. ``d3-demo`` starts the node as
a subprocess with the same :func:`node_command`, so every path gives the node the same parameters, remaps and
Fast DDS profile.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from d3_perception.backends import BACKENDS, PLUGIN_PREFIX, PRECISIONS
from d3_perception.share_dir import PACKAGE, package_share_dir  # re-exported: launch files use it from here

__all__ = [
    "BACKEND_CHOICES",
    "LAUNCH_ARGUMENTS",
    "NODE_EXECUTABLE",
    "NODE_NAME",
    "PACKAGE",
    "LaunchArgument",
    "LaunchPlan",
    "NodeLaunchSpec",
    "launch_plan",
    "node_command",
    "package_share_dir",
    "parse_bool",
    "rviz_missing_reason",
    "rviz_spec",
]

NODE_EXECUTABLE = "d3_perception_node"
NODE_NAME = "d3_perception_node"
NODE_MODULE = "d3_perception.ros.node"
BACKEND_CHOICES = BACKENDS  # owned by d3_perception.backends
_NAME_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PARAM_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class LaunchArgument:
    """One ``DeclareLaunchArgument`` of a launch file (camera.launch.py's here, demo.launch.py's in
    ``d3_perception.ros.demo``); each is declared once, in its table."""

    name: str
    default: str
    description: str
    choices: tuple[str, ...] | None = None


LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("namespace", "", "namespace of the node and its relative topics, e.g. `camera`"),
    LaunchArgument("params_file", "", "node parameter YAML; empty = the package's config/d3_perception.yaml"),
    LaunchArgument("checkpoint", "", "checkpoint directory (config.json + model.safetensors); "
                   "empty = the value in params_file"),
    LaunchArgument("backend", "", "inference backend; empty = the value in params_file",
                   ("", *BACKEND_CHOICES)),
    LaunchArgument("precision", "", "inference precision: fp32, bf16 (x86 CPU: openvino, torch), fp16 (GPU: "
                   "tensorrt, torch on CUDA) or int8 (openvino, after d3-export --openvino --precision int8); "
                   "empty = the value in params_file", ("", *PRECISIONS)),
    LaunchArgument("cameras", "", "comma-separated camera names (front,left,right): one node, one batched model; "
                   "each camera N reads N/image, N/camera_info, N/sparse_depth and publishes N/depth, ..., N/points "
                   "in the namespace (remap them per camera: docs/node.md); empty = one camera"),
    LaunchArgument("image", "image", "input image topic (image/compressed is derived from it)"),
    LaunchArgument("camera_info", "camera_info", "input camera_info topic"),
    LaunchArgument("sparse_depth", "sparse_depth", "metric reference topic (16UC1 mm / 32FC1 m) for "
                   "metric.mode sparse_depth"),
    LaunchArgument("use_sim_time", "false", "use /clock (rosbag playback with --clock)", ("true", "false")),
    LaunchArgument("rviz", "false", "also start rviz2 with launch/d3_perception.rviz", ("true", "false")),
    LaunchArgument("rviz_frame", "", "rviz fixed frame (the camera's optical frame_id); "
                   "empty = camera_optical_frame from the rviz config"),
)


@dataclass(frozen=True)
class NodeLaunchSpec:
    """Everything needed to start the node, by launch_ros or as a plain subprocess."""

    cmd: list[str]  # argv for subprocess (python -m d3_perception.ros.node --ros-args ...)
    params: dict[str, bool | int | float | str]  # parameter overrides (applied after params_file)
    remaps: list[tuple[str, str]]  # (from, to) topic remappings
    env: dict[str, str]  # variables to add to the environment
    name: str = NODE_NAME
    namespace: str = ""
    params_file: str | None = None
    executable: str = NODE_EXECUTABLE
    package: str = PACKAGE
    arguments: list[str] = field(default_factory=list)  # --ros-args part of cmd (for launch_ros `ros_arguments`)
    program_arguments: list[str] = field(default_factory=list)  # plain arguments before --ros-args (rviz2's -d, -f)
    output: str = "screen"  # launch_ros `output`: "screen" or "log"


def parse_bool(value, name: str = "value") -> bool:
    """Launch-style booleans: bool, or the strings true/false/1/0/yes/no (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"`{name}` must be true or false; got {value!r}")


def _check_namespace(namespace: str) -> str:
    ns = namespace.strip()
    if ns in ("", "/"):
        return ""
    tokens = ns.strip("/").split("/")
    if not all(_NAME_TOKEN.match(t) for t in tokens):
        raise ValueError(f"`namespace` must be a ROS name (letters, digits, _ and /, no leading digit); got {namespace!r}")
    return "/" + "/".join(tokens)


def _check_topic(name: str, value: str) -> str:
    topic = value.strip()
    tokens = topic.lstrip("/").split("/") if topic not in ("", "/") else []
    if topic.startswith("~"):
        tokens = topic[1:].lstrip("/").split("/")
    if not tokens or not all(_NAME_TOKEN.match(t) for t in tokens):
        raise ValueError(f"`{name}` must be a ROS topic name such as `/camera/image_raw`; got {value!r}")
    return topic


def _ros_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # quote so that YAML keeps it a string ("1.0", "true", "" stay strings)
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def node_command(
    namespace: str = "",
    params_file: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    backend: str | None = None,
    image: str = "image",
    camera_info: str = "camera_info",
    use_sim_time: bool | str = False,
    extra_params: dict | None = None,
    *,
    sparse_depth: str = "sparse_depth",
    cameras: str | list[str] | tuple[str, ...] = "",
    precision: str | None = None,
    node_name: str = NODE_NAME,
    python: str | None = None,
    share_dir: str | os.PathLike | None = None,
    base_env: dict[str, str] | None = None,
    log_level: str | None = None,
) -> NodeLaunchSpec:
    """Map the launch arguments to the node's command, parameters, remaps and environment.

    Empty strings / None mean "not given": ``params_file`` then defaults to the package's
    config/d3_perception.yaml, ``checkpoint``, ``backend`` and ``precision`` (keyword) to the values in that file. ``image`` also
    remaps ``image/compressed`` to ``<image>/compressed`` (the image_transport naming); ``sparse_depth``
    (keyword) remaps the metric reference input. ``cameras`` ("front,left" or a list) sets the node's ``cameras``
    parameter; the single-camera remaps (``image``, ``camera_info``, ``sparse_depth``) are refused with it, as
    they would not reach the per-camera topics. ``env`` sets
    FASTDDS_DEFAULT_PROFILES_FILE to the package's config/fastdds_shm.xml unless ``base_env`` (default:
    ``os.environ``) already names one. Raises ``ValueError`` naming the bad argument.
    """
    share = Path(share_dir) if share_dir else package_share_dir()
    ns = _check_namespace(namespace or "")
    if not _NAME_TOKEN.match(node_name):
        raise ValueError(f"`node_name` must be a ROS name token; got {node_name!r}")
    pfile = Path(params_file) if params_file not in (None, "") else share / "config" / "d3_perception.yaml"
    if not pfile.is_file():
        raise ValueError(f"`params_file` must be an existing YAML file; got {str(pfile)!r}")
    params: dict[str, bool | int | float | str] = {}
    if checkpoint not in (None, ""):
        params["checkpoint"] = str(checkpoint)
    if backend not in (None, ""):
        if backend not in BACKEND_CHOICES and not str(backend).startswith(PLUGIN_PREFIX):
            raise ValueError(f"`backend` must be one of {BACKEND_CHOICES} or python:module:callable; got {backend!r}")
        params["backend"] = str(backend)
    if precision not in (None, ""):
        if precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS}; got {precision!r}")
        params["precision"] = str(precision)
    params["use_sim_time"] = parse_bool(use_sim_time, "use_sim_time")
    for key, value in (extra_params or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"`extra_params` keys must be parameter names; got {key!r}")
        if not isinstance(value, _PARAM_TYPES) and not (
                isinstance(value, list | tuple) and all(isinstance(v, _PARAM_TYPES) for v in value)):
            raise ValueError(f"`extra_params[{key!r}]` must be bool, int, float, str or a list of them; "
                             f"got {type(value).__name__}")
        params[key] = list(value) if isinstance(value, tuple) else value
    names = [c.strip() for c in (cameras.split(",") if isinstance(cameras, str) else cameras) if c.strip()]
    if names:
        if not all(_NAME_TOKEN.match(c) for c in names) or len(set(names)) != len(names):
            raise ValueError(f"`cameras` must be distinct ROS name tokens separated by commas; got {cameras!r}")
        given = [n for n, v, d in (("image", image, "image"), ("camera_info", camera_info, "camera_info"),
                                   ("sparse_depth", sparse_depth, "sparse_depth")) if (v or d) != d]
        if given:
            raise ValueError(f"`{given[0]}` must stay at its default with `cameras`: remap each camera's topics "
                             f"(e.g. front/image:=/cam_front/image_raw) instead (docs/node.md)")
        params["cameras"] = names
    image_topic = _check_topic("image", image or "image")
    info_topic = _check_topic("camera_info", camera_info or "camera_info")
    remaps: list[tuple[str, str]] = []
    if image_topic != "image":
        remaps += [("image", image_topic), ("image/compressed", image_topic.rstrip("/") + "/compressed")]
    if info_topic != "camera_info":
        remaps.append(("camera_info", info_topic))
    sparse_topic = _check_topic("sparse_depth", sparse_depth or "sparse_depth")
    if sparse_topic != "sparse_depth":
        remaps.append(("sparse_depth", sparse_topic))

    env: dict[str, str] = {}
    source_env = os.environ if base_env is None else base_env
    if not source_env.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(share / "config" / "fastdds_shm.xml")

    ros_args = ["--ros-args", "-r", f"__node:={node_name}"]
    if ns:
        ros_args += ["-r", f"__ns:={ns}"]
    if log_level:
        ros_args += ["--log-level", log_level]
    ros_args += ["--params-file", str(pfile)]
    for key, value in params.items():
        rendered = "[" + ", ".join(_ros_value(v) for v in value) + "]" if isinstance(value, list) else _ros_value(value)
        ros_args += ["-p", f"{key}:={rendered}"]
    for src, dst in remaps:
        ros_args += ["-r", f"{src}:={dst}"]
    cmd = [python or sys.executable, "-m", NODE_MODULE, *ros_args]
    return NodeLaunchSpec(cmd=cmd, params=params, remaps=remaps, env=env, name=node_name, namespace=ns,
                          params_file=str(pfile), arguments=ros_args)


RVIZ_PACKAGE = "rviz2"


def rviz_missing_reason() -> str | None:
    """None when launch_ros can start rviz2 (the ``rviz2`` package with its ``lib/rviz2/rviz2`` executable in the
    ament index, the way ``Node(package="rviz2", executable="rviz2")`` resolves it), else why not, in words."""
    try:
        from ament_index_python.packages import get_package_prefix
    except ImportError:
        return "ament_index_python is not importable (no ROS 2 installation sourced)"
    try:
        prefix = Path(get_package_prefix(RVIZ_PACKAGE))
    except Exception:  # noqa: BLE001 - PackageNotFoundError, or a broken AMENT_PREFIX_PATH
        return (f"the {RVIZ_PACKAGE} package is not installed (e.g. apt install ros-$ROS_DISTRO-rviz2, then source "
                "the ROS 2 setup)")
    exe = prefix / "lib" / RVIZ_PACKAGE / "rviz2"
    if not exe.is_file():
        return f"{exe} does not exist"
    return None


def rviz_spec(node: NodeLaunchSpec, frame: str = "", share_dir: str | os.PathLike | None = None) -> NodeLaunchSpec:
    """rviz2 with launch/d3_perception.rviz in ``node``'s namespace (the config's relative topic names resolve
    to its outputs), ``use_sim_time`` as the node has it, fixed frame ``frame`` ('' = the config's)."""
    config = str(Path(share_dir) if share_dir else package_share_dir()) + "/launch/d3_perception.rviz"
    args = ["-d", config, *(["-f", frame] if frame else [])]
    params = {"use_sim_time": bool(node.params.get("use_sim_time", False))}
    ros_args = ["--ros-args", "-p", f"use_sim_time:={_ros_value(params['use_sim_time'])}"]
    if node.namespace:
        ros_args += ["-r", f"__ns:={node.namespace}"]
    return NodeLaunchSpec(cmd=["rviz2", *args, *ros_args], params=params, remaps=[], env={}, name="rviz2",
                          namespace=node.namespace, executable="rviz2", package=RVIZ_PACKAGE, arguments=ros_args,
                          program_arguments=args, output="log")


@dataclass(frozen=True)
class LaunchPlan:
    """What a launch file starts, and the messages it logs first."""

    specs: tuple[NodeLaunchSpec, ...]
    messages: tuple[str, ...] = ()


def launch_plan(specs, rviz: bool | str, viewer_of: NodeLaunchSpec, frame: str = "", *,
                rviz_missing=rviz_missing_reason) -> LaunchPlan:
    """``specs`` plus rviz2 (:func:`rviz_spec` of ``viewer_of``) when ``rviz`` is true.

    Decided before launch starts anything: without rviz2 (``rviz_missing()`` gives the reason) the nodes start
    without it and the first message says why, so ``rviz:=true`` never leaves a node orphaned by a failed
    rviz2 start. Raises ``ValueError`` for an ``rviz`` value that is not a boolean.
    """
    specs = tuple(specs)
    if not parse_bool(rviz, "rviz"):
        return LaunchPlan(specs)
    reason = rviz_missing()
    if reason is not None:
        return LaunchPlan(specs, (f"rviz:=true but rviz2 cannot start: {reason}. Starting "
                                  f"{', '.join(s.name for s in specs)} without rviz; view the outputs from a machine "
                                  f"with rviz2: rviz2 -d launch/d3_perception.rviz --ros-args -r "
                                  f"__ns:={viewer_of.namespace or '/'}",))
    return LaunchPlan((*specs, rviz_spec(viewer_of, frame)))
