"""What verifying content digests costs, as a share of one training epoch of the CPU demo, measured side by side.

    PYTHONPATH=. python bench/bench_digest.py [--repeats 5]

The demo: `fairbench run --method clip` on the default synthetic FairVLMed (1,500 / 400 / 1,000 samples), arch
`tiny` at its defaults (batch 64, 64 px). In one process this script
  1. trains one epoch of that run (random init: the weights do not change the time) and keeps its training state;
  2. times every check fairbench makes on the way (median of --repeats):
       per job, warm cache   the data files' content key (a stat per file, SHA-256s remembered), the cached meta.json
                             digest, the image and token caches' SHA-256 against their .sha256, the cached synthetic
                             sets against their markers, the pretrained weights' SHA-256 (a file of tiny's size);
       per epoch             the training state's digest when it is saved (and once more on a resume);
       first use             hashing every data file once (a new or changed dataset), for reference;
and prints each as seconds and as a share of the epoch. The two run in the same process on the same machine, so a
busy machine slows both; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch
    from safetensors.torch import save

    from fairbench.datasets.cache import CACHE_VERSION, FileDigests, SplitCache, cache_root
    from fairbench.datasets.fairvlmed.format import SPLITS, list_split_files, split_dir
    from fairbench.datasets.fairvlmed.synth import _damage, default_synthetic_dataset, pretraining_synthetic_dataset
    from fairbench.digests import check_sidecar, file_sha256, value_digest
    from fairbench.models import create_backbone
    from fairbench.registry import load_plugins
    from fairbench.runs.execute import execute
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan
    from fairbench.runs.state import _non_finite, _to_plain, load_state
    from fairbench.training.settings import resolve_train_settings

    load_plugins()
    data = default_synthetic_dataset()  # generated once into the cache (about a minute the first time)
    pretraining_set = pretraining_synthetic_dataset()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        options = RunOptions(out=work / "out", data=str(data), pretrained=None, epochs=1,
                             overrides={"keep_state": "true"}, cache_dir=work / "cache")
        (planned,) = plan(options, expand_jobs(["clip"], ["tiny"], None, [0]))
        epochs: list[dict] = []
        result = execute(planned, log=lambda _: None, on_epoch=epochs.append)
        assert result.status == "done", result.message
        epoch_s = epochs[0]["train_seconds"]
        settings = planned.train_settings()

        store = cache_root(work / "cache")
        folders = {s: split_dir(data, s) for s in SPLITS}
        files = {s: list_split_files(folders[s]) for s in SPLITS}
        caches = {s: SplitCache(store, "fairvlmed", folders[s], s, files[s]) for s in SPLITS}
        cached = [p for c in caches.values() for p in c.dir.glob("*.npy")]
        metas = [c.dir / "meta.json" for c in caches.values()]

        def data_key() -> None:
            for s in SPLITS:
                FileDigests(caches[s].dir.parent / "index" / f"bench-{s}.digests.json", folders[s]).of(files[s])

        data_key()  # fill the memo once: the timed calls are the warm path every later run takes

        def meta_digests() -> None:
            import json

            for meta in metas:
                body = json.loads(meta.read_text())
                value_digest([body["key"], body["files"], body["records"]])

        def cache_digests() -> None:
            for path in cached:
                check_sidecar(path)

        def synthetic_markers() -> None:
            for folder in (data, pretraining_set):
                assert _damage(folder) == ""

        weights = work / "weights.safetensors"
        model = create_backbone("tiny", pretrained=None).model
        weights.write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()}))

        state = load_state(planned.run_dir / "train_state.pt", planned.config_hash)
        body = _to_plain(state)

        def state_save_digest() -> None:
            value_digest(body)

        def state_load_checks() -> None:
            value_digest(body)
            _non_finite(body)

        def first_use() -> None:
            for s in SPLITS:
                for path in files[s]:
                    file_sha256(path)

        per_job = {
            "data files' content key (warm: a stat each)": _median_time(data_key, args.repeats),
            "cached meta.json digests": _median_time(meta_digests, args.repeats),
            "image and token caches vs .sha256": _median_time(cache_digests, args.repeats),
            "cached synthetic sets vs markers": _median_time(synthetic_markers, args.repeats),
            "pretrained weights vs provenance": _median_time(lambda: file_sha256(weights), args.repeats),
        }
        per_epoch = {"training state digest on save": _median_time(state_save_digest, args.repeats)}
        on_resume = _median_time(state_load_checks, args.repeats)
        cold = _median_time(first_use, max(1, args.repeats // 2))
        sizes = (sum(p.stat().st_size for p in cached) / 2**20, (planned.run_dir / "train_state.pt").stat().st_size
                 / 2**20, weights.stat().st_size / 2**20)

    n = {s: len(files[s]) for s in SPLITS}
    share = lambda t: f"{100 * t / epoch_s:6.2f} % of an epoch"  # noqa: E731
    print(f"demo epoch: clip on tiny, default synthetic FairVLMed ({n['train']}/{n['val']}/{n['test']} samples), "
          f"batch {settings.batch_size}, {torch.get_num_threads()} torch threads: {epoch_s:.2f} s "
          f"(cache v{CACHE_VERSION}, {len(cached)} .npy files, {sizes[0]:.1f} MB; state {sizes[1]:.1f} MB; "
          f"weights {sizes[2]:.1f} MB)")
    print("verification per job (warm cache), median of", args.repeats)
    for what, t in per_job.items():
        print(f"  {what:45} {t:8.4f} s  {share(t)}")
    total = sum(per_job.values())
    print(f"  {'all of them':45} {total:8.4f} s  {share(total)}")
    print("verification per epoch")
    for what, t in per_epoch.items():
        print(f"  {what:45} {t:8.4f} s  {share(t)}")
    print(f"  {'(once on a resume: digest + finiteness)':45} {on_resume:8.4f} s  {share(on_resume)}")
    demo_epochs = resolve_train_settings("tiny").epochs
    print(f"per job and epoch together (the demo's {demo_epochs} epochs): "
          f"{100 * (total / demo_epochs + sum(per_epoch.values())) / epoch_s:.2f} % of its training time")
    print(f"first use of a dataset (hashing every data file once): {cold:.3f} s  {share(cold)}")


if __name__ == "__main__":
    main()
