"""Bad input and faults as users meet them: each ends in one line that says what to do, nothing is lost, and no file
can run code. (The cases that need a subprocess, torchrun or the real data are in test_cli.py.)"""
import io
import json
import os
import pickle

import pytest
import torch

from ssl_lessons.__main__ import main
from ssl_lessons.checkpoint import SafeLoadPlanner, load_checkpoint, run_lock
from ssl_lessons.config import make_config
from ssl_lessons.images import decode_bytes
from ssl_lessons.errors import CheckpointError, ConfigError, TrainingDiverged, user_message
from ssl_lessons.launch import load_config_file, save_config
from ssl_lessons.export import export_backbone
from ssl_lessons.pretrained import load_backbone
from ssl_lessons.train import train


def smoke(tmp_path, name="run", **overrides):
    return make_config("smoke", {"out_dir": str(tmp_path / name), "knn_every": 0.0, "linear_probe": False,
                                 "knn_bank": 256, **overrides})


class Planted:
    """What an attacker pickles: unpickling it calls open(path, "w"), i.e. creates a file (any call would do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.fixture
def sharded_run(tmp_path, tiny_data):
    """A finished one-process run with parallel=fsdp: a sharded checkpoint folder."""
    cfg = smoke(tmp_path, method="dino", parallel="fsdp", epochs=0.5)
    train(cfg, data=tiny_data, show_progress=False)
    return cfg, tmp_path / "run" / "checkpoint" / (tmp_path / "run" / "checkpoint" / "latest").read_text()


def test_a_planted_sharded_metadata_runs_no_code_on_resume_or_export(sharded_run, tmp_path, tiny_data):
    cfg, step = sharded_run
    marker = tmp_path / "planted-code-ran"
    (step / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(CheckpointError, match="could not be loaded.*not allowed in a checkpoint's .metadata"):
        train(cfg, data=tiny_data, show_progress=False, allow_changes=())  # a resume reads it
    with pytest.raises(CheckpointError, match="not allowed"):
        export_backbone(tmp_path / "run", "x", directory=tmp_path / "shelf")
    assert not marker.exists()


def test_planted_non_tensor_values_in_shards_are_refused(tmp_path):
    marker = tmp_path / "planted-code-ran"
    buffer = io.BytesIO()
    torch.save({"lr": Planted(marker)}, buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        SafeLoadPlanner().load_bytes(None, buffer)
    assert not marker.exists()
    plain = io.BytesIO()
    torch.save([{"lr": 0.1, "betas": (0.9, 0.999), "names": ["a"]}], plain)  # what param_groups hold
    plain.seek(0)
    planner = SafeLoadPlanner()
    planner.flatten_state_dict, planner.state_dict = False, {}
    planner.load_bytes(type("Item", (), {"dest_index": type("Index", (), {"fqn": "groups"})()})(), plain)
    assert planner.state_dict["groups"][0]["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("damage", ["truncated shard", "no metadata", "bad meta.json", "no rank file"])
def test_a_damaged_sharded_checkpoint_is_a_one_line_error(sharded_run, tiny_data, damage):
    cfg, step = sharded_run
    if damage == "truncated shard":
        shard = next(step.glob("*.distcp"))
        shard.write_bytes(shard.read_bytes()[:1000])
    elif damage == "no metadata":
        (step / ".metadata").unlink()
    elif damage == "bad meta.json":
        (step / "meta.json").write_text("{half")
    else:
        (step / "rank-0.pt").unlink()
    with pytest.raises(CheckpointError) as info:
        train(cfg, data=tiny_data, show_progress=False)
    assert "\n" not in str(info.value) and "start afresh" in str(info.value)


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_runs(tmp_path, tiny_data):
    cfg = smoke(tmp_path)
    with run_lock(tmp_path / "run"):  # the first run, still going
        with pytest.raises(CheckpointError, match=f"another run is using {tmp_path / 'run'} \\(pid {os.getpid()}"):
            train(cfg, data=tiny_data, show_progress=False)
        assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert train(cfg, data=tiny_data, show_progress=False)["result"] is not None  # and free once it ended


def test_an_out_dir_that_is_a_file_is_refused_before_any_work(tmp_path, tiny_data):
    (tmp_path / "run").write_text("my notes")
    with pytest.raises(CheckpointError, match="cannot write into out_dir"):
        train(smoke(tmp_path), data=tiny_data, show_progress=False)
    assert (tmp_path / "run").read_text() == "my notes"


def test_weights_that_stopped_being_finite_are_never_saved(tmp_path, tiny_data, monkeypatch):
    from ssl_lessons.methods import SimCLR
    real_after_step, calls = SimCLR.after_step, []

    def poisoning_after_step(self, progress):  # the second checkpoint's step puts a NaN into a weight
        real_after_step(self, progress)
        calls.append(1)
        if len(calls) == 4:
            with torch.no_grad():
                next(self.parameters()).view(-1)[0] = float("nan")

    monkeypatch.setattr(SimCLR, "after_step", poisoning_after_step)
    cfg = smoke(tmp_path, epochs=2.0, ckpt_every=2, log_every=100)
    with pytest.raises(TrainingDiverged, match=r"infinite or NaN by step 4.*intact \(step 2\)"):
        train(cfg, data=tiny_data, show_progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())


def test_a_16_bit_png_is_scaled_to_8_bits_not_truncated():
    import numpy as np
    from PIL import Image
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)  # 0 ... 63000
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    image = decode_bytes(buffer.getvalue(), "ramp.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8)
    expected = torch.from_numpy((ramp >> 8).astype(np.uint8))  # the high byte: 65535 -> 255
    assert (image[0].int() - expected.int()).abs().max() <= 1


# --- train --config: a file is checked as --set is -----------------------------------------------------------------

def saved_config(tmp_path, edit=None):
    path = save_config(make_config("smoke", {"method": "dino"}), tmp_path / "config.json")
    if edit:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(epochs=True), "epochs takes a float, not bool"),
    (lambda d: d.update(linear_probe="no"), "linear_probe takes a bool, not the string 'no'"),
    (lambda d: d.update(batch_size=64.5), "batch_size takes a int, not float 64.5"),
    (lambda d: d.update(lr=None), "lr takes a float, not NoneType"),
    (lambda d: d.pop("epochs"), "lacks epochs"),
    (lambda d: d["recipe"].pop("teacher_temp"), "lacks recipe.teacher_temp"),
    (lambda d: d.update(recipe=None), "with a \"recipe\" object inside"),
    (lambda d: d.update(colour="blue"), "does not know: colour"),
    (lambda d: d["recipe"].update(queue_length=3), "does not know: recipe.queue_length"),
])
def test_a_config_file_is_checked_value_by_value(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace('"', '.')):
        load_config_file(saved_config(tmp_path, edit))


def test_a_config_file_that_is_a_folder_or_not_an_object_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config_file(tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        load_config_file(tmp_path / "list.json")
    assert load_config_file(saved_config(tmp_path)) == make_config("smoke", {"method": "dino"})  # the round trip


# --- the command line: one line, status 2 ---------------------------------------------------------------------------

def run_cli(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv,message", [
    (["export-script", "--preset", "smoke", "--hours", "0", "--out", "{tmp}/job"], "must be at least 1"),
    (["export-script", "--preset", "smoke", "--out", "{tmp}/file"], "is a file"),
    (["bench", "--preset", "smoke", "--workers", "-1"], "must be at least 0"),
    (["train", "--preset", "smoke", "--stop-after", "0"], "must be at least 1"),
    (["train", "--preset", "smoke", "--set", "data_loading=stream"], "CIFAR-10 is decoded once into memory"),
    (["train", "--method", "dinov2", "--preset", "smoke", "--set", "highres_size=48", "highres_fraction=0.99"],
     "leaves no step"),
    (["train", "--method", "distill", "--preset", "smoke", "--set", "patch_size=8"], "--set patch_size=4"),
    (["train", "--method", "distill", "--preset", "smoke", "--set", "teacher={tmp}/run.pt"], "not an exported"),
    (["train", "--method", "distill", "--preset", "smoke", "--set", "teacher={tmp}/junk.pt"], "export the backbone"),
])
def test_bad_commands_end_in_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSL_LESSONS_RUNS", str(tmp_path / "runs"))
    (tmp_path / "file").write_text("x")
    torch.save({"config": {}, "method": {}, "step": 1}, tmp_path / "run.pt")  # a training checkpoint
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert message in run_cli(argv, capsys)


def test_an_error_raised_in_a_dataloader_worker_is_reported_without_its_traceback():
    from ssl_lessons.errors import DataError
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\n"
                        "Original Traceback (most recent call last):\n"
                        '  File "x.py", line 1\nssl_lessons.errors.DataError: could not decode image a.jpg (bad)')
    assert user_message(wrapped) == "could not decode image a.jpg (bad)"
    assert user_message(DataError("plain")) == "plain"


def test_a_changed_shape_setting_is_not_advised_to_be_allowed(tmp_path, tiny_data):
    train(smoke(tmp_path), data=tiny_data, stop_after=1, show_progress=False)
    with pytest.raises(CheckpointError) as info:
        train(smoke(tmp_path, embed_dim=32, num_heads=2), data=tiny_data, show_progress=False)
    assert "--allow-change" not in str(info.value) and "another out_dir" in str(info.value)


def test_exported_names_stay_inside_the_shelf(tmp_path):
    from ssl_lessons.pretrained import check_export_name
    for bad in ("../up", "a/b", "", ".hidden", "x.pt", "/abs"):
        with pytest.raises(ConfigError, match="plain name"):
            check_export_name(bad)
    assert check_export_name("dino-vit_5ep.v2") == "dino-vit_5ep.v2"
    with pytest.raises(FileNotFoundError):
        load_backbone("nothing-here", directory=tmp_path)


def test_a_streamed_tree_warns_of_a_train_class_missing_from_val(tmp_path):
    import shutil

    from conftest import make_image_tree

    from ssl_lessons.streaming import StreamingImages
    root = make_image_tree(tmp_path / "tree", classes=3, train_per_class=2, test_per_class=1, test_split="val")
    shutil.rmtree(root / "val" / "class2")
    with pytest.warns(UserWarning, match=r"\['class2'\] have no held-out images"):
        photos = StreamingImages(root, eval_size=32, workers=0)
    assert photos.classes == ["class0", "class1", "class2"] and photos.test_labels.tolist() == [0, 1]


def test_a_full_disk_at_a_save_keeps_the_last_checkpoint_and_resumes_exactly(tmp_path, tiny_data, monkeypatch):
    import ssl_lessons.checkpoint as checkpoint_module
    cfg = smoke(tmp_path, epochs=1.0, ckpt_every=2)
    uninterrupted = train(smoke(tmp_path, name="whole", epochs=1.0, ckpt_every=2), data=tiny_data,
                          show_progress=False)
    real_save, saves = checkpoint_module.atomic_save, []

    def full_disk_at_the_second_save(state, path):
        saves.append(state["step"])
        if len(saves) == 2:
            raise OSError(28, "No space left on device")
        real_save(state, path)

    monkeypatch.setattr(checkpoint_module, "atomic_save", full_disk_at_the_second_save)
    with pytest.raises(CheckpointError, match=r"step 4 \(.*No space left on device\); the one of step 2 .* intact"):
        train(cfg, data=tiny_data, show_progress=False)
    monkeypatch.setattr(checkpoint_module, "atomic_save", real_save)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2
    resumed = train(cfg, data=tiny_data, show_progress=False)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in uninterrupted["history"]]
