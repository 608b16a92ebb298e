"""Every recipe field of DINO, iBOT, DINOv2, distillation and DINOv3 reaches what it configures: change it, and the losses,
diagnostics, schedules, parameter groups, evaluated output or state shapes change. (Not in the `numerics` pass: it
asks only whether something changed.)"""
import dataclasses

import pytest
import torch

from ssl_lessons.config import make_config
from ssl_lessons.methods import DINO, METHODS, build_method
from ssl_lessons.methods.distill import FROM_THE_TEACHER, NOT_USED

from conftest import write_teacher


def _images(n=8, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --- every recipe field reaches what it configures -------------------------------------------------------------------

# a changed value for every recipe field of the family, and the settings under which the change has an effect
CHANGES = {
    "n_local_crops": ("1", {}), "local_size": ("8", {}), "global_scale_min": ("0.6", {}),
    "local_scale_min": ("0.2", {}), "out_dim": ("48", {}), "hidden_dim": ("48", {}), "bottleneck_dim": ("16", {}),
    "norm_last_layer": (None, {}), "freeze_last_layer": ("0.3", {}), "student_temp": ("0.2", {}),
    "teacher_temp": ("0.05", {}), "teacher_temp_start": ("0.02", {}), "teacher_temp_warmup": ("0.8", {"teacher_temp_start": "0.02"}),
    "centering": (None, {}), "center_momentum": ("0.5", {"centering": "ema"}),
    "sinkhorn_iterations": ("1", {"centering": "sinkhorn_knopp"}), "teacher_momentum": ("0.5", {}),
    # constant schedules (DINOv3's) hold the momentum at its start value: the end reaches it with cosine ones
    "teacher_momentum_end": ("0.6", {"schedules": "cosine"}), "mask_probability": ("1.0", {}),
    "mask_ratio_min": ("0.3", {}),
    "mask_ratio_max": ("0.3", {}), "patch_loss_weight": ("0.5", {}), "separate_heads": (None, {}),
    "patch_out_dim": ("40", {"separate_heads": "true"}), "koleo_loss_weight": ("0.5", {}),
    "layer_decay": ("0.5", {}), "patch_embed_lr_mult": ("0.5", {}), "teacher": ("another teacher", {}),
    "patch_fraction": ("0.5", {}), "gram_loss_weight": ("0.5", {}), "gram_update_every": ("1", {}),
    "gram_max_updates": ("1", {"gram_update_every": "1"}), "gram_img_level": (None, {}), "gram_remove_neg": (None, {}),
    "gram_remove_only_teacher_neg": (None, {}), "gram_teacher_scale": ("1.0", {}),
}
FAMILY = tuple(name for name, cls in METHODS.items() if issubclass(cls, DINO))  # the DINO family


def fingerprint(method_name: str, overrides: dict) -> list:
    """What a recipe can change, observed: the losses and diagnostics of three steps (with the teacher temperature's
    schedule, an SGD step and the EMA update between them), the evaluated backbone's output, the parameter groups
    and the shapes of the state."""
    cfg = make_config("smoke", {"method": method_name, "teacher_temp_warmup": "0.5", **overrides})
    torch.manual_seed(0)
    method = build_method(cfg)
    images, out = _images(8), []
    for step, progress in enumerate((0.0, 0.25, 0.75)):
        method.before_step(progress)
        crops = method.make_views(images, torch.Generator().manual_seed(step))
        loss, logs = method(crops, diagnostics=True)
        method.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for p in method.parameters():
                if p.grad is not None:
                    p.sub_(0.5 * p.grad.sign())
        method.after_step(progress)
        out += [round(loss.item(), 4), *(round(float(v), 4) for v in logs.values()), tuple(crops.global_crops.shape),
                None if crops.local_crops is None else tuple(crops.local_crops.shape)]
    with torch.no_grad():
        out.append(round(method.eval_backbone(images[:2].float() / 255).sum().item(), 3))
    out += [(g["lr_multiplier"], g["frozen_until"], len(g["params"])) for g in method.param_groups()]
    return out + [(k, tuple(v.shape)) for k, v in method.state_dict().items()]


@pytest.mark.parametrize("method_name", FAMILY)
def test_every_recipe_field_reaches_what_it_configures(method_name, tmp_path):
    recipe = make_config("smoke", {"method": method_name}).recipe
    fields = [f.name for f in dataclasses.fields(recipe)]
    assert set(fields) <= set(CHANGES), f"add the new field(s) {set(fields) - set(CHANGES)} to CHANGES"
    skip = set(FROM_THE_TEACHER + NOT_USED) if method_name == "distill" else set()
    bases = {}
    for name in fields:
        if name in skip:  # refused when set (tested below): the teacher or whole crops decide them
            continue
        value, context = CHANGES[name]
        if name == "teacher":
            value = write_teacher(tmp_path, seed=4)[0]
        if value is None:  # a switch or a choice: the other value
            current = getattr(recipe, name)
            value = {"ema": "sinkhorn_knopp", "sinkhorn_knopp": "ema"}.get(current, str(not current).lower()) \
                if name == "centering" else str(not current).lower()
        key = tuple(sorted(context.items()))
        if key not in bases:
            bases[key] = fingerprint(method_name, context)
        assert fingerprint(method_name, {**context, name: value}) != bases[key], \
            f"{method_name}: {name}={value} changed nothing"
