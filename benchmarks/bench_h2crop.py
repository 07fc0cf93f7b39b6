"""Training-step throughput of the H2Crop model (forward + backward), with a reference measured in the same run.

    python benchmarks/bench_h2crop.py [--device cpu|cuda] [--batch-sizes 1 2 3 4] [--steps N] [--warmup N]

On CUDA: the full published models `crops_S2_H_P_jun` (176 M parameters) and `crops_S2_jun` (115 M) on
192 × 192 tiles (EnMAP 64 × 64), batch 1-4, with bf16 autocast (cropkit's default) against the fp32
reference; samples/s, peak GPU memory and the bf16/fp32 ratio are printed.

On CPU (no GPU, or --device cpu): the `tiny` configuration (96 × 96 tiles, batch 1-2) and a REDUCED full
configuration — the full `crops_S2_H_P_jun` widths and depths, but on 48 × 48 S2 / 16 × 16 EnMAP tiles,
batch 1 — comparing the
fused attention (`torch.nn.functional.scaled_dot_product_attention`, the default) against cropkit's plain
attention reference (scores, softmax, weighted sum; `attention_backend("math")`). Runs in well under
3 minutes on a two-core machine.

A step is: forward on a random batch (S2, EnMAP, priors as the configuration needs), `cascade_loss` on
random labels, backward, gradients cleared. No optimizer update (identical for both variants).
"""
from __future__ import annotations
import argparse, contextlib, time

import torch

from cropkit.core import autocast, get_device, set_seed, to_device
from cropkit.models.h2crop import H2CropModel, build_model, cascade_loss
from cropkit.models.h2crop_swin import attention_backend


def random_batch(model: H2CropModel, batch_size: int, tile: int, device) -> tuple[dict, dict]:
    "A random input batch and label maps that fit `model`'s configuration at S2 tile size `tile`."
    c = model.config
    batch = {"S2": torch.randn(batch_size, c.num_frames, c.s2_bands, tile, tile)}
    if c.with_hyper:
        batch["EnMAP"] = torch.randn(batch_size, c.enmap_bands, tile // c.upscale, tile // c.upscale)
    if c.with_priors:
        batch["priors"] = torch.stack([torch.randint(0, n, (batch_size, tile, tile)) for n in c.num_classes], 1)
    labels = {lvl: torch.randint(0, c.n_classes(lvl), (batch_size, tile, tile)) for lvl in c.levels}
    return to_device(batch, device), to_device(labels, device)


def _sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def step_throughput(model, batch, labels, device, steps: int, warmup: int, amp: bool, attn: str = "sdpa") -> float:
    "Samples per second of forward + backward steps (after `warmup` untimed steps)."
    n = batch["S2"].shape[0]
    ctx = attention_backend(attn)
    with ctx:
        for i in range(warmup + steps):
            if i == warmup: _sync(device); t0 = time.perf_counter()
            with autocast(device, enabled=amp):
                loss = cascade_loss(model(batch), labels)
            loss.backward()
            model.zero_grad(set_to_none=True)
        _sync(device)
    return n * steps / (time.perf_counter() - t0)


def bench_cuda(args, device):
    print(f"device: {torch.cuda.get_device_name(device)} — full models on 192×192 tiles, bf16 autocast vs fp32 reference")
    print(f"{'config':<18} {'batch':>5} {'fp32 samples/s':>15} {'bf16 samples/s':>15} {'bf16/fp32':>10} {'peak GiB (bf16)':>16}")
    for name in ("crops_S2_H_P_jun", "crops_S2_jun"):
        set_seed(0)
        model = build_model(name).to(device).train()
        for bs in args.batch_sizes:
            batch, labels = random_batch(model, bs, 192, device)
            try:
                fp32 = step_throughput(model, batch, labels, device, args.steps, args.warmup, amp=False)
                torch.cuda.reset_peak_memory_stats(device)
                bf16 = step_throughput(model, batch, labels, device, args.steps, args.warmup, amp=True)
                peak = torch.cuda.max_memory_allocated(device) / 2**30
            except torch.cuda.OutOfMemoryError:
                print(f"{name:<18} {bs:>5}  out of GPU memory"); torch.cuda.empty_cache(); continue
            print(f"{name:<18} {bs:>5} {fp32:>15.2f} {bf16:>15.2f} {bf16 / fp32:>9.2f}x {peak:>16.1f}")
        del model; torch.cuda.empty_cache()


def bench_cpu(args, device):
    print(f"device: cpu ({torch.get_num_threads()} threads) — no GPU: the tiny configuration and a REDUCED full "
          "configuration (crops_S2_H_P_jun widths and depths on 48×48 S2 / 16×16 EnMAP tiles); fused SDPA "
          "attention vs the plain attention reference")
    runs = [("tiny", {}, 96, [b for b in args.batch_sizes if b <= 2] or [1], args.steps, args.warmup),
            ("crops_S2_H_P_jun", dict(img_size=48, enmap_size=16), 48, [1], 1, 0)]
    print(f"{'config':<26} {'tile':>5} {'batch':>5} {'math samples/s':>15} {'sdpa samples/s':>15} {'sdpa/math':>10}")
    for name, overrides, tile, sizes, steps, warmup in runs:
        set_seed(0)
        model = build_model(name, **overrides).to(device).train()
        label = name + (" (REDUCED)" if overrides else "")
        for bs in sizes:
            batch, labels = random_batch(model, bs, tile, device)
            if warmup == 0:                                       # untimed forward: allocator and kernels warm
                with torch.no_grad(): model(batch)
            ref = step_throughput(model, batch, labels, device, steps, warmup, amp=False, attn="math")
            fused = step_throughput(model, batch, labels, device, steps, warmup, amp=False, attn="sdpa")
            print(f"{label:<26} {tile:>5} {bs:>5} {ref:>15.3f} {fused:>15.3f} {fused / ref:>9.2f}x")
        del model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 10 on CUDA, 2 on CPU)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on CUDA, 1 on CPU)")
    args = ap.parse_args(argv)
    device = get_device(args.device)
    cuda = device.type == "cuda"
    if args.threads: torch.set_num_threads(args.threads)
    args.steps = args.steps or (10 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    t0 = time.perf_counter()
    (bench_cuda if cuda else bench_cpu)(args, device)
    print(f"total time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
