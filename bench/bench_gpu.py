"""GPU throughput of the trainer's step: ms/step, FLOPs, TFLOP/s and MFU per method and arch, eager against
compiled; an epoch of the real trainer loop against its steps alone; the aggregate throughput of 1, 2 and 4
processes sharing the device (`--runs-per-gpu`); and the projected GPU-hours of a study.

Each method trains at the protocol's batch (32 pairs, and one group batch of 32 per group of a 3-group attribute
for methods with group batches), random-init weights (no download), bf16 autocast on CUDA (fp32 on a CPU, as
the trainer does). The step is the trainer's own (`fairbench.training.step.TrainStep`); FLOPs are counted once per
step by torch.utils.flop_counter on the eager step (forward + backward; the optimiser step is not counted).

    PYTHONPATH=. python bench/bench_gpu.py                               # CUDA: b16 and l14, < 5 min on one H200
    PYTHONPATH=. python bench/bench_gpu.py --device cpu --arch tiny      # a CPU smoke run in well under a minute

`--budget-s` bounds the whole run: a measurement that would start after it is skipped and named as skipped.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

METHODS = ("clip", "fairclip", "fairmoe")
N_GROUPS = 3
STUDY_N_TRAIN = 7000  # FairVLMed's training split (Luo et al. 2024: 7,000 / 1,000 / 2,000)


@dataclass
class StepResult:
    ms: float
    flops: float
    compile_s: float = 0.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device, warmup: int, reps: int) -> float:
    """Median ms per call after `warmup` calls, timed with a device synchronisation around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def synthetic_split(backbone, n: int, seed: int = 0):
    """n random grayscale images (stored as the FairVLMed cache stores them), notes, labels and 3 groups."""
    from fairbench.training.trainer import SplitData

    g = torch.Generator().manual_seed(seed)
    size = backbone.image_size
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8).expand(-1, 3, -1, -1)
    labels = torch.randint(0, 2, (n,), generator=g)
    notes = [f"note {i}: cup-to-disc ratio 0.{i % 9 + 1}, {'glaucoma' if y else 'no glaucoma'}"
             for i, y in enumerate(labels.tolist())]
    return SplitData(images=images, tokens=backbone.tokenize(notes), labels=labels,
                     groups=torch.arange(n) % N_GROUPS)


def normalizer(backbone, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The backbone's uint8 → normalised float step, with mean/std already on `device` (no copy per batch)."""
    from fairbench.datasets import normalize_images

    mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1)
    return lambda x: normalize_images(x, mean, std)


def build(arch: str, name: str, device: torch.device, seed: int = 0):
    """The method, its model on `device` and the trainer settings of `arch` (random init)."""
    from fairbench.models import create_backbone
    from fairbench.registry import get_method
    from fairbench.training.settings import resolve_train_settings

    cls = get_method(name)
    method = cls(cls.Settings(), "race" if cls.uses_attribute else None, N_GROUPS if cls.uses_attribute else 0)
    torch.manual_seed(seed)
    backbone = create_backbone(arch, pretrained=None)
    model = method.build(backbone.model).to(device).train()
    return method, model, backbone, resolve_train_settings(arch)


def prepare_step(arch: str, name: str, device: torch.device, mode: str | None, batch: int, group_batch: int
                 ) -> Callable[[], None]:
    """One training step of `name` on `arch` as a call: the trainer's TrainStep on a fixed batch (and group
    batches), data already on the device."""
    from fairbench.training.feeder import Feeder
    from fairbench.training.step import TrainStep
    from fairbench.training.trainer import _make_optimizer, _unfrozen

    method, model, backbone, settings = build(arch, name, device)
    optimizer = _make_optimizer(_unfrozen(method.trainable_parameters(model), model, settings.frozen), settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    cuda = device.type == "cuda"
    step = TrainStep(method, model, optimizer, scheduler, device=device, compute=torch.bfloat16, mixed=cuda,
                     mode=mode)
    data = synthetic_split(backbone, max(batch, group_batch) * N_GROUPS, seed=1)
    feeder = Feeder(data, device, normalizer(backbone, device), "device" if cuda else "host")
    main = feeder.batch(torch.arange(batch))
    groups = {}
    if method.group_batches:
        size = method.group_batch_size() or group_batch
        groups = {g: feeder.batch(torch.nonzero(data.groups == g).flatten()[:size]) for g in range(N_GROUPS)}
    return lambda: step(main, groups)


def bench_step(arch: str, name: str, device: torch.device, mode: str | None, batch: int, group_batch: int,
               warmup: int, reps: int) -> StepResult:
    from torch.utils.flop_counter import FlopCounterMode

    run = prepare_step(arch, name, device, mode, batch, group_batch)
    compile_s = 0.0
    if mode is not None:
        sync(device)
        t0 = time.perf_counter()
        run()
        sync(device)
        compile_s = time.perf_counter() - t0
    flops = 0.0
    if mode is None:
        with FlopCounterMode(display=False) as counter:
            run()
        flops = float(counter.get_total_flops())
    return StepResult(ms=timed(run, device, warmup, reps), flops=flops, compile_s=compile_s)


def _concurrent_worker(arch: str, name: str, device: str, mode: str | None, batch: int, group_batch: int,
                       warmup: int, steps: int, threads: int, barrier, queue) -> None:
    """One of K processes sharing a device: warm up, wait for the others, then time `steps` steps."""
    try:
        from fairbench.registry import load_plugins

        torch.set_num_threads(threads)
        load_plugins()
        dev = torch.device(device)
        run = prepare_step(arch, name, dev, mode, batch, group_batch)
        for _ in range(warmup):
            run()
        sync(dev)
        barrier.wait(timeout=600)
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        sync(dev)
        queue.put(("ok", time.perf_counter() - t0))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent, which must not wait forever
        barrier.abort()
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def bench_runs_per_device(arch: str, name: str, device: torch.device, mode: str | None, batch: int,
                          group_batch: int, warmup: int, steps: int, k: int) -> float:
    """Aggregate steps per second of `k` processes training on one device at once (`--runs-per-gpu k`): each
    process warms up alone, all start timing together, the slowest one's time counts."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    threads = max(1, torch.get_num_threads() // k) if device.type == "cpu" else torch.get_num_threads()
    procs = [ctx.Process(target=_concurrent_worker, args=(arch, name, str(device), mode, batch, group_batch, warmup,
                                                          steps, threads, barrier, queue)) for _ in range(k)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [queue.get(timeout=900) for _ in range(k)]
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    errors = [msg for status, msg in outcomes if status != "ok"]
    if errors:
        raise RuntimeError(f"{k} processes on {device}: {errors[0]}")
    return k * steps / max(seconds for _, seconds in outcomes)


def bench_epoch(arch: str, name: str, device: torch.device, compile_setting: str, batch: int, steps: int
                ) -> float:
    """Seconds of the second epoch of `steps` steps through the real trainer loop (the first compiles)."""
    from fairbench.training.trainer import train

    method, model, backbone, settings = build(arch, name, device)
    settings.epochs, settings.batch_size, settings.max_steps_per_epoch = 2, batch, steps
    settings.compile, settings.eval_batch_size = compile_setting, 64
    train_split = synthetic_split(backbone, batch * steps, seed=2)
    small = synthetic_split(backbone, 64, seed=3)
    out = train(method, model, settings, train_data=train_split, val_data=small, test_data=small,
                normalize=normalizer(backbone, device), tokenize=backbone.tokenize, prompts=("no", "yes"),
                seed=0, device=device, auc=lambda labels, scores: 0.5)
    return out.history[1]["train_seconds"]


def study_runs(study_name: str) -> dict[str, dict[str, int]]:
    """arch → measured method → number of the study's runs it stands for (others map to the nearest measured)."""
    from fairbench.study import load_study, study_jobs

    study = load_study(study_name)
    counts: dict[str, dict[str, int]] = {}
    for job in study_jobs(study):
        family = job.method if job.method in ("clip", "fairclip") else "fairmoe"  # FO-MoE variants and ablations
        counts.setdefault(job.arch, {}).setdefault(family, 0)
        counts[job.arch][family] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default=None, help="comma-separated; default b16,l14 on CUDA, tiny on a CPU")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch", type=int, default=None, help="default 32 (the protocol's); 8 on a CPU")
    parser.add_argument("--group-batch", type=int, default=None, help="default 32; 8 on a CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default 3; 1 on a CPU")
    parser.add_argument("--reps", type=int, default=None, help="default 10; 3 on a CPU")
    parser.add_argument("--compile", default=None,
                        help="modes to compare, of off,on,cudagraphs; default off,on on CUDA, off on a CPU (inductor "
                             "compiles for minutes there: ask for on with --methods clip)")
    parser.add_argument("--epoch-steps", type=int, default=None, help="steps of the trainer-loop epoch (24; 3 on CPU)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H200: 989)")
    parser.add_argument("--study", default="fair-moe-paper")
    parser.add_argument("--project-from", default=None,
                        help="use this measured arch's times for every arch of the study (checks the projection's "
                             "arithmetic on a CPU; the hours it prints are then not a projection)")
    parser.add_argument("--runs-per-gpu", default=None,
                        help="process counts to compare on one device, e.g. 1,2,4 (default on CUDA; off on a CPU)")
    parser.add_argument("--concurrent-steps", type=int, default=None, help="timed steps per process (30; 3 on CPU)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=200.0,
                        help="skip measurements that would start later (a compile can take a minute past it)")
    args = parser.parse_args()
    cpu_default = args.device == "cpu"
    for key, gpu, cpu in (("batch", 32, 8), ("group_batch", 32, 8), ("warmup", 3, 1), ("reps", 10, 3),
                          ("epoch_steps", 24, 3), ("compile", "off,on", "off"), ("runs_per_gpu", "1,2,4", ""),
                          ("concurrent_steps", 30, 3)):
        if getattr(args, key) is None:
            setattr(args, key, cpu if cpu_default else gpu)
    if args.threads:
        torch.set_num_threads(args.threads)

    from fairbench.registry import load_plugins
    from fairbench.training.step import resolve_compile

    load_plugins()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    archs = (args.arch or ("b16,l14" if cuda else "tiny")).split(",")
    methods = args.methods.split(",")
    modes = args.compile.split(",")
    t_start = time.perf_counter()
    left = lambda: args.budget_s - (time.perf_counter() - t_start)  # noqa: E731
    skipped: list[str] = []
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}), torch {torch.__version__}, {'bf16 autocast' if cuda else 'fp32'}, "
          f"batch {args.batch}, group batch {args.group_batch} x {N_GROUPS} groups, random init, "
          f"median of {args.reps} after {args.warmup} warm-up", flush=True)
    header = f"{'arch':5} {'method':9} {'compile':10} {'ms/step':>9} {'GFLOP/step':>11} {'TFLOP/s':>8}"
    print(header + (f" {'MFU':>6}" if cuda else "") + f" {'compile s':>9}")
    results: dict[tuple[str, str, str], StepResult] = {}
    # eager first, for every arch, then each compiled mode: what --budget-s cuts is the most expensive part
    for setting in modes:
        for arch in archs:
            for method in methods:
                if left() <= 0:
                    skipped.append(f"step {arch}/{method}/{setting}")
                    continue
                r = bench_step(arch, method, device, resolve_compile(setting, device), args.batch, args.group_batch,
                               args.warmup, args.reps)
                eager = results.get((arch, method, "off"))
                r.flops = r.flops or (eager.flops if eager else 0.0)  # FLOPs are counted on the eager step
                results[(arch, method, setting)] = r
                tflops = r.flops / (r.ms * 1e-3) / 1e12
                line = f"{arch:5} {method:9} {setting:10} {r.ms:9.1f} {r.flops / 1e9:11.1f} {tflops:8.2f}"
                if cuda:
                    line += f" {tflops / args.peak_tflops:6.1%}"
                print(line + f" {r.compile_s:9.1f}", flush=True)
        for arch in archs:
            method = "fairclip" if (arch, "fairclip", setting) in results else methods[0]
            if (arch, method, setting) not in results:
                continue
            if left() <= 0:
                skipped.append(f"epoch {arch}/{method}/{setting}")
                continue
            epoch_s = bench_epoch(arch, method, device, setting, args.batch, args.epoch_steps)
            steps_s = args.epoch_steps * results[(arch, method, setting)].ms / 1e3
            print(f"{arch:5} {method:9} {setting:10} trainer epoch of {args.epoch_steps} steps {epoch_s:.2f} s vs "
                  f"steps alone {steps_s:.2f} s: x{epoch_s / steps_s:.2f}", flush=True)
            results[(arch, method, f"epoch:{setting}")] = StepResult(ms=epoch_s / steps_s, flops=0.0)
    if args.runs_per_gpu:
        concurrent(args, archs[0], device, results, left, skipped)
    project(args, archs, modes, results)
    print(f"total {time.perf_counter() - t_start:.0f} s" + (f"; skipped (over --budget-s): {', '.join(skipped)}"
                                                             if skipped else ""))


def concurrent(args: argparse.Namespace, arch: str, device: torch.device,
               results: dict[tuple[str, str, str], StepResult], left: Callable[[], float], skipped: list[str]) -> None:
    """Aggregate throughput of 1..K processes per device, for the group-batch method (the study's bulk) in the
    fastest compile mode measured above: does `--runs-per-gpu K` pay after the single-process work?"""
    from fairbench.training.step import resolve_compile

    methods = args.methods.split(",")
    method = "fairclip" if "fairclip" in methods else methods[0]
    measured = {m: r.ms for (a, n, m), r in results.items() if a == arch and n == method and ":" not in m}
    setting = min(measured, key=measured.get) if measured else "off"
    base = None
    for k in (int(x) for x in args.runs_per_gpu.split(",")):
        if left() <= 0:
            skipped.append(f"{k} processes {arch}/{method}/{setting}")
            continue
        rate = bench_runs_per_device(arch, method, device, resolve_compile(setting, device), args.batch,
                                     args.group_batch, args.warmup, args.concurrent_steps, k)
        base = base or (rate if k == 1 else None)
        ratio = f" = x{rate / base:.2f} of one process" if base else ""
        print(f"{arch:5} {method:9} {setting:10} {k} process(es) on one device: {rate:.1f} steps/s in all{ratio}",
              flush=True)


def project(args: argparse.Namespace, archs: list[str], modes: list[str],
            results: dict[tuple[str, str, str], StepResult]) -> None:
    """GPU-hours of the study's training steps: runs x epochs x steps x measured ms/step x epoch/steps ratio."""
    from fairbench.training.settings import resolve_train_settings

    try:
        runs = study_runs(args.study)
    except Exception as exc:  # noqa: BLE001 - the projection is optional
        print(f"no projection: study {args.study!r}: {exc}")
        return
    targets = [(a, a) for a in archs] if not args.project_from else [(args.project_from, a) for a in runs]
    for measured, arch in targets:
        counts = runs.get(arch)
        if not counts:
            print(f"projection: study {args.study!r} has no {arch} runs")
            continue
        settings = resolve_train_settings(arch)
        label = arch if measured == arch else f"{arch} (from {measured} times: arithmetic check only)"
        steps = math.ceil(STUDY_N_TRAIN / settings.batch_size)
        for setting in modes:
            ratio = results.get((measured, "fairclip", f"epoch:{setting}")) or results.get(
                (measured, args.methods.split(",")[0], f"epoch:{setting}"))
            have = {m: results[(measured, m, setting)].ms for m in counts if (measured, m, setting) in results}
            if len(have) < len(counts):
                print(f"projection {label} {setting}: not every method family measured "
                      f"({', '.join(sorted(counts))})")
                continue
            factor = ratio.ms if ratio else 1.0
            hours = sum(n * settings.epochs * steps * have[m] / 1e3 * factor for m, n in counts.items()) / 3600
            parts = ", ".join(f"{m} x{n}" for m, n in counts.items())
            print(f"projection {label} {setting}: {sum(counts.values())} runs ({parts}) x {settings.epochs} epochs x "
                  f"{steps} steps x epoch/steps {factor:.2f} = {hours:.2f} device-hours of training steps "
                  "(evaluation not included)")


if __name__ == "__main__":
    main()
