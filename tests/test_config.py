import pytest

from sdlib import config as cfgmod
from sdlib.cli import build_parser, main
from sdlib.config import ConfigError, EvalConfig, OnPolicyConfig, TrainConfig, from_dict


def test_unknown_parameter_gets_a_suggestion():
    with pytest.raises(ConfigError, match="unknown parameter 'step' .*did you mean 'steps'"):
        from_dict(TrainConfig, {"step": 3})


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("steps", "ten", "expected int"),
        ("lr", "1e-4", "expected float"),  # YAML 1.1 reads 1e-4 as a string: say so
        ("data", "synthetic:addition", "expected list"),
        ("few_shot", 1, "expected bool"),
        ("steps", True, "expected int"),
    ],
)
def test_wrong_types_name_field_value_and_expectation(key, value, expected):
    with pytest.raises(ConfigError, match=f"TrainConfig.{key} = .*{expected}"):
        from_dict(TrainConfig, {key: value})


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"algo": "ppo"}, "algo = 'ppo'"),
        ({"teacher": "frozen"}, "teacher = 'frozen'"),
        ({"alpha": 1.5}, "alpha = 1.5"),
        ({"prompts_per_step": 6, "prompts_per_update": 4}, "not a multiple"),
        ({"steps": 0}, "steps = 0"),
        ({"grader": "lenient"}, r"grader = 'lenient'; expected one of \['careful', 'reference'\]"),
    ],
)
def test_values_out_of_range_are_rejected(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        from_dict(TrainConfig, values)


def test_nested_training_overrides_are_checked_with_their_context():
    with pytest.raises(ConfigError, match="in sdpo: unknown parameter 'alpah'"):
        from_dict(OnPolicyConfig, {"sdpo": {"alpah": 0.5}})
    with pytest.raises(ConfigError, match="train = 3"):
        from_dict(OnPolicyConfig, {"train": 3})


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("steps: 4\nlr: 3.0e-4\n")
    cfg = cfgmod.load(TrainConfig, path, {"steps": 7})
    assert (cfg.steps, cfg.lr) == (7, 3e-4)
    assert cfgmod.parse_override("data=[a, b]") == ("data", ["a", "b"])
    with pytest.raises(ConfigError, match="key=value"):
        cfgmod.parse_override("steps")


def test_cli_help_comes_from_the_schema(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "sdpo", "--help"])
    text = capsys.readouterr().out
    doc = TrainConfig.__dataclass_fields__["is_clip"].metadata["help"]
    assert "--is-clip" in text and doc.split(";")[0] in " ".join(text.split())


def test_cli_reports_bad_parameters_with_exit_2(capsys):
    assert main(["eval", "--k", "0"]) == 2
    assert "k = 0" in capsys.readouterr().err
    assert main(["run", "all", "--preset", "smoke", "-p", "nonsense", "1"]) == 2


def test_eval_config_defaults_are_valid():
    cfg = from_dict(EvalConfig, {})
    assert cfg.k >= 1 and cfg.data


def test_context_band_must_fit_the_screening():
    from sdlib.config import ContextConfig

    with pytest.raises(ConfigError, match="band = \\[3, 9\\]"):
        from_dict(ContextConfig, {"band": [3, 9], "select_k": 8})
    with pytest.raises(ConfigError, match="band = \\[4, 1\\]"):
        from_dict(ContextConfig, {"band": [4, 1]})


def test_a_training_run_grades_by_its_experiments_rules_and_is_keyed_by_them():
    from sdlib.experiments.training import config

    exp = from_dict(OnPolicyConfig, {"grader": "reference"})
    assert config(exp, "grpo", ["synthetic:addition:1:8"]).grader == "reference"
    with pytest.raises(ConfigError, match="grader = 'exact'"):
        from_dict(EvalConfig, {"grader": "exact"})
