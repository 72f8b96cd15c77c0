"""The trainer's GPU-throughput paths, checked on a CPU: where the training split lives (and that every placement
gathers the same batches), no host read inside an epoch, divergence still named by epoch and step, and the
compiled step (static shapes, partial batch eager, numbers as eager)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from fairbench.method import Method, SettingsError, encode_batch
from fairbench.training.feeder import DEVICE_DATA_ENV, Feeder, choose_placement, device_data_fraction, split_nbytes
from fairbench.training.step import resolve_compile
from fairbench.training.trainer import EpochPlan, GroupSampler, SplitData, TrainingDiverged, TrainSettings, train

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
GB = 1 << 30


class ToyCLIP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = torch.nn.Linear(3 * 4 * 4, 8)
        self.text = torch.nn.Embedding(16, 8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(1.0))

    def encode_image(self, x):
        return self.image(x.flatten(1))

    def encode_text(self, tokens):
        return self.text(tokens).mean(1)


class Toy(Method):
    """A contrastive loss plus a group term; no host read of its own. `nan_at` makes the n-th call's term NaN."""

    name = "toy"
    group_batches = True

    def __init__(self, nan_at: int | None = None, host_read: bool = False) -> None:
        super().__init__(None, "g", 2)
        self.calls, self.nan_at, self.host_read = 0, nan_at, host_read

    def group_batch_size(self):
        return 3

    def loss_terms(self, model, batch, group_batches):
        from fairbench.training.losses import clip_contrastive_loss

        image, text = encode_batch(model, batch)
        groups = sum(encode_batch(model, gb)[0].mean() for gb in group_batches.values())
        terms = {"contrastive": clip_contrastive_loss(image, text, model.logit_scale.exp()), "groups": 0.01 * groups}
        if self.calls == self.nan_at:
            terms["groups"] = terms["groups"] * torch.nan
        if self.host_read:
            float(terms["contrastive"])
        self.calls += 1
        return terms


def split(n: int, seed: int, gray: bool = False) -> SplitData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1 if gray else 3, 4, 4), dtype=torch.uint8, generator=g)
    if gray:
        images = images.expand(-1, 3, -1, -1)
    return SplitData(images=images, tokens=torch.randint(0, 16, (n, 5), generator=g), labels=torch.arange(n) % 2,
                     groups=torch.arange(n) % 2)


def toy_train(method: Method | None = None, n_train: int = 20, **settings):
    torch.manual_seed(7)
    model = ToyCLIP()
    # no gradient probe: its own loss_terms call per epoch would shift the calls these tests script and count
    base = {"epochs": 2, "batch_size": 6, "lr": 1e-2, "betas": (0.9, 0.99), "checkpoint": True, "grad_probe": False}
    return train(method or Toy(), model, TrainSettings(**{**base, **settings}), train_data=split(n_train, 1),
                 val_data=split(10, 2), test_data=split(12, 3), normalize=lambda x: x.float() / 255,
                 tokenize=lambda prompts: torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]), prompts=("a", "b"),
                 seed=3, device=CPU, auc=lambda labels, scores: float(scores[labels == 1].mean()))


def _strip(history):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in history]


# -- data placement

def test_placement_puts_a_split_on_the_gpu_only_when_it_fits_the_budget():
    assert choose_placement(GB, CPU, 0.5, free_bytes=100 * GB) == "host"  # never a copy on the CPU
    assert choose_placement(GB, CUDA, 0.5, free_bytes=100 * GB) == "device"
    assert choose_placement(50 * GB, CUDA, 0.5, free_bytes=100 * GB) == "device"  # exactly at the budget
    assert choose_placement(50 * GB + 1, CUDA, 0.5, free_bytes=100 * GB) == "pinned"
    assert choose_placement(GB, CUDA, 0.0, free_bytes=100 * GB) == "pinned"  # 0 disables


def test_the_split_is_counted_as_stored_and_the_environment_overrides_the_setting(monkeypatch):
    gray, rgb = split(10, 0, gray=True), split(10, 0)
    extra = 10 * 5 * 8 + 10 * 8 + 10 * 8  # tokens, labels, groups (int64)
    assert split_nbytes(gray) == 10 * 16 + extra and split_nbytes(rgb) == 10 * 48 + extra
    monkeypatch.delenv(DEVICE_DATA_ENV, raising=False)
    assert device_data_fraction(0.5) == 0.5
    monkeypatch.setenv(DEVICE_DATA_ENV, "0")
    assert device_data_fraction(0.5) == 0.0
    monkeypatch.setenv(DEVICE_DATA_ENV, "lots")
    with pytest.raises(ValueError, match=DEVICE_DATA_ENV):
        device_data_fraction(0.5)
    with pytest.raises(SettingsError, match="device_data"):
        TrainSettings(device_data=2.0)


@pytest.mark.parametrize("gray", [False, True])
def test_batches_gathered_on_the_device_equal_those_gathered_on_the_host(gray):
    data = split(23, 4, gray)
    norm = lambda x: x.float() / 255 - 0.5  # noqa: E731
    plans = {}
    for placement in ("host", "device"):  # "device" on a CPU runs the same gather code as on a GPU
        gen = torch.Generator().manual_seed(1)
        order = torch.randperm(23, generator=gen)
        sampler = GroupSampler(data.groups, 2, 3, gen)
        plans[placement] = EpochPlan(order, 4, 6, sampler, Feeder(data, CPU, norm, placement))
    host, device = plans["host"], plans["device"]
    assert host.steps == device.steps == [0, 1, 2, 3]
    for i in range(len(host.steps)):
        (a, ga), (b, gb) = host.batches(i), device.batches(i)
        for x, y in [(a, b), *((ga[g], gb[g]) for g in ga)]:
            assert all(torch.equal(getattr(x, f), getattr(y, f)) for f in ("images", "tokens", "labels", "groups"))
        assert set(ga) == {0, 1} and all(bool((ga[g].groups == g).all()) for g in ga)


def test_the_epoch_draws_group_batches_as_one_sampler_call_per_step_would():
    data = split(23, 4)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    per_step = GroupSampler(data.groups, 2, 5, gen_a)
    expected = [per_step.next() for _ in range(4)]
    plan = EpochPlan(torch.arange(23), 4, 6, GroupSampler(data.groups, 2, 5, gen_b), Feeder(data, CPU, lambda x: x))
    for i, want in enumerate(expected):
        _, groups = plan.batches(i)
        assert all(torch.equal(groups[g].labels, data.labels[want[g]]) for g in want)
    assert torch.equal(gen_a.get_state(), gen_b.get_state())


def test_training_with_the_split_on_the_device_matches_the_host(monkeypatch):
    import fairbench.training.trainer as trainer

    host = toy_train(n_train=23)
    monkeypatch.setattr(trainer, "choose_placement", lambda *a, **k: "device")
    device = toy_train(n_train=23)
    assert _strip(host.history) == _strip(device.history)
    assert all(torch.equal(host.state_dict[k], device.state_dict[k]) for k in host.state_dict)


# -- no host synchronisation inside an epoch

HOST_READS = {"item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu", "__format__"}


class HostReads(TorchFunctionMode):
    """Counts tensor calls that hand a value to Python (each one a wait for the device on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _host_reads(steps: int, method_factory) -> int:
    with HostReads() as reads:
        toy_train(method_factory(), n_train=60, max_steps_per_epoch=steps)
    return reads.count


def test_host_reads_do_not_grow_with_the_steps_of_an_epoch():
    few, many = _host_reads(2, Toy), _host_reads(7, Toy)
    assert few == many, f"{many - few} host reads for 5 more steps per epoch"
    # the counter sees a per-step read: a method that reads its loss each step is caught
    assert _host_reads(7, lambda: Toy(host_read=True)) - _host_reads(2, lambda: Toy(host_read=True)) == 2 * 5


def test_a_loss_that_goes_nan_names_its_epoch_step_and_terms():
    # 20 samples, batch 6: steps 0-3 per epoch; the 6th call is epoch 1, step 1
    with pytest.raises(TrainingDiverged, match=r"loss is not finite at epoch 1, step 1 \(contrastive=[0-9.]+, "
                                               r"groups=nan\); lower the learning rate"):
        toy_train(Toy(nan_at=5))


def test_a_step_that_fails_after_a_nan_still_reports_the_divergence():
    class Fragile(Toy):
        def loss_terms(self, model, batch, group_batches):
            if self.calls == 3:
                raise RuntimeError("NaN weights broke the method")
            return super().loss_terms(model, batch, group_batches)

    with pytest.raises(TrainingDiverged, match="epoch 0, step 1"):
        toy_train(Fragile(nan_at=1))


def test_per_epoch_means_and_total_are_the_terms_read_back_each_step():
    seen: list[dict[str, float]] = []

    class Recording(Toy):
        def loss_terms(self, model, batch, group_batches):
            terms = super().loss_terms(model, batch, group_batches)
            seen.append({k: float(v.detach()) for k, v in terms.items()})
            return terms

    out = toy_train(Recording(), n_train=23)  # 4 steps of 6 (the last of 5), 2 epochs
    for epoch in range(2):
        rows = seen[epoch * 4:(epoch + 1) * 4]
        want = {k: sum(r[k] for r in rows) / 4 for k in rows[0]}
        want["loss"] = sum(float(torch.tensor(r["contrastive"]) + torch.tensor(r["groups"])) for r in rows) / 4
        assert out.history[epoch]["train"] == pytest.approx(want, rel=1e-12)
        assert list(out.history[epoch]["train"]) == ["contrastive", "groups", "loss"]


# -- the compiled step

def test_compile_setting_values_and_defaults():
    assert TrainSettings().compile == "auto"
    assert resolve_compile("auto", CPU) is None  # eager on a CPU
    assert resolve_compile("auto", CUDA) == "default"
    assert resolve_compile("auto", CUDA, half_weights=True) is None
    assert resolve_compile("on", CPU) == "default" and resolve_compile("cudagraphs", CUDA) == "reduce-overhead"
    assert resolve_compile("off", CUDA) is None
    with pytest.raises(SettingsError, match="compile must be one of auto, off, on, cudagraphs, got 'fast'"):
        TrainSettings(compile="fast")
    with pytest.raises(ValueError, match="fp16-weights"):
        resolve_compile("cudagraphs", CUDA, half_weights=True)
    from fairbench.training.settings import resolve_train_settings

    assert resolve_train_settings("tiny", overrides={"compile": "off"}).compile == "off"


def test_compiled_step_matches_eager_and_the_partial_batch_never_compiles(monkeypatch):
    import fairbench.training.step as train_step

    graphs: list[tuple] = []

    def counting(gm, example_inputs):
        graphs.append(tuple(tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)))
        return gm.forward

    torch._dynamo.reset()
    eager = toy_train(n_train=23, compile="off")
    monkeypatch.setattr(train_step, "COMPILE_BACKEND", counting)
    compiled = toy_train(n_train=23, compile="on")  # 2 epochs of 3 full batches and one of 5
    assert graphs, "compile=on compiled nothing"
    full_only = len(graphs)
    torch._dynamo.reset()
    graphs.clear()
    toy_train(n_train=18, compile="on")  # full batches only: the same graphs
    assert len(graphs) == full_only
    assert not any(5 in shape[:1] for shape in graphs)
    for e, c in zip(eager.history, compiled.history, strict=True):
        assert c["train"] == pytest.approx(e["train"], rel=1e-5)
    assert all(torch.allclose(eager.state_dict[k], compiled.state_dict[k], rtol=1e-4, atol=1e-6)
               for k in eager.state_dict)
    torch._dynamo.reset()
