"""Archs: one registered object per model architecture, owning everything the harness asks of it.

An arch says how to build its model (`create`), what its inputs are (`inputs`: image size, tokenizer, context
length), which weights it starts from by default, how it fine-tunes by default (`train_defaults`, applied first
when settings are resolved, fairbench.training.settings), which parameters a towers-only protocol leaves frozen
(`frozen`) and, for an arch without published weights, how fairbench pretrains its start (`pretraining`).

`b16`/`l14` are the OpenAI ViT-B/16 and ViT-L/14 the papers fine-tune (QuickGELU, as OpenAI trained them);
`tiny` is a small CLIP that trains on a CPU in seconds for demos and tests; it has no published weights, so
its default start is a CLIP pretraining on the run's dataset's pretraining set, built once
(fairbench.training.pretrain). Any other open_clip model name is accepted as an arch of its own
(`get_arch`). An arch is registered like every named kind (`register_arch`), and its name follows the one
naming rule (it names run folders). This module imports neither torch nor open_clip at module level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fairbench.registry import ARCHS, check_name

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

# `default_weights` of archs whose default weights fairbench.training.pretrain builds (no hub has them).
PRETRAINED_HERE = "fairbench-pretraining"

# The CLIP parameters FairCLIP's fine-tuning leaves frozen: its optimiser holds only `model.transformer` and
# `model.visual` (FairCLIP, finetune_FairCLIP.py), so the logit scale, token and positional embeddings, the
# final LayerNorm and the text projection keep their pretrained values. Parameters a method adds (e.g. MoE
# layers outside the towers) are not in this list and train.
CLIP_FROZEN: tuple[str, ...] = ("logit_scale", "token_embedding", "positional_embedding", "ln_final",
                                "text_projection")

# The same rule per tower family, as the parameter paths each family gives those parts (research-21 §2.3): the
# logit scale, the text tower's token and position embeddings, its final norm and its projection stay as loaded;
# everything else in the two towers trains (the whole image tower, its projection head included, as FairCLIP's
# optimiser holds all of `model.visual`).
#  - "openai": open_clip.CLIP (OpenAI layout: the text tower's parts are attributes of the CLIP module itself);
#  - "open_clip-text": CustomTextCLIP with open_clip's own TextTransformer under `text.`;
#  - "hf-text": CustomTextCLIP with a Hugging Face (BERT-style) text tower, BiomedCLIP's layout. BERT's embeddings
#    module (word, position and token-type embeddings and its LayerNorm) is frozen whole: it is the embedding stage
#    OpenAI's `token_embedding` + `positional_embedding` correspond to; BERT has no final text norm (it is post-LN);
#    the projection is open_clip's `text.proj` (a Linear or an MLP).
TOWER_FROZEN: dict[str, tuple[str, ...]] = {
    "openai": CLIP_FROZEN,
    "open_clip-text": ("logit_scale", "text.token_embedding", "text.positional_embedding", "text.ln_final",
                       "text.text_projection"),
    "hf-text": ("logit_scale", "text.transformer.embeddings", "text.proj"),
}
# open_clip prefixes of models it loads from a folder or the Hugging Face hub rather than by name
MODEL_SCHEMAS = ("local-dir:", "hf-hub:")


class ArchError(ValueError):
    """An arch that cannot be used as given (a local-dir: folder without a config, a missing optional dependency);
    the message is one line naming the fix."""


def tower_family(model_cfg: dict[str, Any]) -> str:
    """The text tower family of an open_clip model config (see TOWER_FROZEN)."""
    text = model_cfg.get("text_cfg") or {}
    if text.get("hf_model_name"):
        return "hf-text"
    if model_cfg.get("custom_text"):
        return "open_clip-text"
    return "openai"


def frozen_parts(model_cfg: dict[str, Any]) -> tuple[str, ...]:
    """What a towers-only protocol freezes in a model of this config: its family's parts, plus the logit bias of a
    model that has one (SigLIP-style)."""
    parts = TOWER_FROZEN[tower_family(model_cfg)]
    return parts + ("logit_bias",) if model_cfg.get("init_logit_bias") is not None else parts

# Real backbones train with the FairCLIP protocol (TrainSettings' defaults) and keep the selected weights.
PROTOCOL_TRAIN_DEFAULTS: dict[str, Any] = {"checkpoint": True}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found or downloaded."""


@dataclass(frozen=True)
class PretrainRecipe:
    """CLIP pretraining hyperparameters of an arch fairbench pretrains itself (AdamW, every parameter trainable).

    The defaults are `tiny`'s: AdamW 1e-3 at batch 64 with a short warm-up reached zero-shot AUC 0.84–0.91 in 4
    epochs of 1,500 synthetic pairs in the feasibility study behind the synthetic dataset. Every field enters the
    checkpoint's key (fairbench.training.pretrain), so a changed recipe is a new checkpoint and new run folders.
    """

    OPTIMIZER: ClassVar[str] = "adamw"

    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.1
    warmup_steps: int = 30
    seed: int = 0
    max_steps_per_epoch: int = 0  # 0 = full epochs (tests shorten it)

    def optimizer_settings(self) -> dict[str, Any]:
        """The optimiser part of the recipe as trainer settings: what fine-tuning from this start reuses."""
        keep = ("batch_size", "lr", "betas", "eps", "weight_decay", "warmup_steps")
        return {"optimizer": self.OPTIMIZER, **{k: v for k, v in asdict(self).items() if k in keep}}

    def train_settings(self) -> dict[str, Any]:
        """Every trainer setting the pretraining run uses (the trainer's defaults fill the rest)."""
        return {**self.optimizer_settings(), "epochs": self.epochs, "max_steps_per_epoch": self.max_steps_per_epoch}


@dataclass(frozen=True)
class InputSpec:
    """What the data pipeline needs from an arch (image size, tokenizer), known without building the model."""

    model_name: str
    image_size: int
    tokenize: Callable[[list[str]], torch.Tensor]
    tokenizer_key: str


@dataclass(frozen=True)
class Arch:
    """An open_clip CLIP model by name. Subclass it (overriding `inputs`, `create`, `check_hub_weights`) for a model
    open_clip does not know by name; register an instance with `register_arch`.

    default_weights  an open_clip tag ("openai"), PRETRAINED_HERE (built by fairbench.training.pretrain with the
                     `pretraining` recipe), or None (random init)
    train_defaults   trainer settings of this arch, applied before the protocol's (fairbench.training.settings)
    frozen           attributes of the CLIP module that a towers-only protocol leaves as loaded
    step_tflop_b32   FLOPs of one CLIP train step (forward + backward) at batch 32, counted with
                     torch.utils.flop_counter; used only to warn how long a CPU run would take (None: no warning)
    """

    name: str
    description: str
    model_name: str
    default_weights: str | None = "openai"
    train_defaults: dict[str, Any] = field(default_factory=lambda: dict(PROTOCOL_TRAIN_DEFAULTS))
    frozen: tuple[str, ...] = CLIP_FROZEN
    step_tflop_b32: float | None = None
    pretraining: PretrainRecipe | None = None
    family: str = "openai"  # the text tower family (TOWER_FROZEN): which swap points and LoRA targets exist

    @property
    def folder(self) -> str:
        """The run-folder name part of this arch (its name; a slug for `local-dir:` / `hf-hub:` models)."""
        return self.name

    def inputs(self) -> InputSpec:
        """The input pipeline, read from open_clip's config: cheap even for ViT-L/14."""
        import open_clip

        config = open_clip.get_model_config(self.model_name)
        if config is None:
            raise ValueError(f"arch {self.name!r}: open_clip has no model {self.model_name!r} "
                             "(see open_clip.list_models())")
        tokenizer = open_clip.get_tokenizer(self.model_name)
        size = config["vision_cfg"].get("image_size", 224)
        context = getattr(tokenizer, "context_length", None) or config.get("text_cfg", {}).get("context_length", 77)
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        return InputSpec(self.model_name, size, tokenizer, f"{type(tokenizer).__name__}-{context}")

    def create(self, weights: str | None) -> nn.Module:
        """The model with open_clip hub weights `weights` (a tag), or randomly initialised for None."""
        import open_clip

        if weights:
            return from_hub(self.model_name, weights)
        with quiet_root_logger():  # open_clip warns on the root logger that the init is random; that is the intent
            return open_clip.create_model(self.model_name, pretrained=None)

    def check_hub_weights(self, tag: str) -> str:
        """Make sure open_clip knows `tag` for this model and can get it (downloaded or cached); a description."""
        import open_clip

        cfg = open_clip.pretrained.get_pretrained_cfg(self.model_name, tag)
        if not cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(self.model_name)) or "none"
            raise WeightsUnavailableError(f"open_clip has no weights {tag!r} for {self.model_name} (known: {tags}); "
                                          "pass one of those or --pretrained /path/to/checkpoint")
        try:
            with quiet_root_logger():
                path = open_clip.pretrained.download_pretrained(cfg)
        except Exception as exc:
            raise hub_error(self.model_name, tag, exc) from None
        if not path:
            raise hub_error(self.model_name, tag, RuntimeError("no download source"))
        return f"open_clip weights {tag!r}"

    @property
    def builds_default_weights(self) -> bool:
        """Whether the default weights come from fairbench.training.pretrain (no hub has them)."""
        return self.default_weights == PRETRAINED_HERE


# `tiny`'s model: in the feasibility study behind the synthetic dataset it reached zero-shot AUC 0.84–0.91.
TINY_CFG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 48, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}


@dataclass(frozen=True)
class TinyCLIP(Arch):
    """A CLIP of fairbench's own configuration (`TINY_CFG`) with OpenAI's BPE tokenizer; no hub has its weights."""

    def inputs(self) -> InputSpec:
        import open_clip

        context = TINY_CFG["text_cfg"]["context_length"]
        tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=context)
        size = TINY_CFG["vision_cfg"]["image_size"]
        return InputSpec(self.model_name, size, tokenizer, f"{type(tokenizer).__name__}-{context}")

    def create(self, weights: str | None) -> nn.Module:
        import open_clip

        if weights:
            raise ValueError(self._no_hub(weights))
        return open_clip.CLIP(**TINY_CFG)

    def check_hub_weights(self, tag: str) -> str:
        raise WeightsUnavailableError(self._no_hub(tag))

    def _no_hub(self, tag: str) -> str:
        return (f"arch {self.name!r} has no hub weights ({tag!r}); it trains from random init (--pretrained none) "
                "or loads a local checkpoint file")


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """open_clip logs on the root logger (a random init, its own error before raising); our messages say it all."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def from_hub(model_name: str, tag: str) -> nn.Module:
    import open_clip

    try:
        with quiet_root_logger():  # open_clip logs its own ERROR line before raising; ours says it all
            return open_clip.create_model(model_name, pretrained=tag, require_pretrained=True)
    except Exception as exc:  # network off, unknown tag, hub error: all need the same advice
        raise hub_error(model_name, tag, exc) from None


def hub_error(model_name: str, tag: str, exc: BaseException) -> WeightsUnavailableError:
    detail = (str(exc).strip().splitlines() or [""])[0]
    offline = "; HF_HUB_OFFLINE=1 is set" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    return WeightsUnavailableError(
        f"cannot get {model_name} weights {tag!r} ({type(exc).__name__}: {detail}{offline}). Download them where "
        "the network allows, or pass --pretrained /path/to/checkpoint (.pt/.pth/.bin/.safetensors); "
        "`--arch tiny` runs without weights.")


@dataclass(frozen=True)
class SchemaArch(Arch):
    """An open_clip model loaded from a folder (`local-dir:PATH`) or the Hugging Face hub (`hf-hub:ORG/REPO`), e.g.
    BiomedCLIP. Its default weights are the ones shipped with it (open_clip loads them and ignores a tag); `None`
    is a random init of the same config. The folder's (or repo's) open_clip_config.json says everything else."""

    def inputs(self) -> InputSpec:
        import open_clip

        config = self.model_config()
        try:
            tokenizer = open_clip.get_tokenizer(self.model_name)
        except Exception as exc:  # a missing tokenizer file, or no network for a hub tokenizer
            raise ArchError(f"arch {self.name!r}: cannot load its tokenizer ({type(exc).__name__}: "
                            f"{_first_line(exc)}); a local-dir: folder needs the tokenizer files beside its "
                            "config") from None
        size = config["vision_cfg"].get("image_size", 224)
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        context = getattr(tokenizer, "context_length", None) or config.get("text_cfg", {}).get("context_length", 77)
        return InputSpec(self.model_name, size, tokenizer, f"{type(tokenizer).__name__}-{context}")

    def model_config(self) -> dict[str, Any]:
        import open_clip

        try:
            config = open_clip.get_model_config(self.model_name)
        except Exception as exc:
            raise ArchError(f"arch {self.name!r}: cannot read its open_clip config ({type(exc).__name__}: "
                            f"{_first_line(exc)})") from None
        if not config:
            raise ArchError(f"arch {self.name!r}: no open_clip model config found")
        return config

    def create(self, weights: str | None) -> nn.Module:
        import open_clip

        with quiet_root_logger():
            if weights:  # the weights shipped with the folder / repo
                return open_clip.create_model(self.model_name)
            # a random init of the config: no CLIP checkpoint and no pretrained HF text tower (research-21 §3)
            return open_clip.create_model(self.model_name, load_weights=False, pretrained_text=False)

    def check_hub_weights(self, tag: str) -> str:
        if tag != SHIPPED_WEIGHTS:
            raise WeightsUnavailableError(f"arch {self.name!r} loads the weights shipped with it (--pretrained "
                                          f"default), none (random init) or a local checkpoint file, not {tag!r}")
        if self.model_name.startswith("local-dir:"):
            folder = Path(self.model_name.removeprefix("local-dir:"))
            found = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth")]
            if not found:
                raise WeightsUnavailableError(f"arch {self.name!r}: no weights (*.safetensors, *.bin, *.pth) in "
                                              f"{folder}; add them or run with --pretrained none")
        return f"the weights shipped with {self.model_name}"

    @property
    def folder(self) -> str:
        import hashlib

        schema, _, where = self.model_name.partition(":")
        tail = re.sub(r"[^A-Za-z0-9._-]", "-", where.rstrip("/").rsplit("/", 1)[-1])[:40].strip("-._") or "model"
        return f"{schema}-{tail}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"


# `default_weights` of a SchemaArch: the weights that come with the folder or hub repo
SHIPPED_WEIGHTS = "shipped"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401 - the [hf] extra; open_clip builds HF text towers with it
    except ImportError:
        return False
    return True


def schema_arch(name: str) -> SchemaArch:
    """The arch of a `local-dir:` / `hf-hub:` model name, checked: a folder must exist and hold open_clip's config,
    and a Hugging Face text tower needs `transformers` (the `[hf]` extra)."""
    if name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:")).expanduser()
        if not folder.is_dir():
            raise ArchError(f"arch {name!r}: folder {folder} not found; pass local-dir:/path/to/model_folder")
        if not (folder / "open_clip_config.json").is_file():
            raise ArchError(f"arch {name!r}: {folder} has no open_clip_config.json; a local-dir: model needs "
                            "open_clip's config file (with model_cfg) beside its weights, as its hub repo has it")
        name = f"local-dir:{folder.resolve()}"
    arch = SchemaArch(name=name, description=f"open_clip model {name}", model_name=name,
                      default_weights=SHIPPED_WEIGHTS)
    config = arch.model_config()
    family = tower_family(config)
    if family == "hf-text" and not _has_transformers():
        raise ArchError(f"arch {name!r} has a Hugging Face text tower ({config['text_cfg']['hf_model_name']}), which "
                        "needs transformers: pip install 'fairbench-medvlm[hf]'")
    return dataclasses.replace(arch, frozen=frozen_parts(config), family=family)


def register_arch(arch: Arch) -> Arch:
    """Make `arch` available as `--arch NAME`."""
    return ARCHS.add(arch)


def get_arch(name: str) -> Arch:
    """The registered arch `name`, or an arch of its own for any other open_clip model name; an UnknownNameError
    (one line, with close names) for anything else, an InvalidNameError for a name that cannot name a folder."""
    if name in ARCHS:
        return ARCHS.get(name)
    if isinstance(name, str) and name.startswith(MODEL_SCHEMAS):
        return schema_arch(name)
    check_name("arch", name)
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:
        ARCHS.get(name)  # raises the registry's unknown-name error
    return Arch(name=name, description=f"open_clip model {name}", model_name=name, default_weights=None,
                frozen=frozen_parts(config), family=tower_family(config))


def arch_folder(name: str) -> str:
    """The run-folder part for arch `name` (a slug for local-dir: / hf-hub: models, the name itself otherwise)."""
    if isinstance(name, str) and name.startswith(MODEL_SCHEMAS):
        return get_arch(name).folder
    return name


def list_archs() -> list[str]:
    return ARCHS.names()


# Fine-tuning from tiny's pretrained start (fairbench.training.pretrain), towers only under the default protocol,
# with the pretraining's own optimiser recipe: the values measured to keep every seed of clip, fairclip and fairmoe
# at test AUC ≥ 0.85 on the default synthetic data within the demo's time budget (CHANGELOG).
TINY_PRETRAINING = PretrainRecipe()
register_arch(TinyCLIP(
    "tiny", "CLIP, 64 px, 3+3 layers, width 128, pretrained once on the dataset's pretraining set (CPU demos/tests)",
    model_name="fairbench-tiny", default_weights=PRETRAINED_HERE, pretraining=TINY_PRETRAINING,
    train_defaults={**TINY_PRETRAINING.optimizer_settings(), "epochs": 2, "eval_batch_size": 512}))
register_arch(Arch("b16", "OpenAI CLIP ViT-B/16 (QuickGELU)", model_name="ViT-B-16-quickgelu", step_tflop_b32=3.96))
register_arch(Arch("l14", "OpenAI CLIP ViT-L/14 (QuickGELU)", model_name="ViT-L-14-quickgelu", step_tflop_b32=16.9))
