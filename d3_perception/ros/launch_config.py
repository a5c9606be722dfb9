"""Launch arguments -> node command, parameters, remaps and environment (no ROS imports).

ROS 2 launch is not on the package registries, so ``launch/camera.launch.py`` stays thin and calls
:func:`node_command`; ``d3-demo`` starts the node as a subprocess with the same function, so both paths
give the node the same parameters, remaps and Fast DDS profile.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from d3_perception.backends import BACKENDS

__all__ = [
    "BACKEND_CHOICES",
    "LAUNCH_ARGUMENTS",
    "NODE_EXECUTABLE",
    "NODE_NAME",
    "PACKAGE",
    "LaunchArgument",
    "NodeLaunchSpec",
    "node_command",
    "package_share_dir",
    "parse_bool",
]

PACKAGE = "d3_perception"
NODE_EXECUTABLE = "d3_perception_node"
NODE_NAME = "d3_perception_node"
NODE_MODULE = "d3_perception.ros.node"
BACKEND_CHOICES = BACKENDS
_NAME_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PARAM_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class LaunchArgument:
    """One ``DeclareLaunchArgument`` of camera.launch.py (declared once, here)."""

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


def package_share_dir() -> Path:
    """Where config/, launch/ and models/ live: the source checkout when running from one (so edits to
    config/ apply without reinstalling), else the installed share/d3_perception from the ament index."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "package.xml").is_file() and (checkout / "config").is_dir():
        return checkout
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # noqa: BLE001 - ament_index missing or package not installed
        return checkout


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
    node_name: str = NODE_NAME,
    python: str | None = None,
    share_dir: str | os.PathLike | None = None,
    base_env: dict[str, str] | None = None,
    log_level: str | None = None,
) -> NodeLaunchSpec:
    """Map the launch arguments to the node's command, parameters, remaps and environment.

    Empty strings / None mean "not given": ``params_file`` then defaults to the package's
    config/d3_perception.yaml, ``checkpoint`` and ``backend`` to the values in that file. ``image`` also
    remaps ``image/compressed`` to ``<image>/compressed`` (the image_transport naming); ``sparse_depth``
    (keyword) remaps the metric reference input. ``env`` sets
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
        if backend not in BACKEND_CHOICES and not str(backend).startswith("python:"):
            raise ValueError(f"`backend` must be one of {BACKEND_CHOICES} or python:module:callable; got {backend!r}")
        params["backend"] = str(backend)
    params["use_sim_time"] = parse_bool(use_sim_time, "use_sim_time")
    for key, value in (extra_params or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"`extra_params` keys must be parameter names; got {key!r}")
        if not isinstance(value, _PARAM_TYPES) and not (
                isinstance(value, list | tuple) and all(isinstance(v, _PARAM_TYPES) for v in value)):
            raise ValueError(f"`extra_params[{key!r}]` must be bool, int, float, str or a list of them; "
                             f"got {type(value).__name__}")
        params[key] = list(value) if isinstance(value, tuple) else value
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
