import subprocess
import sys

import pytest

from ssl_lessons.config import PRESETS, ConfigError, make_config, parse_set_args


def test_presets_build_and_overrides_parse_types():
    for name in PRESETS:
        assert make_config(name).preset == name
    cfg = make_config("smoke", parse_set_args(["lr=2e-3", "epochs=2", "amp=false", "backbone=resnet18"]))
    assert cfg.lr == 2e-3 and cfg.epochs == 2.0 and cfg.amp is False and cfg.backbone == "resnet18"


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown config key 'temprature'. Did you mean temperature"):
        make_config("smoke", {"temprature": "0.1"})
    with pytest.raises(ConfigError, match="unknown config key 'zzz'. Known keys: amp, backbone"):
        make_config("smoke", {"zzz": "1"})


@pytest.mark.parametrize("key,value,message", [("epochs", "many", "takes a float"), ("batch_size", "1.5", "takes a int"),
                                                ("amp", "maybe", "true or false"), ("lr", "-1", "must be positive"),
                                                ("warmup", "1.5", "fraction"), ("global_pool", "max", "avg")])
def test_bad_values_are_rejected(key, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config("smoke", {key: value})


def test_unknown_preset_and_malformed_set():
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config("imagenet-huge")
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_args(["epochs"])


def test_cli_rejects_unknown_key_with_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "ssl_lessons", "train", "--preset", "smoke", "--set", "bogus=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown config key 'bogus'" in proc.stderr
