"""The launch fragment both launch files share: declared arguments, and :class:`NodeLaunchSpec` -> launch_ros
``Node`` actions through :func:`~d3_perception.ros.launch_config.launch_plan` (rviz2 checked before any
action exists). Only this module and the launch files import ``launch``/``launch_ros`` (not on the package
registries); every decision it executes is made, and unit-tested, in :mod:`d3_perception.ros.launch_config`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from d3_perception.ros.launch_config import LaunchArgument, NodeLaunchSpec, launch_plan
from launch import LaunchDescription

__all__ = ["launch_description", "node_action"]

# launch values (strings) -> (the specs to start, the spec whose namespace and use_sim_time rviz2 takes,
# rviz2's fixed frame or "")
SpecsFn = Callable[[dict[str, str]], tuple[Sequence[NodeLaunchSpec], NodeLaunchSpec, str]]


def node_action(spec: NodeLaunchSpec) -> Node:
    return Node(package=spec.package, executable=spec.executable, name=spec.name, namespace=spec.namespace,
                parameters=[p for p in (spec.params_file, spec.params) if p], remappings=spec.remaps,
                arguments=spec.program_arguments, additional_env=spec.env, output=spec.output, emulate_tty=True)


def launch_description(arguments: Sequence[LaunchArgument], specs: SpecsFn) -> LaunchDescription:
    """Declare ``arguments``; at launch time start what :func:`launch_plan` decides for ``specs(values)``."""

    def actions(context, *args, **kwargs):
        values = {a.name: LaunchConfiguration(a.name).perform(context) for a in arguments}
        started, viewer_of, frame = specs(values)
        plan = launch_plan(started, values.get("rviz", "false"), viewer_of, frame)
        return [*(LogInfo(msg=m) for m in plan.messages), *(node_action(s) for s in plan.specs)]

    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description,
                                      **({"choices": list(a.choices)} if a.choices else {}))
                for a in arguments]
    return LaunchDescription([*declared, OpaqueFunction(function=actions)])
