"""`fairbench methods`: every setting readable in full at 80 columns, trainer settings included, and one
meaning per short flag across commands."""

from __future__ import annotations

import dataclasses

import typer
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.method import flat_settings
from fairbench.models.archs import get_arch
from fairbench.registry import get_method, list_methods, load_builtin_methods
from fairbench.training.settings import TrainSettings, resolve_train_settings

NARROW = {"COLUMNS": "80", "LINES": "50"}


def typed(value) -> str:
    """What a user types after `--set name=` (the reference the listing must show verbatim)."""
    if isinstance(value, tuple):
        return ",".join(typed(v) for v in value) if value else "(none)"
    return repr(value) if isinstance(value, float) else str(value)


def lines_of(*args: str) -> list[str]:
    result = CliRunner().invoke(app, ["methods", *args], env=NARROW)
    assert result.exit_code == 0, result.output
    return [line.strip() for line in result.output.splitlines()]


def test_settings_listing_at_80_columns_shows_every_default_in_full():
    load_builtin_methods()
    lines = lines_of("--settings")
    for name in list_methods():
        assert any(line.startswith(f"{name}:") for line in lines), name  # names are never cut either
        for key, value in flat_settings(get_method(name).Settings).items():  # nested groups as group.name
            assert f"{key} = {typed(value)}" in lines, (name, key)
    # fairclip's lambda was cut to "fair_lambda=1e-…" in the old table cell
    assert "fair_lambda = 1e-06" in lines


def test_trainer_settings_are_listed_with_each_archs_default():
    lines = lines_of("--settings")
    common = resolve_train_settings("b16")  # under the default protocol
    tiny = resolve_train_settings("tiny")
    for f in dataclasses.fields(TrainSettings):
        line = next(x for x in lines if x.startswith(f"{f.name} = "))
        value, tiny_value = typed(getattr(common, f.name)), typed(getattr(tiny, f.name))
        expected = f"{f.name} = {value}" + (f"  [tiny: {tiny_value}]" if tiny_value != value else "")
        assert line == expected
    assert "lr = 1e-05  [tiny: 0.001]" in lines and "checkpoint = True  [tiny: False]" in lines
    assert "frozen = logit_scale,token_embedding,positional_embedding,ln_final,text_projection" in lines
    fairclip = next(x for x in lines if x.startswith("--protocol fairclip sets:"))
    assert "select = test" in fairclip and "ties = later" in fairclip and "precision = fp16-weights" in fairclip


def test_one_method_by_name_shows_its_settings_and_unknown_name_fails():
    lines = lines_of("fairmoe-no-image-moe")
    assert "moe.towers = text" in lines and "moe.capacity = 0.8" in lines
    tiny_epochs = get_arch("tiny").train_defaults["epochs"]
    assert f"epochs = 10  [tiny: {tiny_epochs}]" in lines  # the trainer's settings come with it
    assert not any(line.startswith("fairmoe:") for line in lines)
    bad = CliRunner().invoke(app, ["methods", "fairmo"])
    assert bad.exit_code == 2 and "unknown method 'fairmo'" in bad.stderr and "Did you mean" in bad.stderr


def test_nested_settings_are_dotted_names(tmp_path):
    plugin = tmp_path / "nested_plugin.py"
    plugin.write_text('''
from dataclasses import dataclass, field

from fairbench import Method, register_method


@dataclass
class MoE:
    capacity: float = 0.8
    experts: int = 10


@register_method("nested-demo", description="a method whose settings nest")
class Nested(Method):
    @dataclass
    class Settings:
        weight: float = 0.5
        moe: MoE = field(default_factory=MoE)
        betas: tuple = (0.9, 0.98)
        form: str = "paper"
''')
    lines = lines_of("nested-demo", "--plugin", str(plugin))
    for expected in ("weight = 0.5", "moe.capacity = 0.8", "moe.experts = 10", "betas = 0.9,0.98", "form = paper"):
        assert expected in lines


def test_plain_listing_points_to_settings_and_drops_the_clashing_short_flag():
    result = CliRunner().invoke(app, ["methods"], env=NARROW)
    assert result.exit_code == 0 and "fairbench methods NAME" in result.output
    assert "fairmoe-no-image-moe" in result.output  # the name column no longer cuts names at 80 columns
    assert CliRunner().invoke(app, ["methods", "-s"]).exit_code == 2  # -s means --seeds (in `run`)


def _short_flags(command, path: str, seen: dict[str, set[tuple[str, str]]]) -> None:
    """Short flag → {(its long option, command)}; duck-typed, as typer may ship its own click."""
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            _short_flags(sub, f"{path} {name}", seen)
        return
    for param in command.params:
        if param.param_type_name != "option":
            continue
        longs = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
        for opt in param.opts:
            if len(opt) == 2 and opt.startswith("-"):
                seen.setdefault(opt, set()).add((longs[0] if longs else opt, path))


KNOWN_CLASHES: set[str] = set()


def test_each_short_flag_means_one_option_across_commands():
    seen: dict[str, set[tuple[str, str]]] = {}
    _short_flags(typer.main.get_command(app), "fairbench", seen)
    clashes = {opt: sorted(uses) for opt, uses in seen.items()
               if opt not in KNOWN_CLASHES and len({long for long, _ in uses}) > 1}
    assert not clashes
    assert {long for long, _ in seen["-s"]} == {"--seeds"}
    assert {long for long, _ in seen["-a"]} == {"--attr"}
