"""Registry: decorator registration, helpful unknown-name errors, wildcards, and every plugin path."""

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from fairbench import registry
from fairbench.method import Method, SettingsError, flat_settings, parse_settings, settings_dict
from fairbench.registry import (
    PluginError,
    UnknownMethodError,
    expand_methods,
    get_method,
    list_methods,
    load_plugin,
    load_plugins,
    register_method,
)
from tests.helpers import PLUGIN_SOURCE


def test_builtins_register_through_public_path():
    load_plugins()
    assert {"clip", "fairclip"} <= set(list_methods())
    assert get_method("fairclip").uses_attribute and not get_method("clip").uses_attribute


def test_unknown_method_suggests_close_names():
    load_plugins()
    with pytest.raises(UnknownMethodError, match=r"Did you mean 'fairclip'") as info:
        get_method("fairclp")
    assert "fairbench methods" in str(info.value)


def test_wildcards_and_comma_lists_expand_in_order_without_repeats():
    load_plugins()
    assert expand_methods("fairclip,clip,fairclip") == ["fairclip", "clip"]
    assert "fairclip" in expand_methods("fair*")
    with pytest.raises(UnknownMethodError, match="matches no registered method"):
        expand_methods("nomatch*")


def test_register_rejects_non_methods_and_duplicate_names():
    with pytest.raises(TypeError):
        register_method("not-a-method")(object)

    @register_method("dup-test-a")
    class A(Method):
        pass

    with pytest.raises(ValueError, match="already registered"):
        @register_method("dup-test-a")
        class B(Method):
            pass

    registry.METHODS.remove("dup-test-a")


def test_plugin_file_registers(tmp_path):
    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN_SOURCE.format(name="plugin-file-test"))
    load_plugin(str(path))
    cls = get_method("plugin-file-test")
    assert cls.description.startswith("test plugin")
    assert cls.settings_from({"weight": "2"}).weight == 2.0
    registry.METHODS.remove("plugin-file-test")


def test_plugin_module_and_env_var(tmp_path, monkeypatch):
    (tmp_path / "plugmod_env.py").write_text(PLUGIN_SOURCE.format(name="plugin-env-test"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(registry.PLUGIN_ENV, "plugmod_env")
    load_plugins()
    assert "plugin-env-test" in list_methods()
    registry.METHODS.remove("plugin-env-test")


def test_plugin_errors_name_the_plugin(tmp_path):
    with pytest.raises(PluginError, match="does not exist"):
        load_plugin(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match=r"broken.py.*boom"):
        load_plugin(str(broken))
    with pytest.raises(PluginError, match="could not be imported"):
        load_plugin("no_such_module_xyz")


@pytest.mark.slow
def test_entry_point_group(tmp_path):
    """A package that declares the `fairbench.methods` entry point is loaded without any flag."""
    pkg = tmp_path / "epplug"
    pkg.mkdir()
    (pkg / "epplug_methods.py").write_text(PLUGIN_SOURCE.format(name="plugin-entry-test"))
    dist = pkg / "epplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: epplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fairbench.methods]\nplug = epplug_methods\n")
    code = ("from fairbench.registry import load_plugins, list_methods; load_plugins(); "
            "print('plugin-entry-test' in list_methods())")
    env = {"PYTHONPATH": f"{pkg}:{':'.join(sys.path)}", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


def test_settings_parse_types_and_reject_unknown_keys():
    @dataclass
    class S:
        lam: float = 1.0
        n: int = 2
        flag: bool = False
        betas: tuple[float, float] = (0.1, 0.1)
        form: str = "a"

    s = parse_settings(S, {"lam": "1e-5", "n": "4", "flag": "true", "betas": "0.9,0.98", "form": "b"}, owner="x")
    assert (s.lam, s.n, s.flag, s.betas, s.form) == (1e-5, 4, True, (0.9, 0.98), "b")
    with pytest.raises(SettingsError, match="has no setting 'lamda'; settable: betas, flag, form, lam, n"):
        parse_settings(S, {"lamda": "1"}, owner="x")
    with pytest.raises(SettingsError, match="expects a int, got 'four'"):
        parse_settings(S, {"n": "four"}, owner="x")


def test_nested_settings_groups_parse_list_and_serialise():
    @dataclass
    class Inner:
        size: int = 3
        names: tuple[str, ...] = ("a", "b")

    @dataclass
    class S:
        lam: float = 1.0
        inner: Inner = field(default_factory=lambda: Inner(size=5))

    assert flat_settings(S) == {"lam": 1.0, "inner.size": 5, "inner.names": ("a", "b")}
    s = parse_settings(S, {"inner.names": "c", "lam": "2"}, owner="x")
    assert s == S(lam=2.0, inner=Inner(size=5, names=("c",)))  # the unset leaf keeps the group's own default
    assert settings_dict(s) == {"lam": 2.0, "inner": {"size": 5, "names": ["c"]}}
    assert flat_settings(s) == {"lam": 2.0, "inner.size": 5, "inner.names": ("c",)}
    with pytest.raises(SettingsError, match=r"no setting 'size' \(did you mean 'inner\.size'\?\); settable: inner"):
        parse_settings(S, {"size": "1"}, owner="x")
    with pytest.raises(SettingsError, match=r"no setting 'lam\.x'"):
        parse_settings(S, {"lam.x": "1"}, owner="x")
    with pytest.raises(SettingsError, match=r"'inner\.size' expects a int, got 'big'"):
        parse_settings(S, {"inner.size": "big"}, owner="x")
