"""Training-step benchmark: the trainer's own step against the official step as it runs, one process.

    python -m benchmarks.train_step --model sdxl --batch 4 --compile --max-batch   # GPU: SDXL 1024x1024
    python -m benchmarks.train_step --model sdxl --resolution 512 --batch 1 --dtype bf16 --saved-only  # CPU
    python -m benchmarks.train_step                                                # CPU: a tiny configuration

Both sides get full-size UNets with random weights, built from ComfyUI's own model classes
(SD1.5 at 512x512, SDXL at 1024x1024 unless ``--resolution``), random latents, random teacher
encodings and random language-encoder states (a frozen embedding table stands in for the
encoder: both sides run it, and it is not what is compared):

* ours: ``training.step.distill.Distiller``, the module the trainer runs, then the trainer's
  optimiser step (AdamW, no clipping by default). One frozen UNet in the training dtype (bf16 on a GPU) shared by
  the teacher and the student pass, no autocast around it, hook-free taps; ``--compile`` and
  ``--memory-budget`` as in ``train_adapter.py``.
* official as run (the authors' DeepSpeed fp16 ZeRO-1 run): two fp16 UNet copies; the student
  pass first, through a UNet whose weights require gradients, which are computed and kept (the
  optimiser only owns the adapter, and DeepSpeed zeroes only the optimiser's gradients); an fp16
  adapter with an fp32 master copy and dynamic loss scaling.

Official and ours alternate step by step (A, B, A, B) after at least 5 warm-up steps each (the
compile happens there); every timed step is synchronised and the median is reported with its
min and max. Peak memory is each side's own resident tensors (weights, kept gradients, optimiser
state, batch) plus the most its timed steps allocated on top. FLOPs are counted in a separate
eager pass without recompute (model FLOPs; MFU is against the card's dense bf16 peak), and the
bytes kept for backward per sample in a separate eager forward pass (``training.step.memory``), also
for each memory budget of ours. On a CPU the timings and peaks only show that the script runs.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import itertools
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef

from adapters.families import FAMILIES
from comfy_runtime import import_comfy
from training.step.unet_pass import budget_option

SD15, SDXL = FAMILIES["sd15"], FAMILIES["sdxl"]

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
BUDGETS = (1.0, 0.75, 0.5, 0.25, 0.0)
BF16_GRADIENT_TOLERANCE = 3e-2
"""Compiled kernels fuse and reorder bf16 arithmetic (each rounding is 2^-9 relative): adapter
gradients of the compiled and the eager step may differ by this much relative to their largest."""
MIN_WARMUP, MIN_STEPS = 5, 15
MODELS = {
    "sd15": dict(family="sd15", in_dim=1024,
                 unet=dict(model_channels=320, num_res_blocks=[2] * 4, channel_mult=[1, 2, 4, 4],
                           transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1] * 9 + [0] * 3,
                           transformer_depth_middle=1, context_dim=SD15.context_dim, use_linear_in_transformer=False,
                           adm_in_channels=None)),
    "sdxl": dict(family="sdxl", in_dim=1024,
                 unet=dict(model_channels=320, num_res_blocks=[2] * 3, channel_mult=[1, 2, 4],
                           transformer_depth=[0, 0, 2, 2, 10, 10],
                           transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10,
                           context_dim=SDXL.context_dim, use_linear_in_transformer=True,
                           adm_in_channels=SDXL.pooled_dim + 6 * 256, num_classes="sequential")),
    "tiny": dict(family="sd15", resolution=64, in_dim=32, hidden=(64,),
                 unet=dict(model_channels=32, num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1],
                           transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1, context_dim=64,
                           use_linear_in_transformer=False, adm_in_channels=None)),
}
TOKENS, VOCAB = 77, 1000


def build_base(spec: dict, dtype: torch.dtype, device: torch.device):
    """A ComfyUI ``BaseModel`` (SD1.5 or SDXL class) with random weights, built on ``device``."""
    import comfy.model_base
    import comfy.supported_models as sm

    from training.miniworld.tiny_base import init_weights

    cfg = dict(spec["unet"], in_channels=4, out_channels=4, use_spatial_transformer=True, legacy=False,
               image_size=32, use_temporal_attention=False)
    sdxl = spec["family"] == "sdxl"
    config = (sm.SDXL if sdxl else sm.SD15)(cfg)
    config.set_inference_dtype(dtype, None)
    model = (comfy.model_base.SDXL if sdxl else comfy.model_base.BaseModel)(config, device=device)
    return init_weights(model, 0, on_device=True).eval()


def build_adapter(spec: dict, device: torch.device):
    from adapters import AdapterShape, PEAAdapter

    family = replace(FAMILIES[spec["family"]], context_dim=spec["unet"]["context_dim"])
    torch.manual_seed(0)  # the same adapter on both sides and in the compiled-gradient check
    return PEAAdapter(AdapterShape.for_family(family, spec["in_dim"], spec.get("hidden"))).to(device)


def stand_in_encoder(spec: dict, device: torch.device) -> torch.nn.Module:
    """Random language-encoder states: a frozen embedding table, token ids -> ``[B, L, in_dim]``."""
    torch.manual_seed(1)
    return torch.nn.Embedding(VOCAB, spec["in_dim"]).to(device).requires_grad_(False)


def make_batch(spec: dict, batch: int, resolution: int, device: torch.device):
    from training.step.distill import Batch

    g = torch.Generator().manual_seed(0)
    lat = resolution // 8
    pooled = torch.randn(batch, SDXL.pooled_dim, generator=g) if spec["family"] == "sdxl" else None
    return Batch(latents=torch.randn(batch, 4, lat, lat, generator=g).to(device),
                 teacher_tokens=torch.randn(batch, TOKENS, spec["unet"]["context_dim"], generator=g).to(device),
                 teacher_pooled=None if pooled is None else pooled.to(device),
                 ids=torch.randint(1, VOCAB, (batch, TOKENS), generator=g).to(device),
                 kd_mask=torch.ones(batch, device=device), pixel_size=(resolution, resolution),
                 sample_ids=list(range(batch)))


def unique_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        seen.setdefault(StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes())
    return sum(seen.values())


class OursStep:
    """The trainer's step: ``Distiller`` forward, backward, AdamW on the adapter (the trainer's
    defaults: no gradient clipping)."""

    name = "ours"

    def __init__(self, spec: dict, device: torch.device, dtype: torch.dtype, memory_budget: float, compile: bool):
        from training.step.distill import Distiller, StepConfig

        self.base = build_base(spec, dtype, device)
        ctx = spec["unet"]["context_dim"]
        g = torch.Generator().manual_seed(2)
        empty = (torch.randn(1, TOKENS, ctx, generator=g),
                 torch.randn(1, SDXL.pooled_dim, generator=g) if spec["family"] == "sdxl" else None)
        self.distiller = Distiller(self.base, stand_in_encoder(spec, device), build_adapter(spec, device),
                                   empty_ids=torch.zeros(1, TOKENS, dtype=torch.long), empty_teacher=empty,
                                   config=StepConfig(memory_budget=memory_budget, compile=compile))
        self.adapter = self.distiller.adapter
        self.opt = torch.optim.AdamW(self.adapter.parameters(), lr=1e-5)
        self.step = 0

    @property
    def recompute(self) -> frozenset[str]:
        return self.distiller.passes.recompute

    def loss(self, batch) -> torch.Tensor:
        return self.distiller(batch, self.step)[0]

    def __call__(self, batch) -> None:
        self.loss(batch).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1

    @contextlib.contextmanager
    def eager(self, recompute: frozenset[str] = frozenset()):
        """The same step with eager UNet passes recomputing ``recompute`` (for counting)."""
        from training.step.unet_pass import UNetPasses

        passes = self.distiller.passes
        self.distiller.passes = UNetPasses(passes.unet, list(passes.taps), recompute)
        try:
            yield
        finally:
            self.distiller.passes = passes

    def resident_bytes(self, batch) -> int:
        d = self.distiller
        return unique_bytes(itertools.chain(d.parameters(), d.buffers(), batch_tensors(batch), optimizer_tensors(self.opt)))


class OfficialStep:
    """The authors' step as their DeepSpeed fp16 run executes it (see the module docstring).

    ``two_copies=False`` runs the teacher pass through the student's weights: a no-grad pass keeps
    nothing for backward, so the bytes kept per sample are the same with half the weights (the
    CPU measurement of full-size SDXL uses it)."""

    name = "official"
    recompute: frozenset[str] = frozenset()

    def __init__(self, spec: dict, device: torch.device, two_copies: bool = True):
        from training.step.taps import tap_names

        self.student = build_base(spec, torch.float16, device).requires_grad_(True)  # never frozen officially
        self.teacher = build_base(spec, torch.float16, device).requires_grad_(False) if two_copies else self.student
        self.encoder = stand_in_encoder(spec, device)
        self.master = build_adapter(spec, device)
        self.adapter = copy.deepcopy(self.master).half()
        self.opt = torch.optim.AdamW(self.master.parameters(), lr=1e-5)
        self.scale = 2.0 ** 16
        self.taps = frozenset(tap_names(self.student.diffusion_model))
        self.sizes: dict = {}

    def loss(self, batch) -> torch.Tensor:
        from training.step.distill import sdxl_label
        from training.step.objective import prediction_target
        from training.step.unet_pass import tapped_forward, unet_inputs

        ms = self.student.model_sampling
        device = batch.latents.device
        t = torch.randint(0, 1000, (len(batch.sample_ids),), device=device)
        sigma = ms.sigma(t.float())
        noisy = ms.noise_scaling(sigma, torch.randn_like(batch.latents), batch.latents)
        with torch.no_grad():
            hidden = self.encoder(batch.ids)
        tokens, pooled = self.adapter(hidden.half())
        size = batch.pixel_size
        s_y = sdxl_label(self.student, pooled, size, self.sizes)
        t_y = sdxl_label(self.student, batch.teacher_pooled, size, self.sizes)
        s_out, student = tapped_forward(self.student.diffusion_model,
                                        *unet_inputs(self.student, noisy, sigma, tokens, s_y), self.taps)
        with torch.no_grad():
            t_out, teacher = tapped_forward(self.teacher.diffusion_model,
                                            *unet_inputs(self.teacher, noisy, sigma, batch.teacher_tokens, t_y),
                                            self.taps)
        target = prediction_target(ms, sigma, noisy, batch.latents)
        kd = batch.kd_mask.mean()  # the official hybrid run: L_SD weighted by 1 - kd, the KD terms by kd
        kd_terms = F.mse_loss(s_out.float(), t_out.float()) + 0.1 * sum(
            F.mse_loss(student[n].float(), teacher[n].float()) for n in self.taps)
        return (1 - kd) * F.mse_loss(s_out.float(), target.float()) + kd * kd_terms

    def __call__(self, batch) -> None:
        (self.loss(batch) * self.scale).backward()
        grads = [p.grad for p in self.adapter.parameters()]
        if all(torch.isfinite(g).all() for g in grads):
            for m, g in zip(self.master.parameters(), grads):
                m.grad = g.float() / self.scale
            self.opt.step()
            with torch.no_grad():
                for p, m in zip(self.adapter.parameters(), self.master.parameters()):
                    p.copy_(m)
        else:
            self.scale /= 2
        self.opt.zero_grad(set_to_none=True)
        self.adapter.zero_grad(set_to_none=True)  # the student UNet's gradients stay, as under DeepSpeed

    def eager(self, recompute: frozenset[str] = frozenset()):
        return contextlib.nullcontext()

    def resident_bytes(self, batch) -> int:
        modules = (self.student, self.teacher, self.encoder, self.master, self.adapter)
        grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
        tensors = [t for m in modules for t in itertools.chain(m.parameters(), m.buffers())]
        return unique_bytes(itertools.chain(tensors, grads, batch_tensors(batch), optimizer_tensors(self.opt)))


def batch_tensors(batch):
    return [t for t in (batch.latents, batch.teacher_tokens, batch.teacher_pooled, batch.ids, batch.kd_mask)
            if t is not None]


def optimizer_tensors(opt):
    return [v for state in opt.state.values() for v in state.values() if torch.is_tensor(v)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(step, batch, device: torch.device) -> tuple[float, int]:
    """Seconds of one synchronised step and the bytes it allocated above what was allocated before."""
    synchronize(device)
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    step(batch)
    synchronize(device)
    seconds = time.perf_counter() - start
    extra = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else 0
    return seconds, extra


def model_flops(step, batch) -> int:
    """FLOPs of one eager step without recompute, counted apart from every timed run."""
    from torch.utils.flop_counter import FlopCounterMode

    with step.eager(), FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops()


def saved_bytes_per_sample(step, batch, recompute: frozenset[str] = frozenset()) -> float:
    """Bytes a step keeps from its forward pass for its backward pass, per sample (eager)."""
    from training.step.memory import RetainedTensors

    with step.eager(recompute), RetainedTensors() as kept:
        loss = step.loss(batch)
    saved = kept.alive_bytes()
    del loss
    return saved / len(batch.sample_ids)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def largest_batch(step, spec: dict, resolution: int, device: torch.device, limit: int = 64) -> int:
    """The largest power-of-two batch from 2 (a batch of 1 would compile its own graphs) for which
    ``step``, alone on the card, runs two steps without running out of memory; the same step
    object throughout, so a compiled step keeps its graphs. 0: not even 2."""
    best, size = 0, 2
    while size <= limit:
        batch = None
        try:
            batch = make_batch(spec, size, resolution, device)
            for _ in range(2):
                timed_step(step, batch, device)
        except torch.OutOfMemoryError:
            break
        finally:
            del batch
            step.opt.zero_grad(set_to_none=True)
            free_memory(device)
        best, size = size, size * 2
    return best


def summary(times: list[float], extras: list[int], resident: int, batch: int, device: torch.device) -> dict:
    """Median, min and max samples/s; peak memory (CUDA only: a CPU has no allocator statistics)."""
    return {"samples_per_s": batch / statistics.median(times), "samples_per_s_min": batch / max(times),
            "samples_per_s_max": batch / min(times),
            "peak_gib": (resident + max(extras)) / 2**30 if device.type == "cuda" else None}


def compiled_gradient_error(step: OursStep, batch) -> float:
    """Largest difference between the adapter gradients of our compiled and eager step on one
    batch, relative to the largest eager gradient of the same tensor."""
    grads = []
    for mode in (step.eager(step.recompute), contextlib.nullcontext()):
        with mode:
            step.loss(batch).backward()
        grads.append([p.grad.float() for p in step.adapter.parameters()])
        step.opt.zero_grad(set_to_none=True)
    return max(((c - e).abs().max() / e.abs().max().clamp(min=1e-30)).item() for e, c in zip(*grads))


def budget_sweep(step: OursStep, batch, budget: float) -> dict[str, float]:
    """Bytes kept per sample by ours at each memory budget (``BUDGETS`` and ``budget``)."""
    from training.step.unet_pass import recompute_plan

    unet = step.base.diffusion_model
    budgets = sorted(set(BUDGETS) | {budget}, reverse=True)
    return {f"{b:g}": saved_bytes_per_sample(step, batch, recompute_plan(unet, b)) for b in budgets}


def measure_saved(args, spec, device, dtype) -> dict:
    """Bytes kept for backward per sample, one side at a time (full-size SDXL fits a CPU this way)."""
    batch = make_batch(spec, args.batch, args.resolution, device)
    official = OfficialStep(spec, device, two_copies=False)
    results = {"official": {"saved_bytes_per_sample": saved_bytes_per_sample(official, batch)}}
    del official
    free_memory(device)
    ours = OursStep(spec, device, dtype, args.memory_budget, compile=False)
    sweep = budget_sweep(ours, batch, args.memory_budget)
    results["ours"] = {"saved_bytes_per_sample": sweep[f"{args.memory_budget:g}"], "saved_by_budget": sweep}
    return results


def measure_all(args, spec, device, dtype) -> dict:
    batch_o = make_batch(spec, args.batch, args.resolution, device)
    batch_u = make_batch(spec, args.batch, args.resolution, device)
    sides = [OfficialStep(spec, device), OursStep(spec, device, dtype, args.memory_budget, args.compile)]
    batches = {"official": batch_o, "ours": batch_u}
    times = {s.name: [] for s in sides}
    extras = {s.name: [] for s in sides}
    for i in range(args.warmup + args.steps):
        for step in sides:  # A, B, A, B
            seconds, extra = timed_step(step, batches[step.name], device)
            if i >= args.warmup:
                times[step.name].append(seconds)
                extras[step.name].append(extra)
    results = {}
    for step in sides:
        r = results[step.name] = summary(times[step.name], extras[step.name],
                                         step.resident_bytes(batches[step.name]), args.batch, device)
        r["tflop_per_step"] = model_flops(step, batches[step.name]) / 1e12
        free_memory(device)
    if args.compile:
        results["ours"]["compiled_gradient_error"] = compiled_gradient_error(sides[1], batch_u)
    results["official"]["saved_bytes_per_sample"] = saved_bytes_per_sample(sides[0], batch_o)
    sweep = results["ours"]["saved_by_budget"] = budget_sweep(sides[1], batch_u, args.memory_budget)
    results["ours"]["saved_bytes_per_sample"] = sweep[f"{args.memory_budget:g}"]
    official, ours = sides
    del sides, batches, batch_o, batch_u, official
    free_memory(device)
    if args.max_batch and device.type == "cuda":
        results["ours"]["largest_batch"] = largest_batch(ours, spec, args.resolution, device)
        del ours
        free_memory(device)
        results["official"]["largest_batch"] = largest_batch(OfficialStep(spec, device), spec, args.resolution, device)
    return results


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.3f} GiB" if n_bytes >= 2**27 else f"{n_bytes / 2**20:.2f} MiB"


def report(results: dict, args, card: str) -> None:
    o, u = results["official"], results["ours"]
    results["saved_ratio"] = u["saved_bytes_per_sample"] / o["saved_bytes_per_sample"]
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in card), None)
    print(f"{card}, {results['model']} at {args.resolution}x{args.resolution}, batch {args.batch}, "
          f"ours in {results['dtype']}, compile {'on' if args.compile else 'off'}, memory budget {args.memory_budget:g}")
    if not args.saved_only:
        print(f"  {args.warmup} warm-up + {args.steps} timed steps each, interleaved; median (min-max)")
    for name in ("official", "ours"):
        r = results[name]
        line = f"  {name:9s}"
        if "samples_per_s" in r:
            r["mfu"] = r["tflop_per_step"] * 1e12 * r["samples_per_s"] / args.batch / (peak * 1e12) if peak else None
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            peak_gib = f"{r['peak_gib']:6.2f} GiB" if r["peak_gib"] is not None else "n/a"
            line += (f" {r['samples_per_s']:8.2f} samples/s ({r['samples_per_s_min']:.2f}-{r['samples_per_s_max']:.2f})"
                     f"  peak {peak_gib}  {r['tflop_per_step']:.3g} TFLOP/step  MFU {mfu}")
        line += f"  kept for backward {gib(r['saved_bytes_per_sample'])}/sample"
        if "largest_batch" in r:
            line += f"  largest batch {r['largest_batch']}"
        print(line)
    ratio = f"  ratio     {results['saved_ratio']:.2f}x kept for backward"
    if "samples_per_s" in o:
        results["speed_ratio"] = u["samples_per_s"] / o["samples_per_s"]
        ratio += f", {results['speed_ratio']:.2f}x samples/s"
    if o.get("peak_gib"):
        results["memory_ratio"] = u["peak_gib"] / o["peak_gib"]
        ratio += f", {results['memory_ratio']:.2f}x peak memory"
    if o.get("largest_batch"):
        results["batch_ratio"] = u["largest_batch"] / o["largest_batch"]
        ratio += f", {results['batch_ratio']:.2f}x largest batch"
    print(ratio)
    print("  ours, kept for backward by --memory-budget: " + ", ".join(
        f"{b}: {gib(v)}/sample ({v / o['saved_bytes_per_sample']:.2f}x)" for b, v in u["saved_by_budget"].items()))
    if "compiled_gradient_error" in u:
        print(f"  compiled vs eager adapter gradients: max relative difference {u['compiled_gradient_error']:.2e}"
              f" (bf16 tolerance {BF16_GRADIENT_TOLERANCE:g})")
    if not peak and not args.saved_only:
        print("  (no dense bf16 peak known for this device: MFU n/a; CPU timings only show the script runs)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), help="default: sdxl on CUDA, tiny on CPU")
    p.add_argument("--resolution", type=int, help="image side in pixels (default: 512 SD1.5, 1024 SDXL)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=MIN_STEPS, help=f"timed steps per side (at least {MIN_STEPS})")
    p.add_argument("--warmup", type=int, default=MIN_WARMUP, help=f"warm-up steps per side (at least {MIN_WARMUP})")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                   help="our UNet's weight dtype (auto: the trainer's, bf16 where the device has it)")
    p.add_argument("--compile", action="store_true", help="compile our UNet passes, as train_adapter.py --compile")
    p.add_argument("--memory-budget", type=budget_option, default=1.0, help="as train_adapter.py --memory-budget")
    p.add_argument("--max-batch", action="store_true", help="also find the largest batch each side fits (CUDA)")
    p.add_argument("--saved-only", action="store_true",
                   help="only the bytes kept for backward per sample, one side at a time (no timing)")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    if args.steps < MIN_STEPS or args.warmup < MIN_WARMUP:
        p.error(f"at least {MIN_WARMUP} warm-up and {MIN_STEPS} timed steps")
    import_comfy()
    from training.base_checkpoint import unet_weight_dtype

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = args.model or ("sdxl" if device.type == "cuda" else "tiny")
    spec = MODELS[model]
    args.resolution = args.resolution or spec.get("resolution", FAMILIES[spec["family"]].resolution)
    multiple = 8 * 2 ** (len(spec["unet"]["channel_mult"]) - 1)  # latents halve at every level but the last
    if args.resolution % multiple:
        p.error(f"--resolution must be a multiple of {multiple} for {model}")
    dtype = {"auto": unet_weight_dtype(), "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    measure = measure_saved if args.saved_only else measure_all
    results = {"card": card, "model": model, "resolution": args.resolution, "batch": args.batch,
               "dtype": str(dtype).removeprefix("torch."), "compile": args.compile,
               "memory_budget": args.memory_budget, **measure(args, spec, device, dtype)}
    report(results, args, card)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
