import pytest

from ssl_lessons.__main__ import main
from ssl_lessons.config import PRESETS, ConfigError, make_config, parse_set_args
from ssl_lessons.methods import METHODS


def test_presets_build_and_overrides_parse_types():
    owners = {}  # an ImageNet preset -> the first registered method whose recipe it is
    for method, cls in METHODS.items():
        for preset in cls.PRESETS:
            if preset.startswith("imagenet-"):
                owners.setdefault(preset, method)
    assert set(owners) == {name for name in PRESETS if name.startswith("imagenet-")}
    for name in PRESETS:  # an ImageNet preset is one method's recipe and needs the tree's path
        extra = {"method": owners[name], "dataset": "/datasets/imagenet"} if name in owners else {}
        assert make_config(name, extra).preset == name
    cfg = make_config("smoke", parse_set_args(["lr=2e-3", "epochs=2", "amp=false", "backbone=resnet18"]))
    assert cfg.lr == 2e-3 and cfg.epochs == 2.0 and cfg.amp is False and cfg.backbone == "resnet18"


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown config key 'temprature'. Did you mean temperature"):
        make_config("smoke", {"temprature": "0.1"})
    with pytest.raises(ConfigError, match="unknown config key 'zzz'. Known keys: accum_steps, activation_checkpointing, amp"):
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


def test_cli_rejects_unknown_key_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "smoke", "--set", "bogus=1"])
    assert exit_.value.code == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err


def test_each_method_declares_its_recipe_beside_its_code_without_clashing_with_general_fields():
    from ssl_lessons.config import general_fields, recipe_fields
    from ssl_lessons.methods import METHODS
    for name, cls in METHODS.items():
        cfg = make_config("smoke", {"method": name})
        assert type(cfg.recipe) is cls.Recipe
        assert not set(recipe_fields(cfg.recipe)) & set(general_fields()), name


def test_recipe_keys_resolve_for_their_method_and_are_refused_for_another():
    cfg = make_config("smoke", {"method": "swav", "queue_length": "128", "lr": "1e-3"})
    assert cfg.recipe.queue_length == 128 and cfg.lr == 1e-3
    with pytest.raises(ConfigError, match="'queue_length' belongs to swav, not to dino"):
        make_config("smoke", {"method": "dino", "queue_length": "128"})
    with pytest.raises(ConfigError, match="Did you mean teacher_temp"):
        make_config("smoke", {"method": "dino", "teacher_tmp": "0.04"})


def test_the_method_is_chosen_once_and_validated():
    assert make_config("smoke", {"method": "byol"}).method == "byol"
    with pytest.raises(ConfigError, match="unknown method 'bylo'. Did you mean byol"):
        make_config("smoke", {"method": "bylo"})


def test_cli_set_method_trains_that_method_and_conflicts_are_refused(tmp_path):
    from ssl_lessons.__main__ import _config
    import argparse
    args = argparse.Namespace(set=["method=byol"], method=None, data=None, preset="smoke")
    assert _config(args).method == "byol"
    args = argparse.Namespace(set=["method=byol"], method="dino", data=None, preset="smoke")
    with pytest.raises(ConfigError, match="disagree"):
        _config(args)


@pytest.mark.parametrize("key,value,message", [("epochs", "nan", "finite"), ("image_size", "30", "multiple of patch_size"),
                                                ("local_size", "48", "below image_size")])
def test_impossible_settings_are_refused_before_any_work(key, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config("smoke", {"method": "dino", key: value})


def test_saved_configs_round_trip_including_records_from_before_recipes():
    from ssl_lessons.config import config_from_dict, config_to_dict
    cfg = make_config("smoke", {"method": "dino", "out_dim": "128"})
    assert config_from_dict(config_to_dict(cfg)) == cfg
    legacy = {k: v for k, v in config_to_dict(cfg).items() if k != "recipe"} | {"dino_out_dim": 128}
    old = config_from_dict(legacy)
    assert (old.method, old.embed_dim, old.patch_size) == ("dino", cfg.embed_dim, cfg.patch_size)
