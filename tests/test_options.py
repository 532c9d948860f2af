"""One source per option (issue #29): the config dataclasses' fields are the command lines' options, the
estimator's parameters, their defaults, help and checks."""
import dataclasses
import inspect

import pytest
import typer
from typer.testing import CliRunner

from extract.cli import app as extract_app
from extract.config import FinetuneConfig
from heads import InfluencerProfilerClassifier
from heads.cli import app as heads_app
from heads.config import FitConfig
from runtime.choices import Pooling
from runtime.errors import UserError


def _options(app, name: str) -> dict:
    command = typer.main.get_command(app).commands[name]
    return {p.name: p for p in command.params}


@pytest.mark.parametrize("app, name, cls", [(heads_app, "fit", FitConfig),
                                            (extract_app, "finetune-images", FinetuneConfig)])
def test_every_field_is_an_option_with_its_default_and_help(app, name, cls):
    options = _options(app, name)
    for f in dataclasses.fields(cls):
        assert f.name in options, f.name
        p = options[f.name]
        default = p.default.value if hasattr(p.default, "value") else p.default
        assert default == f.default, f.name
        assert p.help == f.metadata["help"] and p.help, f.name
        assert p.opts[0] == "--" + f.name.replace("_", "-")


def test_the_estimators_parameters_are_fit_configs_fields():
    params = inspect.signature(InfluencerProfilerClassifier).parameters
    fields = {f.name: f.default for f in dataclasses.fields(FitConfig) if f.name != "modality"}
    assert {k: params[k].default for k in fields} == fields
    assert set(params) - set(fields) == {"validation_fraction", "hidden"}
    assert InfluencerProfilerClassifier(lr=0.01).get_params()["lr"] == 0.01


def test_checks_name_the_option_and_choices_are_plain_strings():
    with pytest.raises(UserError, match=r"^--lr must be a number > 0.0 and <= 10.0, got 0$"):
        FitConfig(lr=0)
    with pytest.raises(UserError, match=r"^--pooling must be attention, mean; got 'max'$"):
        FitConfig(pooling="max")
    with pytest.raises(UserError, match=r"^--epochs must be a number >= 1"):
        FinetuneConfig(epochs=0)
    cfg = FitConfig(pooling=Pooling.mean, epochs=None)
    assert cfg.pooling == "mean" and type(cfg.pooling) is str and cfg.epochs is None
    cfg.max_steps = -1          # changed after creation: fit checks again
    from heads.train import fit
    with pytest.raises(UserError, match="--max-steps"):
        fit("/nonexistent.zarr", "/tmp/never-written", cfg)


def test_a_bad_option_on_the_command_line_is_one_error_line(tmp_path):
    r = CliRunner().invoke(heads_app, ["fit", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "run"),
                                       "--max-steps", "0"])
    assert r.exit_code != 0 and "error: --max-steps must be a number >= 1" in r.output
    assert not (tmp_path / "run").exists()
