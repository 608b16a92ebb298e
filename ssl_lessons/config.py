"""Configs for the registered methods: a preset, the method's recipe, then overrides.

    cfg = make_config("cifar10-laptop", {"method": "swav", "epochs": "2", "queue_length": "3840"})
    cfg.lr, cfg.recipe.queue_length

What every run shares is `Config` (settings.py). A method declares its own fields and defaults beside its code
(`methods/<name>.py`: a `Recipe` dataclass, the general fields it changes (`DEFAULTS`) and what each preset changes
for it (`PRESETS`)). An override key is looked up in `Config`, then in the method's recipe; unknown keys and values
of the wrong type are rejected with a message that says what is allowed. The order: PRESETS[preset], the method's
DEFAULTS, the method's PRESETS[preset], then the overrides.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import shlex

from .errors import ConfigError
from .methods import METHODS, method_class
from .settings import (PRESETS, SMOKE_ENV, Config, base_preset, config_to_dict, flat_config, general_fields,
                       general_from_dict, notebook_preset, parse_set_args, parse_value, peak_lr, recipe_fields,
                       validate)

__all__ = ["PRESETS", "SMOKE_ENV", "Config", "apply_overrides", "base_preset", "config_from_dict", "config_to_dict",
           "flat_config", "general_fields", "make_config", "notebook_preset", "parse_set_args", "peak_lr",
           "train_command", "validate", "variant_configs"]


def apply_overrides(cfg: Config, overrides: dict) -> Config:
    """Return a copy of cfg with overrides (strings from the command line, or Python values) applied to its general
    fields and to its method's recipe."""
    general, own = general_fields(), recipe_fields(cfg.recipe)
    changes, recipe_changes = {}, {}
    for key, text in overrides.items():
        if key == "method":
            if text != cfg.method:
                raise ConfigError(f"method is {cfg.method!r} and cannot be changed by an override to {text!r}: "
                                  "choose it with --method (or make_config's overrides)")
            continue
        if key in general:
            changes[key] = parse_value(key, text, general[key])
        elif key in own:
            recipe_changes[key] = parse_value(key, text, own[key])
        else:
            raise ConfigError(_unknown_key_message(key, cfg.method, general, own))
    recipe = dataclasses.replace(cfg.recipe, **recipe_changes)
    return validate(dataclasses.replace(cfg, **changes, recipe=recipe))


def _unknown_key_message(key: str, method: str, general: dict, own: dict) -> str:
    elsewhere = [name for name, cls in METHODS.items() if name != method and key in recipe_fields(cls.Recipe())]
    if elsewhere:
        return f"config key {key!r} belongs to {' and '.join(elsewhere)}, not to {method}"
    known = sorted(general) + sorted(own)
    close = difflib.get_close_matches(key, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (f"unknown config key {key!r}.{hint} Known keys: {', '.join(sorted(general))}; "
            f"{method}'s: {', '.join(sorted(own))}")


def make_config(preset: str = "cifar10-laptop", overrides: dict | None = None) -> Config:
    """PRESETS[preset], the method's DEFAULTS, the method's PRESETS[preset], then `overrides` (which may name the
    method; it is the one place the method is chosen)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    overrides = dict(overrides or {})
    method = overrides.pop("method", Config.method)
    cls = method_class(method)
    cfg = Config(method=method, recipe=cls.Recipe(), preset=preset)
    if preset.startswith("imagenet-") and preset not in cls.PRESETS:
        owners = [name for name, c in METHODS.items() if preset in c.PRESETS]
        raise ConfigError(f"preset {preset} is {' and '.join(owners)}'s recipe, not {method}'s: use --method "
                          f"{owners[0]}")
    cfg = apply_overrides(cfg, {**PRESETS[preset], **cls.DEFAULTS, **cls.PRESETS.get(preset, {})})
    cfg = apply_overrides(cfg, overrides)
    if preset.startswith("imagenet-") and cfg.dataset == "cifar10":
        raise ConfigError(f"preset {preset} trains on full-resolution ImageNet: add --set dataset=/path/to/imagenet "
                          "(a folder with train/<class>/*.JPEG and val/<class>/*)")
    return cfg


def config_from_dict(saved: dict) -> Config:
    """The Config a checkpoint or an exported backbone recorded. Records written before recipes existed kept every
    field flat; their backbone and general fields are read, the method's fields take today's defaults."""
    cls = method_class(saved.get("method", Config.method))
    recipe_keys = recipe_fields(cls.Recipe())
    saved_recipe = dict(saved.get("recipe") or {})
    if isinstance(saved_recipe.get("centering"), bool):  # records whose centering was a switch
        saved_recipe["centering"] = "ema" if saved_recipe["centering"] else "none"
    if "sinkhorn_centering" in saved_recipe:
        saved_recipe["centering"] = "sinkhorn_knopp" if saved_recipe.pop("sinkhorn_centering") else "ema"
    recipe = cls.Recipe(**{k: v for k, v in saved_recipe.items() if k in recipe_keys})
    return dataclasses.replace(general_from_dict(saved), recipe=recipe)


def variant_configs(preset: str, method: str, variants: dict[str, dict], **common) -> dict[str, Config]:
    """One config per named variant of a method (an ablation), each writing to its own run folder
    runs/<method>-<preset>-<variant slug>. `common` overrides apply to all of them."""
    out = {}
    for name, changes in variants.items():
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        cfg = make_config(preset, {"method": method, **common, **changes})
        out[name] = dataclasses.replace(cfg, preset=f"{preset}-{slug}")
    return out


def train_command(cfg: Config, out_dir: str | None = None) -> str:
    """The `python -m ssl_lessons train` command whose config is exactly cfg: its base preset, its method and a
    --set for every field that differs from them (plus out_dir, when given)."""
    preset = base_preset(cfg.preset)
    reference, own = flat_config(make_config(preset, {"method": cfg.method})), flat_config(cfg)
    sets = [f"{k}={_as_text(v)}" for k, v in own.items()
            if k not in ("preset", "method", "out_dir") and v != reference[k]]
    if out_dir or cfg.out_dir:
        sets.append(f"out_dir={_as_text(str(out_dir or cfg.out_dir))}")
    return " ".join([f"python -m ssl_lessons train --method {cfg.method} --preset {preset}"]
                    + (["--set", *sets] if sets else []))


def _as_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return shlex.quote(repr(value) if isinstance(value, float) else str(value))
