"""One SimMIM pre-training step: medda_jax vs a PyTorch peer, ViT-B/16 and Swin-B.

Both frameworks run in this one process on one device with the same encoder, the same
weights (JAX's initialisation copied into torch) and the same batch, and take the same
step: masked patch tokens replaced by a learned mask token, the encoder's final feature
map, the one-layer head (1x1 convolution to stride^2 x C + pixel shuffle), the L1 loss on
the masked pixels / (masked pixels x C), backward, gradient clipping by global norm 5.0 and
one AdamW update (weight decay 0.05 off biases, norms, position tables and tokens).
The input is the project's: one-channel radiographs (replicated to RGB by the encoder,
the single channel reconstructed), 32-pixel mask patches with ratio 0.6
(`simmim.paper.batch_masks`).

JAX: `simmim.paper.SimMIM` over `models/vit.py` / `models/swin.py`, `pretrain_loss` and
`pretrain_optimizer` in the engine's compiled chunk (`build_train_chunk`, one step per
call, state donated on accelerators); fp32 and bf16 compute (`dtype`, parameters float32).
torch: timm's `VisionTransformer` / `SwinTransformer` (the encoders SimMIM builds on)
under a SimMIM wrapper written as SimMIM's `VisionTransformerForSimMIM` /
`SwinTransformerForSimMIM` and `SimMIM.forward`; AdamW (fused where the build has it),
`clip_grad_norm_`; eager fp32, eager bf16 autocast and `torch.compile` (model and loss;
bf16 autocast on CUDA, fp32 on the CPU). channels_last is not measured: after the patch
embedding both encoders are token matmuls.

Output check first (fp32; TF32 off, JAX matmuls at "highest"): both sides from the same
weights take one step on the same batch (batch 2); the two losses, the largest gradient
difference and the largest parameter difference after the step go into the JSON.

  python benchmarks/simmim_step.py                     # GPU: ViT-B/16 and Swin-B at 224, batch 64
  python benchmarks/simmim_step.py --cpu --cpu-threads 1 --quick   # tiny ViT and Swin, 96 px
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MASK_PATCH, MASK_RATIO, CLIP, WEIGHT_DECAY, BETAS = 32, 0.6, 5.0, 0.05, (0.9, 0.999)
BASE_LR, LR_BATCH = 1e-4, 512  # SimMIM's linear scaling rule (configs/simmim.py)
NO_DECAY = ("pos_embed", "cls_token", "mask_token", "relative_position_bias_table")

# The spec's encoders (GPU) and small ones of the same structure (CPU).
GPU_MODELS = {
    "vit": dict(patch=16, width=768, depth=12, heads=12, mlp_dim=3072),  # ViT-B/16
    "swin": dict(patch=4, embed_dim=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32),
                 window=7),  # Swin-B
}
CPU_MODELS = {
    "vit": dict(patch=16, width=64, depth=2, heads=2, mlp_dim=256),
    "swin": dict(patch=4, embed_dim=32, depths=(2, 2), heads=(2, 4), window=4),
}


def parse_args():
  p = common.argument_parser(__doc__)
  p.add_argument("--backbones", default="vit,swin")
  p.add_argument("--batch", type=int, default=None, help="default 64 on GPU, 8 on CPU")
  p.add_argument("--size", type=int, default=None, help="default 224 on GPU, 96 on CPU")
  p.add_argument("--jax-dtypes", default=None, help="default fp32,bf16 on GPU, fp32 on CPU")
  p.add_argument("--torch-variants", default=None,
                 help="of eager_fp32,eager_bf16,compile (default: all on GPU; eager_fp32,"
                      "compile on CPU)")
  p.add_argument("--skip-check", action="store_true", help="no output check before timing")
  p.add_argument("--quick", action="store_true", help="fewer repeats")
  p.add_argument("--out", default=None)
  return p.parse_args()


def stride_of(backbone: str, m: dict) -> int:
  return m["patch"] if backbone == "vit" else m["patch"] * 2 ** (len(m["depths"]) - 1)


def make_batch(backbone: str, m: dict, batch: int, size: int, seed: int = 0):
  """One-channel images [B, S, S, 1] in [0, 1] and masks over the model's patch grid."""
  import numpy as np
  from medda_jax.methods.simmim import paper
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(batch, size, size, 1)).astype(np.float32)
  mask = paper.batch_masks(seed, np.arange(batch), size, MASK_PATCH, m["patch"], MASK_RATIO)
  return x, mask


# --------------------------------------------------------------------------- JAX side
def jax_model(backbone: str, m: dict, size: int, dtype):
  from medda_jax.methods.simmim import paper
  from medda_jax.models import swin, vit
  if backbone == "vit":
    enc = vit.VisionTransformer(image_size=size, patch_size=m["patch"], width=m["width"],
                                depth=m["depth"], num_heads=m["heads"], mlp_dim=m["mlp_dim"],
                                dropout=0.0, num_classes=1, dtype=dtype)
  else:
    enc = swin.SwinTransformer(image_size=size, patch_size=m["patch"], embed_dim=m["embed_dim"],
                               depths=tuple(m["depths"]), num_heads=tuple(m["heads"]),
                               window_size=m["window"], drop_path_rate=0.0, num_classes=1,
                               dtype=dtype)
  return paper.SimMIM(enc, stride=stride_of(backbone, m), channels=1)


def jax_init(model, m: dict, size: int, seed: int = 0):
  import jax
  import jax.numpy as jnp
  x = jnp.zeros((1, size, size, 1))
  g = size // m["patch"]
  return jax.jit(lambda k: model.init(k, x, jnp.zeros((1, g, g), bool)))(
      jax.random.PRNGKey(seed))["params"]


def jax_optimizer(lr: float):
  """The project's pre-training optimiser; no warm-up so that step 0 runs at `lr`
  (the warm-up + cosine schedule is evaluated on the device either way)."""
  from medda_jax.methods.simmim import paper
  return paper.pretrain_optimizer(learning_rate=lr, total_steps=100_000, warmup_steps=0,
                                  weight_decay=WEIGHT_DECAY, b1=BETAS[0], b2=BETAS[1],
                                  clip_norm=CLIP)


def jax_chunk(model, m: dict, lr: float):
  from medda_jax.engine.supervised import build_train_chunk
  from medda_jax.methods.simmim import paper
  tx = jax_optimizer(lr)
  return tx, build_train_chunk(paper.pretrain_loss(model, m["patch"]), tx, "host")


# --------------------------------------------------------------------------- torch peer
def torch_model(backbone: str, m: dict, size: int):
  """timm encoder + SimMIM's wrapper and head (SimMIM's models/simmim.py)."""
  import torch
  import torch.nn as nn
  import torch.nn.functional as F
  from timm.models.swin_transformer import SwinTransformer
  from timm.models.vision_transformer import VisionTransformer

  stride = stride_of(backbone, m)
  if backbone == "vit":
    enc = VisionTransformer(img_size=size, patch_size=m["patch"], embed_dim=m["width"],
                            depth=m["depth"], num_heads=m["heads"],
                            mlp_ratio=m["mlp_dim"] / m["width"], qkv_bias=True, num_classes=0,
                            drop_rate=0.0, drop_path_rate=0.0)
    width = m["width"]
  else:
    enc = SwinTransformer(img_size=size, patch_size=m["patch"], embed_dim=m["embed_dim"],
                          depths=tuple(m["depths"]), num_heads=tuple(m["heads"]),
                          window_size=m["window"], drop_path_rate=0.0, num_classes=0)
    width = m["embed_dim"] * 2 ** (len(m["depths"]) - 1)

  class SimMIM(nn.Module):
    def __init__(self):
      super().__init__()
      self.encoder = enc
      dim = m["width"] if backbone == "vit" else m["embed_dim"]
      self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
      nn.init.trunc_normal_(self.mask_token, std=0.02)
      self.decoder = nn.Sequential(nn.Conv2d(width, stride ** 2 * 1, 1), nn.PixelShuffle(stride))
      self.patch, self.in_chans = m["patch"], 1

    def features(self, x, mask):
      e = self.encoder
      if backbone == "vit":  # VisionTransformerForSimMIM.forward
        x = e.patch_embed(x)  # B, L, D
        w = mask.flatten(1).unsqueeze(-1).type_as(x)
        x = x * (1 - w) + self.mask_token.type_as(x) * w
        x = e.norm_pre(e.patch_drop(e._pos_embed(x)))  # class token + position embeddings
        x = e.norm(e.blocks(x))[:, 1:]
        b, length, c = x.shape
        side = int(length ** 0.5)
        return x.transpose(1, 2).reshape(b, c, side, side)
      x = e.patch_embed(x)  # SwinTransformerForSimMIM.forward; timm >= 0.9: B, H, W, C
      w = mask.unsqueeze(-1).type_as(x)
      x = x * (1 - w) + self.mask_token.type_as(x) * w
      x = e.norm(e.layers(x))
      return x.permute(0, 3, 1, 2)

    def forward(self, x, mask):  # SimMIM.forward: x [B, 1, S, S], mask [B, S/p, S/p]
      z = self.features(x.expand(-1, 3, -1, -1), mask)
      x_rec = self.decoder(z)
      pm = mask.repeat_interleave(self.patch, 1).repeat_interleave(self.patch, 2).unsqueeze(1)
      loss_recon = F.l1_loss(x, x_rec.float(), reduction="none")
      return (loss_recon * pm).sum() / (pm.sum() + 1e-5) / self.in_chans

  return SimMIM()


def torch_optimizer(model, lr: float):
  """SimMIM's AdamW parameter groups (no decay on 1-D parameters and the skip list)."""
  import torch
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (no_decay if p.ndim <= 1 or any(k in name for k in NO_DECAY) else decay).append(p)
  groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
  try:
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=True)
  except (RuntimeError, TypeError):  # a build or device without the fused kernel
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY)


def torch_step(model, opt, forward, device_type: str, bf16: bool):
  import torch
  params = [p for p in model.parameters()]

  def step(x, mask):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
      loss = forward(x, mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, CLIP)
    opt.step()
    return loss

  return step


def jax_to_torch(backbone: str, params) -> dict:
  """Flax parameters of `jax_model` -> the state dict of `torch_model` (numpy arrays)."""
  import numpy as np
  p = {k: np.asarray(v) for k, v in _flat(params).items()}
  out = {}
  lin = lambda k: p[k].T  # Dense kernel (in, out) -> Linear weight (out, in)
  conv = lambda k: p[k].transpose(3, 2, 0, 1)
  ln = lambda src, dst: out.update({f"{dst}.weight": p[f"{src}/scale"],
                                    f"{dst}.bias": p[f"{src}/bias"]})
  out["decoder.0.weight"] = conv("decoder/kernel")
  out["decoder.0.bias"] = p["decoder/bias"]
  out["mask_token"] = p["encoder/mask_token"]
  if backbone == "vit":
    out["encoder.patch_embed.proj.weight"] = conv("encoder/conv_proj/kernel")
    out["encoder.patch_embed.proj.bias"] = p["encoder/conv_proj/bias"]
    out["encoder.cls_token"] = p["encoder/class_token"]
    out["encoder.pos_embed"] = p["encoder/encoder/pos_embedding"]
    ln("encoder/encoder/ln", "encoder.norm")
    i = 0
    while f"encoder/encoder/encoder_layer_{i}/ln_1/scale" in p:
      s, d = f"encoder/encoder/encoder_layer_{i}", f"encoder.blocks.{i}"
      ln(f"{s}/ln_1", f"{d}.norm1")
      ln(f"{s}/ln_2", f"{d}.norm2")
      a = f"{s}/self_attention"
      width = p[f"{a}/query/kernel"].shape[0]
      out[f"{d}.attn.qkv.weight"] = np.concatenate(
          [p[f"{a}/{n}/kernel"].reshape(width, -1).T for n in ("query", "key", "value")])
      out[f"{d}.attn.qkv.bias"] = np.concatenate(
          [p[f"{a}/{n}/bias"].reshape(-1) for n in ("query", "key", "value")])
      out[f"{d}.attn.proj.weight"] = p[f"{a}/out/kernel"].reshape(-1, width).T
      out[f"{d}.attn.proj.bias"] = p[f"{a}/out/bias"]
      for n in ("linear_1", "linear_2"):
        t = "fc1" if n == "linear_1" else "fc2"
        out[f"{d}.mlp.{t}.weight"] = lin(f"{s}/mlp/{n}/kernel")
        out[f"{d}.mlp.{t}.bias"] = p[f"{s}/mlp/{n}/bias"]
      i += 1
    return out
  out["encoder.patch_embed.proj.weight"] = conv("encoder/patch_embed/proj/kernel")
  out["encoder.patch_embed.proj.bias"] = p["encoder/patch_embed/proj/bias"]
  ln("encoder/patch_embed/norm", "encoder.patch_embed.norm")
  ln("encoder/norm", "encoder.norm")
  for key in p:
    parts = key.split("/")
    if parts[1].startswith("layers_") and parts[2] == "downsample":
      # medda_jax (official / SimMIM layout): merging ends stage i; timm >= 0.9: starts i + 1
      d = f"encoder.layers.{int(parts[1].split('_')[1]) + 1}.downsample"
      if parts[3] == "norm":
        out[f"{d}.norm.{'weight' if parts[4] == 'scale' else 'bias'}"] = p[key]
      else:
        out[f"{d}.reduction.weight"] = lin(key)
    elif parts[1].startswith("layers_"):
      d = f"encoder.layers.{parts[1].split('_')[1]}.blocks.{parts[2].split('_')[1]}"
      rest = parts[3:]
      if rest[-1] == "relative_position_bias_table":
        out[f"{d}.attn.relative_position_bias_table"] = p[key]
      elif rest[-1] in ("scale", "bias") and rest[0] in ("norm1", "norm2"):
        out[f"{d}.{rest[0]}.{'weight' if rest[-1] == 'scale' else 'bias'}"] = p[key]
      elif rest[-1] == "kernel":
        out[f"{d}.{'.'.join(rest[:-1])}.weight"] = lin(key)
      else:
        out[f"{d}.{'.'.join(rest[:-1])}.bias"] = p[key]
  return out


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    name = f"{prefix}/{k}" if prefix else k
    out.update(_flat(v, name) if isinstance(v, dict) else {name: v})
  return out


def load_into(model, state: dict) -> None:
  import numpy as np
  import torch
  own = dict(model.named_parameters())
  missing = sorted(set(own) - set(state))
  extra = sorted(set(state) - set(own))
  if missing or extra:
    raise ValueError(f"weight mapping: torch parameters without a JAX source {missing[:5]}, "
                     f"JAX parameters without a torch target {extra[:5]}")
  with torch.no_grad():
    for name, p in own.items():
      src = np.array(state[name], np.float32, copy=True)
      if tuple(src.shape) != tuple(p.shape):
        raise ValueError(f"{name}: JAX shape {src.shape}, torch {tuple(p.shape)}")
      p.copy_(torch.from_numpy(src))


def output_check(backbone: str, m: dict, size: int, dev: str) -> dict:
  """One fp32 step of each side from the same weights on the same batch of 2 (TF32 off for
  the check only)."""
  import torch
  tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  try:
    return _output_check(backbone, m, size, dev)
  finally:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _output_check(backbone: str, m: dict, size: int, dev: str) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from medda_jax.engine.supervised import TrainState
  from medda_jax.methods.simmim import paper
  lr = 1e-3
  x_np, mask_np = make_batch(backbone, m, 2, size, seed=3)
  with jax.default_matmul_precision("highest"):
    model = jax_model(backbone, m, size, jnp.float32)
    params = jax_init(model, m, size)
    tmodel = torch_model(backbone, m, size).to(dev)
    load_into(tmodel, jax_to_torch(backbone, jax.device_get(params)))
    batch = {"image": jnp.asarray(x_np), "mask": jnp.asarray(mask_np)}
    loss_fn = paper.pretrain_loss(model, m["patch"])
    (jax_loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, {}, batch, jax.random.PRNGKey(0))
    tx, chunk = jax_chunk(model, m, lr)
    state = TrainState.create(params, tx)
    state, metrics = chunk(state, jax.tree.map(lambda a: a[None], batch))
    new_params = jax.device_get(state.params)
  opt = torch_optimizer(tmodel, lr)
  x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(dev)
  mask = torch.from_numpy(mask_np.astype(np.float32)).to(dev)
  params_t = list(tmodel.parameters())
  opt.zero_grad(set_to_none=True)
  torch_loss = tmodel(x, mask)
  torch_loss.backward()
  grads_t = {n: p.grad.detach().cpu().numpy().copy() for n, p in tmodel.named_parameters()}
  torch.nn.utils.clip_grad_norm_(params_t, CLIP)
  opt.step()
  after_t = {n: p.detach().cpu().numpy() for n, p in tmodel.named_parameters()}
  grads_j = jax_to_torch(backbone, jax.device_get(grads))
  after_j = jax_to_torch(backbone, new_params)
  gdiff = max(float(np.abs(grads_t[n] - grads_j[n]).max()) for n in grads_t)
  gscale = max(float(np.abs(grads_j[n]).max()) for n in grads_j)
  pdiff = max(float(np.abs(after_t[n] - after_j[n]).max()) for n in after_t)
  return {"batch": 2, "lr": lr, "loss_jax": float(jax_loss), "loss_torch": torch_loss.item(),
          "loss_jax_chunk": float(metrics["loss"]),
          "abs_loss_diff": abs(float(jax_loss) - torch_loss.item()),
          "max_abs_grad_diff": gdiff, "max_abs_grad": gscale,
          "max_abs_param_diff_after_step": pdiff}


# --------------------------------------------------------------------------- main
def main():
  args = parse_args()
  platform, device = common.start(args)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from medda_jax.engine.supervised import TrainState
  gpu = platform == "gpu"
  dev = "cuda" if gpu else "cpu"
  if gpu:  # fp32 matmuls in TF32 on both sides, as XLA's default precision on the GPU
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  models = GPU_MODELS if gpu else CPU_MODELS
  args.batch = args.batch or (64 if gpu else 8)
  args.size = args.size or (224 if gpu else 96)
  backbones = [b for b in args.backbones.split(",") if b]
  jax_dtypes = (args.jax_dtypes or ("fp32,bf16" if gpu else "fp32")).split(",")
  variants = (args.torch_variants or ("eager_fp32,eager_bf16,compile" if gpu
                                      else "eager_fp32,compile")).split(",")
  timing = dict(warmup=3, repeats=5, iters=5)
  if args.quick:
    timing = dict(warmup=2, repeats=3, iters=3) if gpu else dict(warmup=2, repeats=5, iters=3)
  lr = paper_lr = BASE_LR * args.batch / LR_BATCH
  shapes = {"batch": args.batch, "height": args.size, "width": args.size, "channels": 1,
            "encoder_input_channels": 3, "mask_patch": MASK_PATCH, "mask_ratio": MASK_RATIO,
            "models": {b: dict(models[b], stride=stride_of(b, models[b])) for b in backbones}}
  results, checks, ratio = {}, {}, {}
  path = args.out or common.result_path("simmim_step", platform, device)
  notes = [
      "One step = forward of the masked images, SimMIM's masked L1 loss, backward, gradient "
      "clipping by global norm 5.0 and one AdamW update (lr = 1e-4 x batch / 512, weight "
      "decay 0.05); images/s = batch / median seconds per step; the first call (compilation) "
      "is not timed. Keys are '<backbone>/<variant>'.",
      "JAX: medda_jax.methods.simmim.paper (SimMIM, pretrain_loss, pretrain_optimizer with "
      "no warm-up) in engine.supervised.build_train_chunk, host executor, one step per call, "
      "state donated on accelerators; 'bf16' = the encoder's compute dtype (parameters and "
      "optimiser float32).",
      f"torch peer: timm {_version('timm')} VisionTransformer / SwinTransformer (fused SDPA "
      "attention) under a SimMIM wrapper as SimMIM's models/simmim.py (mask token after the "
      "patch embedding, 1x1 conv + PixelShuffle, L1 on masked pixels / (mask sum x C)); "
      "AdamW with SimMIM's no-decay groups (fused=True where available), clip_grad_norm_; "
      "the JAX weights copied in. On the GPU the fp32 variants of both sides use TF32 "
      "matmuls (XLA's default precision; torch.backends allow_tf32 on).",
      "Output check (`output_check`, per backbone, before timing): batch 2, float32 (TF32 "
      "off, JAX matmul precision highest), lr 1e-3: both losses, the largest gradient "
      "difference (before clipping) and the largest parameter difference after one step.",
      "The project's input: one-channel images replicated to RGB by the encoder, the one "
      "channel reconstructed (Study.pretrain: SimMIM(channels=1)).",
  ]
  if not gpu:
    notes.append("CPU shapes scaled down from the spec's (ViT-B/16 and Swin-B at 224, batch "
                 "64): a 2-block ViT of width 64 and a 2-stage Swin of width 32, window 4, at "
                 "96 px, batch 8 (see shapes.models).")

  def save():
    common.write_json(path, benchmark="simmim_step", platform=platform, device=device,
                      shapes=shapes, results=results, ratio=ratio, notes=notes, timing=timing,
                      model_info={"output_check": checks, "lr": paper_lr,
                                  "timm": _version("timm")})

  print(f"SimMIM step on {device['name']}: batch {args.batch} at {args.size}x{args.size}, "
        f"timing {timing}", flush=True)
  for b in backbones:
    m = models[b]
    if not args.skip_check:
      try:
        checks[b] = output_check(b, m, args.size, dev)
      except Exception as e:
        checks[b] = {"error": common.error_text(e)}
      print(f"  {b} output check: {checks[b]}", flush=True)
    x_np, mask_np = make_batch(b, m, args.batch, args.size)
    host_params = None  # the initialisation (the same for every compute dtype), for torch
    # --- JAX
    for dname in jax_dtypes:
      name = f"{b}/jax jit {dname}"
      try:
        dtype = jnp.bfloat16 if dname == "bf16" else jnp.float32
        model = jax_model(b, m, args.size, dtype)
        params = jax_init(model, m, args.size)
        if host_params is None:
          # a copy before the chunk donates them (a CPU array can share its buffer)
          host_params = jax.tree.map(lambda a: np.array(a, copy=True), params)
        t0 = time.perf_counter()
        tx, chunk = jax_chunk(model, m, lr)
        state = TrainState.create(params, tx, rng=jax.random.PRNGKey(1))
        batches = jax.device_put({"image": x_np[None], "mask": mask_np[None]})
        state, _ = chunk(state, batches)  # compiles
        jax.block_until_ready(state)
        results[name] = common.time_state_step(chunk, state, batches, args.batch, timing,
                                               first_call_seconds=time.perf_counter() - t0)
        del state
      except Exception as e:
        results[name] = {"error": common.error_text(e)}
      print(f"  {name:28s} {common.images_per_s_text(results[name])}", flush=True)
      save()
    # --- torch (the JAX fp32 initialisation copied in)
    if host_params is None:
      host_params = jax.device_get(jax_init(jax_model(b, m, args.size, jnp.float32), m,
                                            args.size))
    weights = jax_to_torch(b, host_params)
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(dev)
    mask = torch.from_numpy(mask_np.astype(np.float32)).to(dev)
    for v in variants:
      bf16 = v == "eager_bf16" or (v == "compile" and gpu)
      name = f"{b}/torch {v.replace('_', ' ')}" + (" bf16" if v == "compile" and gpu else
                                                    " fp32" if v == "compile" else "")
      try:
        tmodel = torch_model(b, m, args.size)
        load_into(tmodel, weights)
        tmodel = tmodel.to(dev).train()
        opt = torch_optimizer(tmodel, lr)
        forward = torch.compile(tmodel) if v == "compile" else tmodel
        step = torch_step(tmodel, opt, forward, dev, bf16)
        t0 = time.perf_counter()
        step(x, mask)  # compiles (torch.compile)
        common.sync_fn(platform)()
        first = time.perf_counter() - t0
        t = common.time_repeats(lambda: step(x, mask), lambda _: common.sync_fn(platform)(),
                                **timing)
        results[name] = {"images_per_s": args.batch / t["seconds_per_call"],
                         "first_call_seconds": first, **t}
        tmodel = opt = forward = step = None  # free the device memory before the next
      except Exception as e:
        results[name] = {"error": common.error_text(e)}
      print(f"  {name:28s} {common.images_per_s_text(results[name])}", flush=True)
      if gpu:
        torch.cuda.empty_cache()
      jn, jb = common.best_variant(results, f"{b}/jax", "images_per_s")
      tn, tb = common.best_variant(results, f"{b}/torch", "images_per_s")
      ratio[b] = {"jax_best": jn, "torch_best": tn,
                  "jax_best_over_torch_best": (jb / tb) if jb and tb else None}
      save()
  print(f"ratio {ratio}\nwrote {path}")


def _version(name: str) -> str:
  import importlib.metadata
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return "absent"


if __name__ == "__main__":
  main()
