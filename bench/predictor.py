"""Predictor benchmarks P1-P3 (ratios against named peers measured in the same run), printed as JSON.

P1  ONNX Runtime (our backend's session settings) vs torch eager, same random weights and input; network
    time (``P1_speedup_vs_torch_eager_fp32``) and full predict (``P1_end_to_end_speedup_vs_torch_eager_fp32``).
P2  our predictor (torch and ONNX Runtime backends, full pre/post-processing) vs diffusers
    ``MarigoldDepthPipeline`` at 1 step with same-size random weights and the same processing resolution.
P3  achieved GFLOP/s of the ONNX Runtime path (FLOPs from ``torch.utils.flop_counter`` + attention added
    analytically, CPU SDPA counts 0) vs the best measured large-convolution rate on this CPU (torch/oneDNN
    and ONNX Runtime/MLAS, the higher one).
OpenVINO (issue #18) fp32 / bf16 / int8 and torch bf16 get the same P1/P2 rows; INT8 is quantised with NNCF on
``--int8-calibration`` synthetic frames (speed only: random weights; quality is measured on the trained
bundled model, docs/model.md). Max abs errors vs torch fp32 are information only (random weights).

Each phase runs in its own process (clean peak RSS, no ORT/torch thread interference), phases in order
prepare -> peak -> torch -> torch_bf16 -> ort -> openvino -> openvino_int8 -> marigold. Times: median and p95 of ``--runs`` after ``--warmup``.

examples:
  .venv/bin/python bench/predictor.py                       # tiny config at 128 px
  .venv/bin/python bench/predictor.py --size full --resolution 384 --runs 3 --json bench/full.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _stats(times: list[float]) -> dict:
    arr = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(arr)), "p95_ms": float(np.percentile(arr, 95)),
            "min_ms": float(arr.min()), "runs": len(times)}


def _timeit(fn, runs: int, warmup: int) -> tuple[dict, float]:
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return _stats(times), first


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------ phases
def phase_prepare(a) -> dict:
    from d3_perception.backends.onnx_io import OnnxSpec, export_onnx, onnx_cache_path
    from d3_perception.model import build_random_checkpoint

    t = time.perf_counter()
    preset = "sd21" if a.size == "full" else "tiny"
    ckpt = build_random_checkpoint(a.work / "ckpt", preset=preset, tasks=("depth",), seed=0)
    build_s = time.perf_counter() - t
    spec = OnnxSpec(tasks=("depth",))
    onnx_path = onnx_cache_path(ckpt, spec)
    t = time.perf_counter()
    export_onnx(ckpt, onnx_path, tasks=("depth",))
    return {"checkpoint_build_s": build_s, "onnx_export_s": time.perf_counter() - t, "onnx": str(onnx_path),
            "peak_rss_gib": _rss_gib()}


def phase_peak(a) -> dict:
    """Best large-convolution rate: 3x3, 512->512 channels on 64x64 (torch/oneDNN and ORT/MLAS)."""
    import torch

    _set_threads(a.threads)
    conv = torch.nn.Conv2d(512, 512, 3, padding=1).eval()
    x = torch.randn(1, 512, 64, 64)
    flops = 2 * 512 * 512 * 9 * 64 * 64
    with torch.inference_mode():
        st, _ = _timeit(lambda: conv(x), 7, 2)
    torch_rate = flops / (st["median_ms"] / 1e3) / 1e9
    path = a.work / "conv.onnx"
    torch.onnx.export(conv, (x,), str(path), input_names=["x"], dynamo=False, opset_version=17)
    from d3_perception.backends.onnxruntime_backend import make_session

    sess = make_session(path, num_threads=a.threads)
    xn = x.numpy()
    st2, _ = _timeit(lambda: sess.run(None, {"x": xn}), 7, 2)
    ort_rate = flops / (st2["median_ms"] / 1e3) / 1e9
    return {"conv_gflop": flops / 1e9, "torch_conv_gflops_per_s": torch_rate, "ort_conv_gflops_per_s": ort_rate,
            "peak_gflops_per_s": max(torch_rate, ort_rate)}


def _attention_flops(model, x) -> float:
    """4*N*M*C per attention call (QK^T and AV), N query tokens, M key tokens, C = heads*head_dim."""
    import torch
    from diffusers.models.attention_processor import Attention

    total = [0.0]

    def hook(mod, args, kwargs, out):
        hs = args[0] if args else kwargs["hidden_states"]
        ehs = kwargs.get("encoder_hidden_states")
        if hs.dim() == 4:
            b, _, h, w = hs.shape
            n = h * w
        else:
            b, n = hs.shape[:2]
        m = ehs.shape[1] if ehs is not None else n
        total[0] += 4.0 * b * n * m * mod.to_q.out_features

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules() if isinstance(m, Attention)]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def phase_torch(a) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from d3_perception.backends import create_backend

    _set_threads(a.threads)
    backend = create_backend("torch", a.work / "ckpt", device="cpu", processing_resolution=a.resolution)
    model = backend.model
    r = a.resolution
    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, r, r), dtype=np.float32) * 2 - 1)
    img = (np.random.default_rng(1).random((r, r, 3)) * 255).astype(np.uint8)
    with torch.inference_mode():
        net, first = _timeit(lambda: model(x), a.runs, a.warmup)
        z = model.encode(x)
        emb = model.prompt_embeds[:1]
        tau = model.timestep.expand(1)
        enc, _ = _timeit(lambda: model.encode(x), a.runs, 0)
        unet, _ = _timeit(lambda: model.unet(z, tau, encoder_hidden_states=emb), a.runs, 0)
        y = model.unet(z, tau, encoder_hidden_states=emb).sample
        dec, _ = _timeit(lambda: model.decode(y), a.runs, 0)
        ref = model(x)["depth"].numpy()
    np.save(a.work / "torch_out.npy", ref)
    np.save(a.work / "input.npy", x.numpy())
    full, _ = _timeit(lambda: backend.predict(img), a.runs, a.warmup)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    counts = counter.get_flop_counts().get("Global", {})
    counted = float(sum(counts.values()))
    sdpa_counted = float(sum(v for k, v in counts.items() if "scaled_dot_product" in str(k)))
    attn = _attention_flops(model, x)
    params = sum(p.numel() for p in model.parameters())
    return {"network": net, "first_call_s": first, "stages": {"encode": enc, "unet": unet, "decode": dec},
            "predict_end_to_end": full, "gflop": (counted - sdpa_counted + attn) / 1e9,
            "gflop_counted": counted / 1e9, "gflop_attention_analytic": attn / 1e9,
            "parameters_m": params / 1e6, "peak_rss_gib": _rss_gib()}


def phase_ort(a) -> dict:
    import onnxruntime as ort

    from d3_perception.backends import create_backend

    x = np.load(a.work / "input.npy")
    ref = np.load(a.work / "torch_out.npy")
    r = a.resolution
    img = (np.random.default_rng(1).random((r, r, 3)) * 255).astype(np.uint8)
    t = time.perf_counter()
    backend = create_backend("onnxruntime", a.work / "ckpt", device="cpu", processing_resolution=r,
                             num_threads=a.threads)
    session_s = time.perf_counter() - t
    net, first = _timeit(lambda: backend.run_network(x), a.runs, a.warmup)
    out = backend.run_network(x)["depth"]
    full, _ = _timeit(lambda: backend.predict(img), a.runs, a.warmup)
    variants = {}
    if a.ort_variants:
        for name, level in (("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
                            ("extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)):
            opts = ort.SessionOptions()
            opts.graph_optimization_level = level
            opts.intra_op_num_threads = a.threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(str(backend.onnx_path), opts, providers=["CPUExecutionProvider"])
            variants[name] = _timeit(lambda s=sess: s.run(None, {"image": x}), a.runs, a.warmup)[0]
    return {"network": net, "first_call_s": first, "session_create_s": session_s, "predict_end_to_end": full,
            "parity_max_abs_error": float(np.abs(out - ref).max()), "graph_opt_variants": variants,
            "peak_rss_gib": _rss_gib()}


def phase_torch_bf16(a) -> dict:
    import torch

    from d3_perception.backends import create_backend

    _set_threads(a.threads)
    backend = create_backend("torch", a.work / "ckpt", device="cpu", precision="bf16",
                             processing_resolution=a.resolution)
    x = torch.from_numpy(np.load(a.work / "input.npy")).to(torch.bfloat16)
    ref = np.load(a.work / "torch_out.npy")
    r = a.resolution
    img = (np.random.default_rng(1).random((r, r, 3)) * 255).astype(np.uint8)
    with torch.inference_mode():
        net, first = _timeit(lambda: backend.model(x), a.runs, a.warmup)
        out = backend.model(x)["depth"].float().numpy()
    full, _ = _timeit(lambda: backend.predict(img), a.runs, a.warmup)
    return {"network": net, "first_call_s": first, "predict_end_to_end": full,
            "max_abs_error_vs_torch_fp32": float(np.abs(out - ref).max()), "peak_rss_gib": _rss_gib()}


def _openvino_row(a, precision: str) -> dict:
    """One OpenVINO precision through our backend (static shape, ``--threads`` inference threads)."""
    from d3_perception.backends import create_backend
    from d3_perception.backends.onnx_io import OnnxSpec, onnx_cache_path

    ckpt = a.work / "ckpt"
    model = onnx_cache_path(ckpt, OnnxSpec(tasks=("depth",)))
    x = np.load(a.work / "input.npy")
    ref = np.load(a.work / "torch_out.npy")
    r = a.resolution
    img = (np.random.default_rng(1).random((r, r, 3)) * 255).astype(np.uint8)
    row: dict = {}
    if precision == "int8":
        from d3_perception.openvino_export import quantize_int8

        t = time.perf_counter()
        calibration_resolution = a.int8_calibration_resolution or r
        model = quantize_int8(model, a.work / "ov" / "int8.xml", calibration_frames=a.int8_calibration,
                              calibration_resolution=calibration_resolution)
        row.update(quantize_s=time.perf_counter() - t, calibration_frames=a.int8_calibration,
                   calibration_resolution=calibration_resolution)
    t = time.perf_counter()
    backend = create_backend("openvino", ckpt, onnx_path=model, device="cpu", precision=precision,
                             processing_resolution=r, num_threads=a.threads, cache_dir=a.work / "ov")
    backend.run_network(x)  # the benchmark's square shape: compiled (and cached) here
    row["compile_s"] = time.perf_counter() - t
    net, first = _timeit(lambda b=backend: b.run_network(x), a.runs, a.warmup)
    got = backend.run_network(x)["depth"]
    full, _ = _timeit(lambda b=backend: b.predict(img), a.runs, a.warmup)
    row.update(network=net, first_call_s=first, predict_end_to_end=full,
               max_abs_error_vs_torch_fp32=float(np.abs(got - ref).max()))
    backend.close()
    return row


def phase_openvino(a) -> dict:
    """OpenVINO fp32 and bf16 (int8 runs in its own process: NNCF's statistics need the memory)."""
    import openvino

    out: dict = {"version": openvino.__version__}
    for precision in ("fp32", "bf16"):
        out[precision] = _openvino_row(a, precision)
    out["peak_rss_gib"] = _rss_gib()
    return out


def phase_openvino_int8(a) -> dict:
    """OpenVINO INT8: NNCF post-training quantisation on ``--int8-calibration`` synthetic frames, then timed."""
    if a.int8_calibration < 1:
        return {"skipped": "--int8-calibration 0"}
    try:
        import nncf  # noqa: F401
    except ImportError as err:
        return {"skipped": str(err)}
    return {**_openvino_row(a, "int8"), "peak_rss_gib": _rss_gib()}


def phase_marigold(a) -> dict:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel
    from PIL import Image

    from d3_perception.model import ModelConfig

    _set_threads(a.threads)
    cfg = ModelConfig.preset("sd21" if a.size == "full" else "tiny")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**cfg.unet, "in_channels": 8})  # Marigold concatenates image + noise latents
    vae = AutoencoderKL(**cfg.vae)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type="v_prediction",
                          timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)
    pipe = MarigoldDepthPipeline(unet=unet, vae=vae, scheduler=sched, text_encoder=None, tokenizer=None,
                                 prediction_type="depth", default_denoising_steps=1,
                                 default_processing_resolution=a.resolution).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    s, d = cfg.prompt_embedding_shape
    pipe.empty_text_embedding = torch.randn(1, s, d)  # no text encoder: preset, as our stored embedding
    r = a.resolution
    img = Image.fromarray((np.random.default_rng(1).random((r, r, 3)) * 255).astype(np.uint8))
    gen = torch.Generator().manual_seed(0)

    def run():
        pipe(img, num_inference_steps=1, ensemble_size=1, processing_resolution=r, output_type="np", generator=gen)

    full, first = _timeit(run, a.runs, a.warmup)
    return {"predict_end_to_end": full, "first_call_s": first, "peak_rss_gib": _rss_gib()}


PHASES = {"prepare": phase_prepare, "peak": phase_peak, "torch": phase_torch, "torch_bf16": phase_torch_bf16,
          "ort": phase_ort, "openvino": phase_openvino, "openvino_int8": phase_openvino_int8,
          "marigold": phase_marigold}
PHASE_ORDER = ("prepare", "peak", "torch", "torch_bf16", "ort", "openvino", "openvino_int8", "marigold")


def _end_to_end_speedups(torch_row: dict, rows: dict) -> dict:
    """torch eager's full predict time (pre/post-processing included) over each row's."""
    return {k: torch_row["predict_end_to_end"]["median_ms"] / v["predict_end_to_end"]["median_ms"]
            for k, v in rows.items() if "predict_end_to_end" in v}


def _run_phase(name: str, a) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--work", str(a.work), "--size", a.size,
           "--resolution", str(a.resolution), "--runs", str(a.runs), "--warmup", str(a.warmup),
           "--threads", str(a.threads), "--int8-calibration", str(a.int8_calibration),
           "--int8-calibration-resolution", str(a.int8_calibration_resolution), "--phases", a.phases] + (
               ["--ort-variants"] if a.ort_variants else [])
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["phase_wall_s"] = time.perf_counter() - t
    print(f"[bench] {name} done in {out['phase_wall_s']:.1f} s", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="D3 predictor benchmarks P1-P3", epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "full"), default="tiny", help="tiny config or full SD2.1 size")
    p.add_argument("--resolution", type=int, default=None, help="square input side (default 128 tiny, 384 full)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 10 tiny, 3 full)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch and ORT intra-op threads (default 2)")
    p.add_argument("--ort-variants", action="store_true", help="also time ORT graph optimisation levels")
    p.add_argument("--int8-calibration", type=int, default=8,
                   help="synthetic calibration frames for the OpenVINO INT8 row (default 8; speed only; 0 = no "
                        "INT8 row)")
    p.add_argument("--int8-calibration-resolution", type=int, default=0,
                   help="long side of the INT8 calibration frames (default 0 = --resolution). NNCF's statistics "
                        "at the SD2.1 checkpoint's own 768 px took > 20 GiB and were killed on a 23 GiB machine")
    p.add_argument("--phases", default=",".join(PHASE_ORDER),
                   help=f"comma-separated subset of {','.join(PHASE_ORDER)} (prepare and torch are always run: "
                        "every ratio is against torch eager in the same run)")
    p.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    p.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=sorted(PHASES), default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.resolution = a.resolution or (384 if a.size == "full" else 128)
    a.runs = a.runs or (3 if a.size == "full" else 10)
    if a.phase is not None:
        print(json.dumps(PHASES[a.phase](a)))
        return 0
    import onnxruntime
    import torch

    with tempfile.TemporaryDirectory(prefix="d3_bench_") as work:
        a.work = Path(work)
        wanted = {"prepare", "torch", *a.phases.split(",")}
        bad = wanted - set(PHASE_ORDER)
        if bad:
            p.error(f"--phases must name phases of {PHASE_ORDER}; got {sorted(bad)}")
        res = {name: _run_phase(name, a) for name in PHASE_ORDER if name in wanted}
    if "openvino_int8" in res:  # reported beside the other OpenVINO rows
        res.setdefault("openvino", {})["int8"] = res.pop("openvino_int8")
    if wanted != set(PHASE_ORDER):  # a partial run: the speed-ups against torch eager only
        t = res["torch"]
        rows = {**({"torch_bf16": res["torch_bf16"]} if "torch_bf16" in res else {}),
                **({"onnxruntime_fp32": res["ort"]} if "ort" in res else {}),
                **{f"openvino_{k}": v for k, v in res.get("openvino", {}).items() if isinstance(v, dict)
                   and "network" in v}}
        m = res.get("marigold")
        summary = {"size": a.size, "resolution": a.resolution, "threads": a.threads, "runs": a.runs,
                   "phases_run": list(res), "torch_network_median_ms": t["network"]["median_ms"],
                   "P1_speedup_vs_torch_eager_fp32": {k: t["network"]["median_ms"] / v["network"]["median_ms"]
                                                      for k, v in rows.items()},
                   "P1_end_to_end_speedup_vs_torch_eager_fp32": _end_to_end_speedups(t, rows),
                   "P2_ours_over_marigold": {k: v["predict_end_to_end"]["median_ms"]
                                             / m["predict_end_to_end"]["median_ms"] for k, v in rows.items()}
                   if m else None,
                   "load_average_1_5_15_min_at_end": list(os.getloadavg()), "phases": res}
        text = json.dumps(summary, indent=2)
        print(text)
        if a.json:
            a.json.write_text(text + "\n")
        return 0
    t, o, m, pk = res["torch"], res["ort"], res["marigold"], res["peak"]
    ort_gflops = t["gflop"] / (o["network"]["median_ms"] / 1e3)
    cpu_rows = {"torch_bf16": res["torch_bf16"], "onnxruntime_fp32": o,
                **{f"openvino_{k}": v for k, v in res["openvino"].items() if isinstance(v, dict) and "network" in v}}
    speedups = {k: t["network"]["median_ms"] / v["network"]["median_ms"] for k, v in cpu_rows.items()}
    fastest = max(speedups, key=speedups.get)
    summary = {
        "machine": f"{os.cpu_count()}-core CPU, no GPU (shared with other jobs: expect noise)",
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "openvino": res["openvino"]["version"]},
        "size": a.size, "resolution": a.resolution, "threads": a.threads, "runs": a.runs,
        "P1_ort_speedup_vs_torch_eager": t["network"]["median_ms"] / o["network"]["median_ms"],
        "P1_parity_max_abs_error": o["parity_max_abs_error"],
        "P1_speedup_vs_torch_eager_fp32": speedups,
        "P1_end_to_end_speedup_vs_torch_eager_fp32": _end_to_end_speedups(t, cpu_rows),
        "P1_fastest_cpu_backend": {"name": fastest, "speedup": speedups[fastest]},
        "P1_max_abs_error_vs_torch_fp32_random_weights": {
            k: v.get("max_abs_error_vs_torch_fp32", v.get("parity_max_abs_error")) for k, v in cpu_rows.items()},
        "P2_ours_torch_over_marigold": t["predict_end_to_end"]["median_ms"] / m["predict_end_to_end"]["median_ms"],
        "P2_ours_ort_over_marigold": o["predict_end_to_end"]["median_ms"] / m["predict_end_to_end"]["median_ms"],
        "P2_ours_over_marigold": {k: v["predict_end_to_end"]["median_ms"] / m["predict_end_to_end"]["median_ms"]
                                  for k, v in cpu_rows.items()},
        "P3_ort_gflops_per_s": ort_gflops,
        "P3_torch_gflops_per_s": t["gflop"] / (t["network"]["median_ms"] / 1e3),
        "P3_peak_conv_gflops_per_s": pk["peak_gflops_per_s"],
        "P3_ort_fraction_of_peak": ort_gflops / pk["peak_gflops_per_s"],
        "peak_rss_gib": {k: res[k]["peak_rss_gib"] for k in ("torch", "torch_bf16", "ort", "openvino", "marigold")},
        "load_average_1_5_15_min_at_end": list(os.getloadavg()),
        "phases": res,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
