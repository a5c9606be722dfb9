"""ONNX export of a checkpoint, its metadata, file hashing and the ONNX cache next to a checkpoint.

The exported graph has one input ``image`` ``[N,3,H,W]`` float32 in the checkpoint's ``input_range`` (H, W
multiples of 64) and one output per task: ``depth`` ``[N,1,H,W]`` in [0,1], ``normals`` ``[N,3,H,W]`` unit
(for a ``squash`` checkpoint: each task's raw decoded maps ``[N,3,H,W]``, see ``model.processing``).
τ and the prompt embeddings are constants inside the graph; the batch dimension is dynamic (the example
has batch 2 because torch.export specialises size-1 dimensions), H and W are fixed or dynamic.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from d3_perception.model.config import PAD_MULTIPLE, ModelConfig

__all__ = [
    "EXPORTERS",
    "INPUT_NAME",
    "OnnxSpec",
    "default_cache_dir",
    "export_onnx",
    "file_sha256",
    "onnx_cache_path",
    "read_onnx_metadata",
]

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
EXPORTERS = ("dynamo", "legacy")
DEFAULT_OPSET = 18
MAX_BATCH = 64
_EXTERNAL_DATA_BYTES = 1_500_000_000  # protobuf's hard limit is 2 GiB; stay well below it


@dataclass(frozen=True)
class OnnxSpec:
    """What an exported file holds. ``hw=None`` means dynamic height and width."""

    tasks: tuple[str, ...]
    hw: tuple[int, int] | None = None
    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"

    def __post_init__(self) -> None:
        if self.hw is not None:
            h, w = self.hw
            if min(h, w) < PAD_MULTIPLE or h % PAD_MULTIPLE or w % PAD_MULTIPLE:
                raise ValueError(f"`hw` must be multiples of {PAD_MULTIPLE}; got {h}x{w}")
        if self.opset < 17:
            raise ValueError(f"`opset` must be >= 17; got {self.opset}")
        if self.exporter not in EXPORTERS:
            raise ValueError(f"`exporter` must be one of {EXPORTERS}; got {self.exporter!r}")

    @property
    def shape_tag(self) -> str:
        return "dynHW" if self.hw is None else f"{self.hw[0]}x{self.hw[1]}"


def file_sha256(path: str | os.PathLike, length: int = 64) -> str:
    """SHA-256 of an ONNX file together with its external-data files (if any), hex."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] + sorted(p for p in path.parent.glob(path.name + ".data*") if p.is_file())
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]


def default_cache_dir(checkpoint: str | os.PathLike) -> Path:
    """``<checkpoint>/.cache`` when writable, else ``$XDG_CACHE_HOME/d3_perception`` (never a temp dir)."""
    ckpt = Path(checkpoint)
    local = ckpt / ".cache"
    try:
        local.mkdir(exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=local, delete=True)
        probe.close()
        return local
    except OSError:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "d3_perception"
        base.mkdir(parents=True, exist_ok=True)
        logger.info("checkpoint directory %s is read-only; caching derived files in %s", ckpt, base)
        return base


def onnx_cache_path(checkpoint: str | os.PathLike, spec: OnnxSpec, cache_dir: str | os.PathLike | None = None
                    ) -> Path:
    """Cache location keyed by checkpoint hash + tasks + shape + opset + exporter."""
    from d3_perception.model.config import checkpoint_hash

    base = Path(cache_dir) if cache_dir is not None else default_cache_dir(checkpoint)
    name = f"d3-{checkpoint_hash(checkpoint)}-{'+'.join(spec.tasks)}-{spec.shape_tag}-op{spec.opset}-{spec.exporter}"
    return base / "onnx" / f"{name}.onnx"


class _ExportWrapper:
    """Builds the nn.Module that maps image -> per-task outputs in a fixed order (created lazily: torch)."""

    @staticmethod
    def make(predictor, tasks: tuple[str, ...]):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.predictor = predictor

            def forward(self, image: torch.Tensor):  # image: [N,3,H,W]
                out = self.predictor(image, tasks)
                return tuple(out[t] for t in tasks)  # depth [N,1,H,W], normals [N,3,H,W]

        return Wrapper().eval()


def export_onnx(checkpoint: str | os.PathLike, out_path: str | os.PathLike, *, tasks: Sequence[str] | None = None,
                hw: tuple[int, int] | None = None, opset: int = DEFAULT_OPSET, exporter: str = "dynamo",
                predictor=None) -> Path:
    """Export a checkpoint to ONNX at ``out_path`` (written atomically, with ``.data`` beside it if > 1.5 GB).

    hw: fixed (H, W) network input, multiples of 64; None = dynamic H and W. tasks: None = all.
    predictor: an already loaded fp32 CPU :class:`D3Predictor` of this checkpoint (saves a reload).
    Metadata stored in the file: ``d3_config`` (config.json), ``d3_checkpoint_hash``, ``d3_tasks``, ``d3_hw``,
    ``d3_resize_policy``.
    """
    import torch

    from d3_perception.model.checkpoint import checkpoint_hash, load_pretrained

    if predictor is None:
        predictor = load_pretrained(checkpoint, tasks=tasks)
    task_names = tuple(predictor.config.tasks[i] for i in predictor.task_indices(tasks))
    spec = OnnxSpec(tasks=task_names, hw=tuple(hw) if hw is not None else None, opset=opset, exporter=exporter)
    predictor = predictor.float().cpu().eval()
    wrapper = _ExportWrapper.make(predictor, task_names)
    ex_h, ex_w = spec.hw if spec.hw is not None else (2 * PAD_MULTIPLE, 2 * PAD_MULTIPLE)
    example = torch.zeros(2, 3, ex_h, ex_w)  # batch 2: a batch-1 example would specialise the batch to 1
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n_bytes = sum(p.numel() * 4 for p in predictor.parameters())
    external = n_bytes > _EXTERNAL_DATA_BYTES
    tmp_dir = Path(tempfile.mkdtemp(prefix=".export-", dir=out_path.parent))
    tmp_file = tmp_dir / out_path.name
    try:
        metadata = {
            "d3_config": json.dumps(predictor.config.replace(tasks=task_names, prompts={
                t: p for t, p in predictor.config.prompts.items() if t in task_names}).to_dict()),
            "d3_checkpoint_hash": checkpoint_hash(checkpoint) if checkpoint is not None else "",
            "d3_tasks": ",".join(task_names),
            "d3_hw": spec.shape_tag,
            "d3_exporter": exporter,
            "d3_resize_policy": predictor.config.resize_policy,  # also inside d3_config; here for other readers
        }
        with torch.inference_mode(False), torch.no_grad(), _quiet_stdout():
            if exporter == "dynamo":
                from torch.export import Dim

                dims = {0: Dim("batch", min=1, max=MAX_BATCH)}
                if spec.hw is None:
                    dims.update({2: PAD_MULTIPLE * Dim("h64", min=1, max=64),
                                 3: PAD_MULTIPLE * Dim("w64", min=1, max=64)})
                program = torch.onnx.export(wrapper, (example,), input_names=[INPUT_NAME],
                                            output_names=list(task_names), opset_version=opset, dynamo=True,
                                            dynamic_shapes={"image": dims})
                program.model.metadata_props.update(metadata)
                program.save(str(tmp_file), external_data=external)
            else:
                import onnx

                axes = {0: "batch"} if spec.hw is not None else {0: "batch", 2: "height", 3: "width"}
                buf = io.BytesIO()
                torch.onnx.export(wrapper, (example,), buf, input_names=[INPUT_NAME],
                                  output_names=list(task_names), opset_version=min(opset, 17), dynamo=False,
                                  dynamic_axes={INPUT_NAME: axes, **{t: {0: "batch"} for t in task_names}})
                model_proto = onnx.load_from_string(buf.getvalue())
                _set_metadata(model_proto, metadata)
                onnx.save_model(model_proto, str(tmp_file), save_as_external_data=external,
                                all_tensors_to_one_file=True, location=out_path.name + ".data")
        data = tmp_dir / (out_path.name + ".data")
        if data.exists():
            os.replace(data, out_path.parent / data.name)
        os.replace(tmp_file, out_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info("exported %s (%s, tasks %s, opset %d, %s) to %s", predictor.config.model_id, spec.shape_tag,
                task_names, opset, exporter, out_path)
    return out_path


_NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch._export", "torch.export")


@contextlib.contextmanager
def _quiet_stdout():
    """The dynamo exporter prints progress to stdout (which would corrupt JSON printed by our tools) and
    logs hundreds of INFO lines per export; keep both out of the user's console."""
    saved = io.StringIO()
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(saved), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    for line in saved.getvalue().splitlines():
        logger.debug("%s", line)


def _set_metadata(model_proto, entries: dict[str, str]) -> None:
    existing = {p.key: p for p in model_proto.metadata_props}
    for key, value in entries.items():
        prop = existing.get(key) or model_proto.metadata_props.add()
        prop.key, prop.value = key, value


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (external data is not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`onnx_path` must be an existing file; got {str(path)!r}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - onnx raises DecodeError and others
        raise ValueError(f"`onnx_path` must be a valid ONNX file; got {path} ({err})") from None
    return {p.key: p.value for p in proto.metadata_props}


def config_from_onnx(path: str | os.PathLike) -> ModelConfig:
    meta = read_onnx_metadata(path)
    if "d3_config" not in meta:
        raise ValueError(f"`onnx_path` must be exported by d3-export (it carries `d3_config` metadata); got {path}")
    return ModelConfig.from_dict(json.loads(meta["d3_config"]))
