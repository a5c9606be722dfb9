"""Concrete phases on the shared trainer: tiny VAE and tiny teacher pretraining, and the D³ phases
(stage1 = L_agg only; stage2 / task_only = task losses [+ λ·L_agg]; joint = L_agg + task losses)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from d3_training.adapters import aggregation_loss
from d3_training.data import build_mixed
from d3_training.experts import Experts, stratified_timesteps
from d3_training.losses import depth_loss, normals_loss
from d3_training.model import D3Student, FrozenVAE, init_task_prompts, student_from_teacher
from d3_training.trainer import PhaseTrainer, TrainingError

logger = logging.getLogger(__name__)

PHASE_AGG_DEFAULT = {"stage1": 1.0, "joint": 1.0, "stage2": 0.0, "task_only": 0.0}


def teacher_scheduler() -> DDPMScheduler:
    """SD2.1's noise schedule (scaled_linear 0.00085..0.012, 1000 steps, v-prediction)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="v_prediction", clip_sample=False)


def model_config(cfg):
    from d3_perception.model.config import ModelConfig

    return ModelConfig.preset(cfg.model.preset, tasks=tuple(cfg.model.tasks))


# ============================================================================ tiny VAE
class VAEPhase(PhaseTrainer):
    """AutoencoderKL on synthetic images: each sample reconstructs RGB, depth (3-channel, [-1,1]) or normals
    (p = 1/3 each), L1 + MSE, so the frozen decoder can later express depth and normal maps."""

    name = "vae"

    def data(self):
        d = self.cfg.data
        return build_mixed(d.labeled, d.resolution, self.cfg.run.seed, d.hflip, d.num_workers)

    def build(self) -> None:
        torch.manual_seed(self.cfg.run.seed)
        self.module = AutoencoderKL(**model_config(self.cfg).vae)

    def compute_loss(self, batch, gen):
        from d3_training.losses import normalize_depth

        x = batch["rgb"]
        d01 = normalize_depth(batch["depth_m"], batch["valid_depth"])  # [N,H,W]
        depth_img = (d01 * 2 - 1)[:, None].expand(-1, 3, -1, -1)
        choice = torch.randint(0, 3, (x.shape[0],), generator=gen).to(x.device)
        has_d, has_n = batch["valid_depth"].any((1, 2)), batch["valid_normals"].any((1, 2))
        choice = torch.where((choice == 1) & ~has_d, 0, choice)
        choice = torch.where((choice == 2) & ~has_n, 0, choice)
        sel = choice[:, None, None, None]
        target = torch.where(sel == 0, x, torch.where(sel == 1, depth_img, batch["normals"]))
        recon = self.module(target).sample
        l1, mse = (recon - target).abs().mean(), (recon - target).square().mean()
        return l1 + mse, {"l1": l1.item(), "mse": mse.item()}

    def preview(self, batch):
        vae = self.acc.unwrap_model(self.module)
        recon = vae(batch["rgb"][:1]).sample[0]
        return {"rgb_recon": torch.cat([batch["rgb"][0], recon], -1) / 2 + 0.5}

    def save_final(self) -> None:
        vae = self.acc.unwrap_model(self.module).eval()
        stream = build_mixed(self.cfg.data.labeled, self.cfg.data.resolution, self.cfg.run.seed + 99)
        with torch.no_grad():
            lat = torch.cat([vae.encode(stream.next_batch(16)["rgb"].to(self.acc.device)).latent_dist.mean
                             for _ in range(4)])
        scale = 1.0 / float(lat.std())  # so that the teacher sees unit-variance latents (as SD's 0.18215)
        vae.register_to_config(scaling_factor=scale)
        vae.save_pretrained(str(self.final_dir), safe_serialization=True)
        logger.info("vae: latent std %.3f -> scaling_factor %.4f", 1 / scale, scale)


# ============================================================================ tiny teacher
class TeacherModule(nn.Module):
    def __init__(self, unet: UNet2DConditionModel, context: torch.Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.context = nn.Parameter(context)  # learned constant conditioning [1,S,D] (no text encoder)

    def forward(self, zt, t):
        return self.unet(zt, t, encoder_hidden_states=self.context.expand(zt.shape[0], -1, -1)).sample


class TeacherPhase(PhaseTrainer):
    """Tiny diffusion teacher: DDPM with v-prediction on latents of synthetic RGB images."""

    name = "teacher"

    def __init__(self, *args, vae_dir: Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.vae_dir = vae_dir

    def data(self):
        d = self.cfg.data
        return build_mixed(d.labeled + d.unlabeled, d.resolution, self.cfg.run.seed, d.hflip, d.num_workers)

    def build(self) -> None:
        torch.manual_seed(self.cfg.run.seed)
        mc = model_config(self.cfg)
        vae = AutoencoderKL.from_pretrained(str(self.vae_dir))
        self.vae = FrozenVAE(vae, vae.config.scaling_factor).to(self.acc.device)
        s, d = mc.prompt_embedding_shape
        self.module = TeacherModule(UNet2DConditionModel(**mc.unet), torch.randn(1, s, d) * 0.1)
        self.sched = teacher_scheduler()

    def compute_loss(self, batch, gen):
        z0 = self.vae.encode(batch["rgb"])
        noise = torch.randn(z0.shape, generator=gen).to(z0)
        t = torch.randint(0, 1000, (z0.shape[0],), generator=gen).to(z0.device)
        zt = self.sched.add_noise(z0, noise, t)
        v = self.sched.get_velocity(z0, noise, t)
        loss = F.mse_loss(self.module(zt, t).float(), v.float())
        return loss, {}

    def save_final(self) -> None:
        m = self.acc.unwrap_model(self.module)
        m.unet.save_pretrained(str(self.final_dir / "unet"), safe_serialization=True)
        save_file({"context": m.context.detach().cpu().float().contiguous()}, str(self.final_dir / "context.safetensors"))


def load_teacher(cfg, teacher_dir: Path | None, vae_dir: Path | None):
    """-> (teacher UNet, VAE, latent_scale, experts' context [1,S,D], task prompts [T,S,D] | None).

    `teacher_dir` is either this pipeline's teacher output (unet/ + context.safetensors) or a diffusers
    SD2.1 directory (unet/, vae/, text_encoder/, tokenizer/): its prompts are encoded once with CLIP."""
    if teacher_dir is None or not (Path(teacher_dir) / "unet").is_dir():
        raise TrainingError(f"`model.teacher_path` must be a directory with unet/; got {str(teacher_dir)!r}")
    teacher_dir = Path(teacher_dir)
    unet = UNet2DConditionModel.from_pretrained(str(teacher_dir / "unet"))
    vdir = vae_dir if vae_dir is not None else teacher_dir / "vae"
    if not Path(vdir).is_dir():
        raise TrainingError(f"VAE directory must exist (vae/ next to the teacher, or a `vae` phase); got {str(vdir)!r}")
    vae = AutoencoderKL.from_pretrained(str(vdir))
    if (teacher_dir / "context.safetensors").is_file():
        context = load_file(str(teacher_dir / "context.safetensors"))["context"]
        return unet, vae, float(vae.config.scaling_factor), context, None
    context, prompts = encode_prompts(teacher_dir, cfg.model.tasks)
    return unet, vae, float(vae.config.scaling_factor), context, prompts


def encode_prompts(sd_dir: Path, tasks) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty prompt (experts' context) and the official task prompts, encoded once by the CLIP text encoder."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from d3_perception.model.config import OFFICIAL_PROMPTS

    tok = CLIPTokenizer.from_pretrained(str(sd_dir / "tokenizer"))
    enc = CLIPTextModel.from_pretrained(str(sd_dir / "text_encoder")).eval()
    texts = [""] + [OFFICIAL_PROMPTS[t] for t in tasks]
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        emb = enc(ids.input_ids)[0]  # [1+T,77,1024]
    return emb[:1], emb[1:]


# ============================================================================ D³ phases
class D3Phase(PhaseTrainer):
    """stage1 / stage2 / joint / task_only on one class; they differ only in loss weights and data."""

    def __init__(self, *args, teacher_dir: Path | None, vae_dir: Path | None, init_dir: Path | None = None,
                 one_pass: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.teacher_dir, self.vae_dir, self.init_dir, self.one_pass = teacher_dir, vae_dir, init_dir, one_pass
        default = PHASE_AGG_DEFAULT[self.name]
        self.agg_weight = default if self.pcfg.agg_weight is None else self.pcfg.agg_weight
        self.use_tasks = self.name != "stage1"

    def data(self):
        d = self.cfg.data
        specs = d.labeled + (d.unlabeled if self.name == "stage1" else ())
        return build_mixed(specs, d.resolution, self.cfg.run.seed + 1, d.hflip, d.num_workers)

    def build(self) -> None:
        cfg, dev = self.cfg, self.acc.device
        torch.manual_seed(cfg.run.seed)
        unet, vae, scale, context, prompts = load_teacher(cfg, self.teacher_dir, self.vae_dir)
        # frozen modules run in the compute precision (halves their memory); the student keeps fp32 masters
        frozen_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.run.mixed_precision, torch.float32)
        if cfg.model.gradient_checkpointing:
            vae.enable_gradient_checkpointing()  # task-loss gradients flow through the decoder
        self.vae = FrozenVAE(vae, scale).to(dev)
        if frozen_dtype != torch.float32:
            self.vae.to(frozen_dtype)
        self.latent_scale = scale
        if prompts is None:
            prompts = init_task_prompts(context, tuple(cfg.model.tasks), cfg.run.seed)
        self.module = D3Student(
            student_from_teacher(unet), tuple(cfg.model.tasks), context, prompts, cfg.model.tau_init,
            with_adapters=self.agg_weight > 0, drop_last=cfg.model.tap_drop_last,
            adapter_depth=cfg.model.adapter_depth, adapter_cond_dim=cfg.model.adapter_cond_dim,
            prompts_trainable=cfg.model.prompt_embeds_trainable)
        if self.init_dir is not None:
            self._load_init(self.init_dir)
        if cfg.model.gradient_checkpointing:
            self.module.unet.enable_gradient_checkpointing()
        self.experts = None
        if self.agg_weight > 0:
            unet = unet.to(dev) if frozen_dtype == torch.float32 else unet.to(dev, frozen_dtype)
            self.experts = Experts(unet, teacher_scheduler(), cfg.model.tap_drop_last)

    def _load_init(self, init_dir: Path) -> None:
        """Start from a previous stage's student (UNet, τ, prompts; adapters when both sides have them)."""
        state = load_file(str(init_dir / "student.safetensors"))
        own = self.module.state_dict()
        keep = {k: v for k, v in state.items() if k in own and (not k.startswith("adapters.") or self.module.adapters is not None)}
        missing = [k for k in own if k not in keep and not k.startswith("adapters.")]
        if missing:
            raise TrainingError(f"`{init_dir}` must hold the full student; missing {missing[:5]}")
        self.module.load_state_dict(keep, strict=False)
        logger.info("%s: initialised from %s (tau %.3f)", self.name, init_dir, float(self.module.tau.detach()))

    def compute_loss(self, batch, gen):
        return d3_loss(self, batch, gen)

    def preview(self, batch):
        m = self.acc.unwrap_model(self.module)
        z = self.vae.encode(batch["rgb"][:1])
        out = {}
        for i, task in enumerate(m.tasks):
            y = self.vae.decode(m(z, torch.tensor([i], device=z.device))[0])[0].clamp(-1, 1) / 2 + 0.5
            img = y.mean(0, keepdim=True).expand(3, -1, -1) if task == "depth" else y
            out[f"pred_{task}"] = torch.cat([batch["rgb"][0] / 2 + 0.5, img], -1)
        return out

    def save_final(self) -> None:
        m = self.acc.unwrap_model(self.module)
        self.final_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().float().contiguous() for k, v in m.state_dict().items()}
        save_file(state, str(self.final_dir / "student.safetensors"))
        (self.final_dir / "student.json").write_text(json.dumps(
            {"tau": float(m.tau.detach()), "tasks": list(m.tasks), "latent_scale": self.latent_scale,
             "step": self.state.step, "stopped_early": self.state.stopped_early}, indent=1))


def rows_for_tasks(batch: dict, tasks: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which (image, task) rows carry labels -> image index [R], task index [R] (task-major)."""
    img, tsk = [], []
    for t, task in enumerate(tasks):
        valid = batch["valid_depth"] if task == "depth" else batch["valid_normals"]
        idx = torch.nonzero(valid.flatten(1).any(1)).flatten()
        img.append(idx)
        tsk.append(torch.full_like(idx, t))
    return torch.cat(img), torch.cat(tsk)


def d3_loss(phase: D3Phase, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """One student pass over all rows; L_agg against the experts; task losses on the decoded output."""
    w = phase.cfg.loss
    z = phase.vae.encode(batch["rgb"])  # [N,4,h,w]
    n = z.shape[0]
    if phase.use_tasks:
        img, tsk = rows_for_tasks(batch, phase.acc.unwrap_model(phase.module).tasks)
        if img.numel() == 0:
            raise TrainingError(f"{phase.name}: batches must carry depth or normal labels; got an unlabeled batch "
                                "(check `data.labeled`)")
    else:
        img, tsk = torch.arange(n, device=z.device), torch.full((n,), -1, device=z.device)
    expert_t = None
    if phase.experts is not None:
        k = phase.cfg.model.num_expert_timesteps
        t_img = stratified_timesteps(n, k, gen, device=z.device)  # [N,K]
        ctx = phase.acc.unwrap_model(phase.module).context.expand(n, -1, -1)
        expert_feats = phase.experts(z, ctx.to(z.dtype), t_img, gen)  # {name: [N*K,...]}
        expert_t = t_img[img]  # [R,K]
    y_lat, adapted = phase.module(z[img], tsk, expert_t, one_pass=phase.one_pass)
    logs, loss = {}, torch.zeros((), device=z.device)
    if adapted:
        k = expert_t.shape[1]
        gathered = {nm: f.unflatten(0, (n, k))[img].flatten(0, 1) for nm, f in expert_feats.items()}
        l_agg = aggregation_loss(adapted, gathered)
        loss = loss + phase.agg_weight * l_agg
        logs["l_agg"] = float(l_agg.detach())
    if phase.use_tasks:
        # the official code decodes and scores each of its K identical student outputs; one_pass does it once
        repeats = 1 if phase.one_pass or expert_t is None else expert_t.shape[1]
        for _ in range(repeats):
            pred = phase.vae.decode(y_lat)  # [R,3,H,W]
            task_loss, parts = task_losses(pred, batch, img, tsk, phase.acc.unwrap_model(phase.module).tasks, w)
            loss = loss + task_loss / repeats
        logs.update(parts)
    logs["tau"] = float(phase.acc.unwrap_model(phase.module).tau.detach())
    return loss, logs


def task_losses(pred, batch, img, tsk, tasks, w) -> tuple[torch.Tensor, dict[str, float]]:
    total, logs = torch.zeros((), device=pred.device), {}
    for t, task in enumerate(tasks):
        rows = torch.nonzero(tsk == t).flatten()
        if rows.numel() == 0:
            continue
        p, i = pred[rows], img[rows]
        if task == "depth":
            loss, parts = depth_loss(p, batch["depth_m"][i], batch["valid_depth"][i], w_mse=w.depth_mse,
                                     w_ssi=w.depth_ssi, w_grad=w.depth_grad)
        else:
            loss, parts = normals_loss(p, batch["normals"][i], batch["valid_normals"][i], w_mse=w.normals_mse,
                                       w_angular=w.normals_angular)
        total = total + loss
        logs[f"{task}_loss"] = float(loss.detach())
        logs.update({k: float(v.detach()) for k, v in parts.items()})
    return total, logs
