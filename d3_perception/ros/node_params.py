"""The node's parameters as ROS parameters: declaration with descriptors (description, range, read-only), the
per-camera ``<camera>.<name>`` parameters, and runtime updates (validated on set, applied after). A mixin of
:class:`~d3_perception.ros.node.D3PerceptionNode`; the table and the rules are in :mod:`d3_perception.ros.params`.
"""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult

from d3_perception.ros.params import (
    PARAMETERS,
    PER_CAMERA,
    SPECS,
    CameraOverrides,
    NodeConfig,
    config_keeping_good_values,
)

__all__ = ["NodeParameters"]


class NodeParameters:
    """Expects ``self._cfg``, ``self._overrides``, ``self._cameras`` and ``self._pipeline`` set by the node."""

    def _declare(self, spec, name: str | None = None, default=None):
        """Declare ``spec`` (as ``name``) with description, range and read-only flag; returns its value."""
        desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if spec.choices:
            desc.additional_constraints = "one of: " + ", ".join(spec.choices)
        if isinstance(spec.default, float) and spec.min is not None:
            desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min),
                                                            to_value=float(spec.max), step=0.0)]
        elif isinstance(spec.default, int) and not isinstance(spec.default, bool) and spec.min is not None:
            desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
        return self.declare_parameter(name or spec.name, spec.default if default is None else default, desc).value

    def _declare_parameters(self) -> None:
        """Declare every parameter of :data:`PARAMETERS`."""
        for spec in PARAMETERS:
            self._declare(spec)

    def _declare_camera_parameters(self) -> CameraOverrides:
        """``<camera>.<name>`` for each camera and :data:`PER_CAMERA` name, defaulting to the node's value; one set
        to another value (params file, command line) is that camera's own."""
        overrides = CameraOverrides(self._cfg.cameras)
        node_values = self._cfg.as_values()
        for cam in self._cfg.cameras:
            for name in PER_CAMERA:
                value = self._declare(SPECS[name], f"{cam}.{name}", node_values[name])
                if value != node_values[name]:
                    reason = overrides.refusal(self._cfg, cam, {name: value})
                    if reason:
                        self.get_logger().error(f"invalid parameter {cam}.{name}, using the node's value: {reason}")
                    else:
                        overrides.values[cam][name] = value
        return overrides

    def _camera_configs(self) -> dict[str, NodeConfig]:
        return {cam: self._overrides.config(self._cfg, cam) for cam in self._cfg.cameras}

    def _read_config(self) -> NodeConfig:
        cfg, error = config_keeping_good_values({s.name: self.get_parameter(s.name).value for s in PARAMETERS})
        if error:  # a bad params file must not kill the node
            self.get_logger().error(f"invalid parameters, using defaults where needed: {error}")
        return cfg

    def _on_set_parameters(self, params) -> SetParametersResult:
        values = {p.name: p.value for p in params if p.name in SPECS}
        reason = self._cfg.update_refusal(values)
        for p in params:
            cam_name = self._overrides.split(p.name)
            if cam_name and not reason:
                reason = self._overrides.refusal(self._cfg.with_values(values), cam_name[0], {cam_name[1]: p.value})
        if reason and "read-only" not in reason:
            self._pipeline.bad("parameter", f"rejected: {reason}")
        return SetParametersResult(successful=not reason, reason=reason)

    def _on_parameters_set(self, params) -> None:
        values = {p.name: p.value for p in params if p.name in SPECS or self._overrides.split(p.name)}
        if values:
            for name, value in values.items():
                if self._overrides.split(name):
                    cam, param = self._overrides.split(name)
                    self._overrides.values[cam][param] = value
            self._cfg = self._cfg.with_values({k: v for k, v in values.items() if k in SPECS})
            self._cameras.set_config(self._cfg, self._camera_configs())
            self.get_logger().info("parameters updated: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
