"""CPU timings of the paper-world networks; writes JSON (default ``data/benchmarks/nets.json``).

Measured, side by side in one run so that ratios are meaningful on a shared machine:

- a StyleGAN2 training step of the mini world (64 px, batch 8, channels capped at 128,
  style dim 128): discriminator step (logistic loss on real and fake) + generator step
  (non-saturating loss), each forward and backward with an optimiser update, plus R1 on
  real images amortised over its lazy interval (every 16 steps, as in StyleGAN2); once
  with the reference maths (grouped modulated convs, reshape-and-convolve FIR) and once
  with the fast path; both orders alternate over the repeats;
- generator forward per image (batch 1, no grad) at 64 px (mini), 256 px (config-f
  widths) and 1024 px (the official config-f);
- e4e forward per image at 256 px input (the release configuration).

Usage: ``python benchmarks/bench_nets.py [--out PATH] [--repeats N] [--threads T]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone

import torch
from torch.nn import functional as F

from megafr.fileio import write_json
from megafr.nets.encoders import EncoderConfig, Encoder4Editing
from megafr.nets.stylegan2 import Discriminator, Generator, set_impl

MINI = dict(size=64, style_dim=128, n_mlp=8, channel_multiplier=2, max_channels=128)  # mini-world GAN
BATCH = 8  # training batch of the mini world
R1_INTERVAL = 16  # lazy R1: regularise every 16 discriminator steps (StyleGAN2 default)
R1_GAMMA = 10.0  # R1 weight (only its cost matters here)
LR = 2e-3  # StyleGAN2 Adam learning rate
BETAS = (0.0, 0.99)  # StyleGAN2 Adam betas


def _now() -> float:
    return time.perf_counter()


class TrainStep:
    """One mini-world GAN training step (D step, G step) and an R1 step."""

    def __init__(self, impl: str, seed: int = 0):
        torch.manual_seed(seed)
        self.g = set_impl(Generator(**MINI), impl)
        self.d = set_impl(Discriminator(MINI["size"], MINI["channel_multiplier"], max_channels=MINI["max_channels"]), impl)
        self.g_opt = torch.optim.Adam(self.g.parameters(), lr=LR, betas=BETAS)
        self.d_opt = torch.optim.Adam(self.d.parameters(), lr=LR, betas=BETAS)
        self.real = torch.rand(BATCH, 3, MINI["size"], MINI["size"]) * 2 - 1

    def step(self) -> None:
        z = torch.randn(BATCH, MINI["style_dim"])
        fake, _ = self.g([z])
        d_loss = F.softplus(self.d(fake.detach())).mean() + F.softplus(-self.d(self.real)).mean()
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        fake, _ = self.g([torch.randn(BATCH, MINI["style_dim"])])
        g_loss = F.softplus(-self.d(fake)).mean()
        self.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_opt.step()

    def r1(self) -> None:
        real = self.real.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.d(real).sum(), real, create_graph=True)
        loss = R1_GAMMA / 2 * grad.square().sum([1, 2, 3]).mean() * R1_INTERVAL
        self.d_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.d_opt.step()


def bench_train_step(repeats: int) -> dict:
    runs = {impl: TrainStep(impl) for impl in ("reference", "fast")}
    times: dict[str, dict[str, list[float]]] = {impl: {"step": [], "r1": []} for impl in runs}
    for run in runs.values():  # warm-up
        run.step()
        run.r1()
    for r in range(repeats):
        order = ("reference", "fast") if r % 2 == 0 else ("fast", "reference")
        for impl in order:
            t0 = _now()
            runs[impl].step()
            t1 = _now()
            runs[impl].r1()
            t2 = _now()
            times[impl]["step"].append(t1 - t0)
            times[impl]["r1"].append(t2 - t1)
    out = {}
    for impl, t in times.items():
        step = sorted(t["step"])[len(t["step"]) // 2]
        r1 = sorted(t["r1"])[len(t["r1"]) // 2]
        out[impl] = {"step_s": step, "r1_s": r1, "step_with_lazy_r1_s": step + r1 / R1_INTERVAL, "step_samples_s": t["step"]}
    out["speedup"] = out["reference"]["step_with_lazy_r1_s"] / out["fast"]["step_with_lazy_r1_s"]
    out["config"] = {**MINI, "batch": BATCH, "r1_interval": R1_INTERVAL}
    return out


@torch.no_grad()
def _time_forward(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        t0 = _now()
        fn()
        samples.append(_now() - t0)
    return sorted(samples)[len(samples) // 2]


def bench_generator(repeats: int) -> dict:
    configs = {
        "64": dict(MINI),
        "256": dict(size=256, style_dim=512, n_mlp=8, channel_multiplier=2, max_channels=512),
        "1024_config_f": dict(size=1024, style_dim=512, n_mlp=8, channel_multiplier=2, max_channels=512),
    }
    out = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        g = Generator(**cfg).eval()
        z = torch.randn(1, cfg["style_dim"])
        entry = {"config": cfg, "params": sum(p.numel() for p in g.parameters())}
        impls = ("fast",) if name.startswith("1024") else ("reference", "fast")
        for impl in impls:
            set_impl(g, impl)
            entry[f"{impl}_s_per_image"] = _time_forward(lambda: g([z]), repeats)
        out[name] = entry
        del g
    return out


def bench_e4e(repeats: int) -> dict:
    torch.manual_seed(0)
    enc = Encoder4Editing(EncoderConfig()).eval()
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    return {"input": 256, "params": sum(p.numel() for p in enc.parameters()), "s_per_image": _time_forward(lambda: enc(x), repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/benchmarks/nets.json", help="JSON file to write")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = _now()
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_step_64px": bench_train_step(args.repeats),
        "generator_forward": bench_generator(args.repeats),
        "e4e_forward_256": bench_e4e(args.repeats),
    }
    result["total_bench_s"] = _now() - t0
    write_json(args.out, result)
    print(f"wrote {args.out}: train step ref {result['train_step_64px']['reference']['step_with_lazy_r1_s']:.2f} s, "
          f"fast {result['train_step_64px']['fast']['step_with_lazy_r1_s']:.2f} s; "
          f"G 1024 {result['generator_forward']['1024_config_f']['fast_s_per_image']:.2f} s/img; "
          f"e4e {result['e4e_forward_256']['s_per_image']:.2f} s/img")


if __name__ == "__main__":
    main()
