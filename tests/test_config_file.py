"""--config FILE (TOML, YAML) and the OUT/config.toml a run saves: read back, it repeats the run exactly;
the command line overrides the file; a bad key or value is one line naming the key, the value and the fix."""
import json
import sys

import pytest

from torchdecoupled import config_file
from torchdecoupled.cli import main
from torchdecoupled.config import RunConfig

TINY = ["--dataset", "digits", "--model", "mlp", "--epochs", "2", "--batch-size", "64", "--no-progress"]


def summary(out):
    return json.loads((out / "summary.json").read_text())


def saved(out) -> RunConfig:
    return config_file.to_config(config_file.read(str(out / "config.toml")))


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def fails_in_one_line(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_saved_config_repeats_the_run(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--out", str(a), *TINY, "--method", "adl", "--accumulate", "3", "--warmup", "0.5",
                 "--lr-schedule", "step", "--milestones", "1", "--stages", "2", "--seed", "4"]) == 0
    err = capsys.readouterr().err
    assert f"config (saved as {a / 'config.toml'}): method=\"adl\", accumulate=3, warmup_epochs=0.5" in err
    cfg = saved(a)
    assert cfg == RunConfig(method="adl", method_opts={"accumulate": 3, "warmup_epochs": 0.5}, stages=2,
                            dataset="digits", model="mlp", epochs=2, batch_size=64, lr=0.05, optimizer="sgd", lr_schedule="step",
                            milestones=(1,), seed=4, partition="params", out=str(a), progress=False)
    assert main(["train", "--config", str(a / "config.toml"), "--out", str(b)]) == 0
    assert summary(b)["params_sha256"] == summary(a)["params_sha256"]
    assert saved(b) == RunConfig(**{**cfg.__dict__, "out": str(b)})


def test_a_measured_partition_is_saved_as_the_cuts_it_made(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--out", str(a), *TINY, "--partition", "time", "--method", "fdg"]) == 0
    assert saved(a).partition == ",".join(map(str, summary(a)["boundaries"]))
    assert main(["train", "--config", str(a / "config.toml"), "--out", str(b)]) == 0
    assert summary(b)["params_sha256"] == summary(a)["params_sha256"]


def test_file_round_trip_keeps_every_value(tmp_path):
    cfg = RunConfig(method="dtrp", method_opts={"beta": 0.3, "predictor": "momentum"}, dataset="cifar10",
                    data_root='C:\\data "x"\tneu\u00e9\x7f\n', model_opts={"depth": 20, "hidden": [32, 16]},
                    lr=0.1 + 0.2, weight_decay=1e-05, timeout=1 / 3, milestones=(3, 7), threads=2,
                    tensorboard=True, download=True, out="runs/x").resolved()
    assert config_file.write(cfg, str(tmp_path)) == str(tmp_path / "config.toml")
    assert saved(tmp_path) == cfg
    text = (tmp_path / "config.toml").read_text()
    assert "backend" not in text and "\n[model_opts]\ndepth = 20\n" in text  # None left out; the table last


def test_command_line_overrides_the_file(tmp_path):
    path = write(tmp_path, 'stages = 2\nseed = 1\nmethod = "fdg"\nbeta = 0.5\nprogress = true\n'
                           'dataset = "digits"\nmodel = "mlp"\nepochs = 1\n')
    out = tmp_path / "run"
    assert main(["train", "--config", path, "--seed", "0", "--no-progress", "--beta", "0.8", "--out", str(out)]) == 0
    cfg = saved(out)
    assert (cfg.stages, cfg.seed, cfg.method_opts, cfg.progress) == (2, 0, {"beta": 0.8}, False)
    assert (cfg.batch_size, cfg.lr, cfg.optimizer) == (64, 0.05, "sgd")  # digits' defaults, RunConfig's


@pytest.mark.parametrize("text,msg", [  # the reader's errors: the file, the key, its value, what is allowed
    ("stagse = 3", "unknown key 'stagse' (did you mean 'stages'? valid: accumulate, backend, batch_size"),
    ("[method_opts]\nbeta = 0.5", "unknown key 'method_opts' (method options are keys of their own: beta = 0.5"),
    ('stages = "3"', "stages = '3' is not an integer"),
    ("stages = 2.0", "stages = 2.0 is not an integer"),
    ("lr = true", "lr = True is not a number"),
    ("progress = 1", "progress = 1 is not true or false"),
    ('milestones = "150,225"', "milestones = '150,225' is not a list of integers like [150, 225]"),
    ("model_opts = 3", "model_opts = 3 is not a table"),
    ("stages = ", "not valid TOML: "),
])
def test_bad_key_or_type_is_one_line_naming_the_file(tmp_path, capsys, text, msg):
    path = write(tmp_path, text + "\n")
    assert f"{path}: {msg}" in fails_in_one_line(["train", "--config", path], capsys)


@pytest.mark.parametrize("text,msg", [  # ranges: RunConfig.resolved's errors, as for the same options given
    ("stages = 0", "--stages must be >= 1, got 0"),
    ("beta = 1.5", "beta/gamma must be in (0, 1], got 1.5"),
    ('order = "xy"', "unknown order 'xy' (valid: bf, fb)"),
    ('device = "gpu0"', "bad --device 'gpu0' (valid: cpu, cuda, cuda:N)"),
    ("threads = 0", "--threads must be in [1, 1024] (torch threads per process), got 0"),
    ('optimizer = "rmsprop"', "unknown --optimizer 'rmsprop' (valid: sgd, adam, adamw, nag-async;"),
    ('model = "resnet7"', "unknown --model 'resnet7' (valid: cnn1d, cnn1d_bn,"),
    ("tensorboard = true", "--tensorboard needs --out DIR"),
])
def test_value_out_of_range_is_one_line(tmp_path, capsys, text, msg):
    path = write(tmp_path, text + "\n")
    assert msg in fails_in_one_line(["train", "--config", path, "--method", "fdg"], capsys)


def test_compare_reads_methods_and_rejects_train_keys(tmp_path, capsys):
    err = fails_in_one_line(["compare", "--config", write(tmp_path, 'method = "fdg"\n')], capsys)
    assert "unknown key 'method' (did you mean 'methods'?" in err
    path = write(tmp_path, 'methods = ["bp", "fdg"]\nstages = 2\ndataset = "digits"\nmodel = "mlp"\nepochs = 1\n'
                           "progress = false\n")
    assert main(["compare", "--config", path, "--out", str(tmp_path / "cmp")]) == 0
    assert [saved(tmp_path / "cmp" / m).method for m in ("bp", "fdg")] == ["bp", "fdg"]
    assert main(["train", "--config", str(tmp_path / "cmp" / "fdg" / "config.toml"), "--out", str(tmp_path / "t")]) == 0
    assert summary(tmp_path / "t")["params_sha256"] == summary(tmp_path / "cmp" / "fdg")["params_sha256"]


def test_yaml_file_reads_as_toml_does(tmp_path):
    pytest.importorskip("yaml")
    toml = config_file.read(write(tmp_path, 'method = "adl"\naccumulate = 4\nmilestones = [2, 3]\nlr = 0.1\n'))
    yml = config_file.read(write(tmp_path, "method: adl\naccumulate: 4\nmilestones: [2, 3]\nlr: 0.1\n", "c.yaml"))
    assert yml == toml == {"method": "adl", "accumulate": 4, "milestones": (2, 3), "lr": 0.1}
    with pytest.raises(ValueError, match=r"weight_decay = '5e-4' is not a number \(YAML reads 5e-4 as a string"):
        config_file.read(write(tmp_path, "weight_decay: 5e-4\n", "d.yml"))
    with pytest.raises(ValueError, match=r"lr = 'fast' is not a number$"):
        config_file.read(write(tmp_path, "lr: fast\n", "e.yml"))


def test_yaml_without_pyyaml_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    with pytest.raises(ValueError, match=r"c.yaml needs PyYAML: pip install pyyaml \(or write the file as .toml\)"):
        config_file.read(write(tmp_path, "stages: 2\n", "c.yaml"))


def test_unknown_format_and_missing_file(tmp_path, capsys):
    assert "unknown format '.json' (valid: .toml, .yaml, .yml)" in fails_in_one_line(
        ["train", "--config", write(tmp_path, "{}", "c.json")], capsys)
    assert "nope.toml" in fails_in_one_line(["train", "--config", str(tmp_path / "nope.toml")], capsys)


def test_a_saved_config_never_says_force():
    assert "force" not in config_file.dumps(RunConfig(force=True))
