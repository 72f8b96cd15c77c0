"""Backbones: archs by name, and every local checkpoint format loads exactly (or fails with advice)."""

import pytest
import torch

from fairbench.models import WeightsUnavailableError, create_backbone
from fairbench.models.backbones import read_checkpoint


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_backbone("tiny", pretrained=None)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_is_a_working_clip(tiny):
    assert tiny.image_size == 64 and tiny.tokenizer_key.endswith("-48")
    tokens = tiny.tokenize(["A photo of glaucoma", "A photo of non-glaucoma"])
    assert tokens.shape == (2, 48)
    img = tiny.model.encode_image(torch.randn(3, 3, 64, 64))
    txt = tiny.model.encode_text(tokens)
    assert img.shape == (3, 64) and txt.shape == (2, 64)
    assert 7e6 < sum(p.numel() for p in tiny.model.parameters()) < 8.5e6


@pytest.mark.parametrize("wrap", ["plain", "fairclip", "dataparallel", "scalar_logit_scale"])
def test_local_state_dict_formats_load_exactly(tiny, tmp_path, wrap):
    state = tiny.model.state_dict()
    if wrap == "fairclip":  # FairCLIP saves {'epoch', 'model_state_dict', 'optimizer_state_dict', 'loss'}
        obj = {"epoch": 3, "model_state_dict": state, "loss": 0.5}
    elif wrap == "dataparallel":
        obj = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "scalar_logit_scale":  # OpenAI stores logit_scale as a 0-d tensor
        obj = {**state, "logit_scale": state["logit_scale"].reshape(())}
    else:
        obj = state
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded = create_backbone("tiny", pretrained=str(path))
    assert same_weights(loaded.model, tiny.model)


def test_torchscript_archive_loads(tiny, tmp_path):
    """OpenAI distributes TorchScript `.pt` files; their state dict is read through torch.jit."""
    class Holder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            for name, child in model.named_children():
                self.add_module(name, child)
            self.positional_embedding = model.positional_embedding
            self.text_projection = model.text_projection
            self.logit_scale = model.logit_scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.logit_scale

    scripted = torch.jit.script(Holder(tiny.model))
    path = tmp_path / "ViT-tiny.pt"
    scripted.save(str(path))
    state = read_checkpoint(path)
    assert set(state) >= {"logit_scale", "visual.conv1.weight"}
    loaded = create_backbone("tiny", pretrained=str(path))
    assert same_weights(loaded.model, tiny.model)


def test_mismatched_checkpoint_names_the_problem(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(Exception, match=r"wrong.pth"):
        create_backbone("tiny", pretrained=str(path))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a pickled module, not tensors
    with pytest.raises(WeightsUnavailableError, match="safely"):
        read_checkpoint(path)


def test_no_weights_offline_gives_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"--pretrained /path/to/checkpoint.*--arch tiny"):
        create_backbone("b16")


def test_unknown_arch_and_tiny_with_hub_tag():
    with pytest.raises(ValueError, match="unknown arch 'vit-nope'"):
        create_backbone("vit-nope")
    with pytest.raises(ValueError, match="no hub weights"):
        create_backbone("tiny", pretrained="openai")


def test_b16_and_l14_are_quickgelu_openai_shapes():
    b16 = create_backbone("b16", pretrained=None)
    assert b16.image_size == 224
    assert type(b16.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert b16.model.visual.conv1.kernel_size == (16, 16)
    assert b16.model.text_projection.shape == (512, 512)
