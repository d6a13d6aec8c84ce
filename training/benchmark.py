"""Training-step benchmark: the pack's step against an official-style baseline, same card, same run.

    python training/benchmark.py --model sdxl --batch 4          # on a GPU: SDXL at 1024x1024
    python training/benchmark.py --model sdxl --max-batch        # largest batch each fits
    python training/benchmark.py                                 # CPU: a tiny configuration

Full-size UNets with random weights are built from ComfyUI's own UNet class (SD1.5 at
512x512, SDXL at 1024x1024); encoder states and latents are random, so both sides do exactly
the UNet and adapter work of one distillation step:

* ours: one shared frozen UNet (bf16 weights, no weight gradients) for the teacher and the
  student pass, feature taps, fp32 adapter under bf16 autocast (optionally ``--compile``);
* official-style (what the authors' DeepSpeed fp16 run does): two UNet copies with fp16
  weights, fp16 inputs and no autocast, the student UNet's weight gradients computed (it was
  never frozen), an fp16 adapter with an fp32 master copy and dynamic loss scaling.

On a CPU both run in fp32 (CPUs have no fast fp16) at a tiny width; the numbers only show the
script works. Prints samples/s, peak memory, model-FLOPs utilisation and the ratios.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from adapters.families import FAMILIES  # noqa: E402
from training.comfy_runtime import import_comfy  # noqa: E402

SD15, SDXL = FAMILIES["sd15"], FAMILIES["sdxl"]

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
MODELS = {
    "sd15": dict(config=dict(model_channels=320, num_res_blocks=[2] * 4, channel_mult=[1, 2, 4, 4],
                             transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1] * 9 + [0] * 3,
                             context_dim=SD15.context_dim, num_heads=8, num_head_channels=-1,
                             use_linear_in_transformer=False),
                 latent=64, tokens=77, in_dim=1024, hidden=SD15.hidden, head="sd15"),
    "sdxl": dict(config=dict(model_channels=320, num_res_blocks=[2] * 3, channel_mult=[1, 2, 4],
                             transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                             context_dim=SDXL.context_dim, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                             adm_in_channels=2816, num_classes="sequential"),
                 latent=128, tokens=77, in_dim=1024, hidden=SDXL.hidden, head="sdxl"),
    "tiny": dict(config=dict(model_channels=32, num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1],
                             transformer_depth_output=[1, 1, 1, 1], context_dim=64, num_heads=4, num_head_channels=-1,
                             use_linear_in_transformer=False),
                 latent=8, tokens=77, in_dim=32, hidden=(64,), head="sd15"),
}


def build_unet(spec: dict, dtype: torch.dtype, device) -> torch.nn.Module:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from training.miniworld.tiny_base import init_weights

    cfg = dict(spec["config"], image_size=32, in_channels=4, out_channels=4, use_spatial_transformer=True,
               legacy=False, transformer_depth_middle=spec["config"]["transformer_depth"][-1] or 1)
    if device.type == "cuda":  # full size: built and drawn on the GPU in its dtype
        unet = UNetModel(**cfg, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)
        return init_weights(unet, 0, on_device=True)
    unet = UNetModel(**cfg, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    return init_weights(unet, 0).to(device=device, dtype=dtype)


def build_adapter(spec: dict, device):
    from adapters import AdapterShape, PEAAdapter

    family = replace(FAMILIES[spec["head"]], context_dim=spec["config"]["context_dim"])
    torch.manual_seed(0)  # the same adapter on both sides and in the compiled-gradient check
    return PEAAdapter(AdapterShape.for_family(family, spec["in_dim"], spec["hidden"])).to(device)


def inputs(spec: dict, batch: int, device, dtype):
    g = torch.Generator().manual_seed(0)
    lat = spec["latent"]
    x = torch.randn(batch, 4, lat, lat, generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (batch,), generator=g).float().to(device)
    hidden = torch.randn(batch, spec["tokens"], spec["in_dim"], generator=g).to(device, dtype)
    teacher_ctx = torch.randn(batch, spec["tokens"], spec["config"]["context_dim"], generator=g).to(device, dtype)
    eps = torch.randn(batch, 4, lat, lat, generator=g).to(device, dtype)
    return x, t, hidden, teacher_ctx, eps


def adm(spec, pooled):
    """SDXL's label input: the pooled text vector + six size embeddings (random stand-in, 1536)."""
    if spec["head"] != "sdxl":
        return None
    return torch.cat([pooled, torch.zeros(pooled.shape[0], 1536, device=pooled.device, dtype=pooled.dtype)], dim=1)


def kd_losses(unet, taps, x, t, s_ctx, s_y, t_ctx, t_y, eps):
    with torch.no_grad(), taps.capture() as teacher:
        unet(x, t, context=t_ctx, y=t_y)
    with taps.capture() as student:
        unet(x, t, context=s_ctx, y=s_y)
    loss = F.mse_loss(student["output"].float(), eps.float()) + F.mse_loss(student["output"].float(), teacher["output"].float())
    return loss + 0.1 * sum(F.mse_loss(student[n].float(), teacher[n].float()) for n in taps.names)


class OursStep:
    """One shared frozen UNet, bf16 weights, autocast, fp32 adapter."""

    def __init__(self, spec, device, compile_unet=False):
        from training.taps import FeatureTaps

        self.spec, self.device = spec, device
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.unet = build_unet(spec, self.dtype, device).requires_grad_(False)
        self.taps = FeatureTaps(self.unet)
        self.call = torch.compile(self.unet) if compile_unet else self.unet
        self.adapter = build_adapter(spec, device)
        self.opt = torch.optim.AdamW(self.adapter.parameters(), lr=1e-5)

    def backward(self, batch_inputs) -> None:
        x, t, hidden, t_ctx, eps = batch_inputs
        ctx = torch.autocast("cuda", torch.bfloat16) if self.device.type == "cuda" else torch.autocast("cpu", enabled=False)
        with ctx:
            tokens, pooled = self.adapter(hidden.float())
            y = adm(self.spec, pooled)
            t_y = adm(self.spec, torch.zeros_like(pooled)) if pooled is not None else None
            loss = kd_losses(self.call, self.taps, x, t, tokens, y, t_ctx, t_y, eps)
        loss.backward()

    def __call__(self, batch_inputs):
        self.backward(batch_inputs)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class OfficialStep:
    """Two fp16 UNet copies, student weight gradients, fp16 adapter + fp32 master, loss scaling."""

    def __init__(self, spec, device):
        from training.taps import FeatureTaps

        self.spec, self.device = spec, device
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.teacher = build_unet(spec, self.dtype, device).requires_grad_(False)
        self.student = copy.deepcopy(self.teacher).requires_grad_(True)  # never frozen in the official code
        self.t_taps, self.s_taps = FeatureTaps(self.teacher), FeatureTaps(self.student)
        self.master = build_adapter(spec, device)
        self.adapter = copy.deepcopy(self.master).to(self.dtype)
        self.opt = torch.optim.AdamW(self.master.parameters(), lr=1e-5)
        self.scale = 2.0 ** 16

    def __call__(self, batch_inputs):
        x, t, hidden, t_ctx, eps = batch_inputs
        tokens, pooled = self.adapter(hidden.to(self.dtype))
        with torch.no_grad(), self.t_taps.capture() as teacher:
            self.teacher(x, t, context=t_ctx, y=adm(self.spec, torch.zeros_like(pooled)) if pooled is not None else None)
        with self.s_taps.capture() as student:
            self.student(x, t, context=tokens, y=adm(self.spec, pooled))
        loss = F.mse_loss(student["output"].float(), eps.float()) + F.mse_loss(student["output"].float(), teacher["output"].float())
        loss = loss + 0.1 * sum(F.mse_loss(student[n].float(), teacher[n].float()) for n in self.s_taps.names)
        (loss * self.scale).backward()
        grads = [p.grad for p in self.adapter.parameters()]
        finite = all(torch.isfinite(g).all() for g in grads if g is not None)
        if finite:
            for m, g in zip(self.master.parameters(), grads):
                m.grad = g.float() / self.scale
            self.opt.step()
            with torch.no_grad():
                for p, m in zip(self.adapter.parameters(), self.master.parameters()):
                    p.copy_(m)
        else:
            self.scale /= 2
        self.opt.zero_grad(set_to_none=True)
        self.adapter.zero_grad(set_to_none=True)
        self.student.zero_grad(set_to_none=True)


def compiled_gradient_error(spec, device, batch: int) -> float:
    """Largest relative difference between the adapter gradients of the compiled and the eager
    shared UNet on one batch (a compiler bug would show here before it shows in a loss curve)."""
    grads = []
    for compiled in (False, True):
        step = OursStep(spec, device, compiled)
        step.backward(inputs(spec, batch, device, step.dtype))
        grads.append([p.grad.float() for p in step.adapter.parameters()])
    return max(((c - e).abs().max() / e.abs().max().clamp(min=1e-12)).item() for e, c in zip(*grads))


def peak_memory_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(step, spec, batch, device, steps, warmup, count_flops=True) -> dict:
    """samples/s, peak memory and (optionally) FLOPs of ``step`` at ``batch``."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    data = inputs(spec, batch, device, step.dtype)
    flops = None
    for i in range(warmup):
        if count_flops and i == warmup - 1:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                step(data)
            flops = counter.get_total_flops()
        else:
            step(data)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(data)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"batch": batch, "samples_per_s": batch * steps / elapsed, "peak_gib": peak_memory_gib(device),
            "tflop_per_step": None if flops is None else flops / 1e12}


def fits(step, spec, batch, device) -> bool:
    try:
        measure(step, spec, batch, device, steps=1, warmup=1, count_flops=False)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def largest_batch(step, spec, device, start=1, limit=256) -> int:
    """The largest power-of-two batch ``step`` runs without running out of memory."""
    best, b = 0, start
    while b <= limit and fits(step, spec, b, device):
        best, b = b, b * 2
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), help="default: sdxl on CUDA, tiny on CPU")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile the shared UNet (ours)")
    p.add_argument("--max-batch", action="store_true", help="also find the largest batch each side fits (CUDA)")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    import_comfy()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = args.model or ("sdxl" if device.type == "cuda" else "tiny")
    spec = MODELS[model]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    results = {"card": card, "model": model, "latent": spec["latent"], "compile": args.compile}
    makers = {"official": lambda: OfficialStep(spec, device), "ours": lambda: OursStep(spec, device, args.compile)}
    for name, make in makers.items():
        step = make()
        results[name] = r = measure(step, spec, args.batch, device, args.steps, args.warmup)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in card), None)
        r["mfu"] = (r["tflop_per_step"] * r["samples_per_s"] / args.batch / peak) if peak else None
        if args.max_batch and device.type == "cuda":
            r["largest_batch"] = largest_batch(step, spec, device)
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.compile:
        results["compiled_gradient_error"] = compiled_gradient_error(spec, device, args.batch)
        print(f"compiled vs eager adapter gradients: max relative difference {results['compiled_gradient_error']:.2e}")
    o, u = results["official"], results["ours"]
    results["speed_ratio"] = u["samples_per_s"] / o["samples_per_s"]
    results["memory_ratio"] = u["peak_gib"] / o["peak_gib"]
    print(f"{card}, {model} (latent {spec['latent']}x{spec['latent']}), batch {args.batch}")
    for name in ("official", "ours"):
        r = results[name]
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        extra = f", largest batch {r['largest_batch']}" if "largest_batch" in r else ""
        print(f"  {name:9s} {r['samples_per_s']:8.2f} samples/s  peak {r['peak_gib']:6.2f} GiB  MFU {mfu}{extra}")
    print(f"  ratio     {results['speed_ratio']:.2f}x samples/s, {results['memory_ratio']:.2f}x peak memory")
    if args.max_batch and "largest_batch" in o and o["largest_batch"]:
        results["batch_ratio"] = u["largest_batch"] / o["largest_batch"]
        print(f"  largest batch ratio {results['batch_ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
