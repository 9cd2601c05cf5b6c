"""Config loader: YAML + key=value overrides into typed dataclasses; unknown keys are named."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from derain.config import ConfigError, load_config, save_config
from derain.train import TrainConfig


@dataclass
class Inner:
    rate: float = 0.1
    sizes: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    pair: tuple[float, float] = (0.9, 0.999)


def test_yaml_then_overrides(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: run\nsteps: 5\ninner:\n  rate: 0.5\n")
    cfg = load_config(Outer, cfg_file, ["steps=7", "inner.sizes=[3, 4]", "flag=true", "maybe={rate: 2e-1}"])
    assert cfg == Outer(name="run", steps=7, flag=True, inner=Inner(0.5, [3, 4]), maybe=Inner(rate=0.2))
    assert isinstance(cfg.inner.rate, float) and isinstance(cfg.pair, tuple)


@pytest.mark.parametrize(
    ("override", "message"),
    [("inner.rat=1", "inner.rat"), ("stepz=1", "stepz"), ("steps=1.5", "integer"), ("flag=maybe", "true/false"),
     ("inner=3", "mapping"), ("noequals", "key=value")],
)
def test_bad_overrides_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("inner:\n  rte: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*inner\.rte"):
        load_config(Outer, cfg_file)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_save_round_trip(tmp_path: Path) -> None:
    cfg = load_config(Outer, None, ["inner.rate=0.25", "pair=[0.5, 0.6]"])
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Outer, tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[2] / "configs").glob("*.yaml")))
def test_shipped_configs_load(name: str) -> None:
    """Every shipped config loads into the class of the command it is for (unknown keys would be errors)."""
    from downstream.joint import JointConfig
    from downstream.train_task import TaskTrainConfig, check_task_config
    from eval.bench import BenchConfig
    from eval.realism import RealismConfig

    path = Path(__file__).parents[2] / "configs" / name
    kinds = {"mspfn": TrainConfig, "prenet": TrainConfig, "bench": BenchConfig, "joint": JointConfig,
             "task": TaskTrainConfig, "realism": RealismConfig}
    kind = next((cls for prefix, cls in kinds.items() if name.startswith(prefix)), None)
    assert kind is not None, f"configs/{name}: add its config class to this test"
    cfg = load_config(kind, path)
    if kind is TrainConfig:
        assert cfg.model.name.startswith(name.split("_")[0])
    if kind is TaskTrainConfig:
        with pytest.raises(FileNotFoundError, match="data not found"):  # a valid config, up to the data's path
            check_task_config(cfg)


def test_paper_recipe_values() -> None:
    cfg = load_config(TrainConfig, Path(__file__).parents[2] / "configs" / "mspfn_rain13k.yaml")
    assert (cfg.model.name, cfg.batch_size, cfg.patch_size) == ("mspfn", 12, 96)
    assert (cfg.optim.lr, cfg.optim.decay_rate, cfg.optim.decay_steps, cfg.optim.min_lr) == (5e-4, 0.8, 20000, 1e-6)
    assert cfg.optim.betas == (0.9, 0.999) and cfg.loss.edge_weight == 0.05 and cfg.loss.eps == 1e-3


def test_paper_recipe_config_is_faithful() -> None:
    """configs/mspfn_rain13k.yaml: the official recipe in fp32, validation held out of train, tests at the end."""
    from derain.train import lr_at

    path = Path(__file__).resolve().parents[2] / "configs" / "mspfn_rain13k.yaml"
    cfg = load_config(TrainConfig, path, ["test.Test2800=null"])
    assert (cfg.model.name, cfg.amp, cfg.batch_size, cfg.patch_size, cfg.augment) == ("mspfn", False, 12, 96,
                                                                                     "dihedral")
    assert cfg.val is None and cfg.val_holdout == 200
    assert sorted(k for k, v in cfg.test.items() if v is not None) == ["Rain100H", "Rain100L", "Test100", "Test1200"]
    assert cfg.test["Test2800"] is None
    assert lr_at(0, cfg.optim) == pytest.approx(5e-4 + 1e-6)
    assert lr_at(300_000, cfg.optim) == pytest.approx(1.86e-5, rel=0.01)  # the figure the config's comment quotes


@pytest.mark.parametrize("value", ["{labels: a/det_{split}.json, images: a/{split}}", "[{name: a, path: b}",
                                   "{a: 1"])
def test_an_override_that_starts_like_yaml_flow_but_is_not_yaml_is_refused(value: str) -> None:
    """Issue 27 item 13: such a value was taken as a string ('data not found: {labels: ...}')."""
    with pytest.raises(ConfigError, match=r"override 'maybe=.*not valid YAML.*quote") as exc:
        load_config(Outer, None, [f"maybe={value}"])
    assert "\n" not in str(exc.value)


def test_plain_strings_that_are_not_yaml_stay_strings() -> None:
    assert load_config(Outer, None, ["name=a: b: c"]).name == "a: b: c"


def _documented_flow_values() -> list[tuple[str, str]]:
    """Every {...} path form in the README's dataset table and every data={...} example of train-task --help."""
    import re

    from derainbench.commands import train_task

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.split("### Dataset formats and real rain datasets", 1)[1].split("\n\n", 3)[2]
    found = [("README", m) for row in table.splitlines() for m in re.findall(r"`(\{[^`]*\})`", row)]
    found += [("train-task --help", m) for m in re.findall(r'"data=(\{.*\})"', train_task.HELP)]
    return found


def test_documented_flow_overrides_are_valid_yaml() -> None:
    """Issue 27 item 13: the documented forms were not YAML ({split} inside a flow mapping); each must parse to a
    mapping whose values keep their {split}."""
    from derain.config import apply_overrides

    examples = _documented_flow_values()
    assert len(examples) >= 4, examples
    for where, text in examples:
        value = apply_overrides({}, [f"data={text}"])["data"]
        assert isinstance(value, dict), (where, text)
        assert any("{split}" in str(v) for v in value.values()) or "{split}" not in text, (where, text)


def test_deeply_nested_yaml_names_the_file(tmp_path: Path) -> None:
    """Issue 27 item 15: 'maximum recursion depth exceeded' named no file."""
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep.yaml: not valid YAML \(nested too deeply"):
        load_config(Outer, tmp_path / "deep.yaml")
