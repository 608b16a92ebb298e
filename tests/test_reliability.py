"""No silent wrong run, no code execution from files, every bad input a one-line answer before any work."""
import json
import os
import pickle
import shlex
import stat

import pytest
import torch

from ssl_lessons.__main__ import main
from ssl_lessons.checkpoint import atomic_save, load_checkpoint
from ssl_lessons.config import config_from_dict, flat_config, make_config, parse_set_args, train_command
from ssl_lessons.data import load_cifar10, load_image_folder, read_image_source
from ssl_lessons.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from ssl_lessons.export import export_backbone
from ssl_lessons.train import train
from test_data import write_image_folder


def smoke(tmp_path, name="run", **overrides):
    return make_config("smoke", {"out_dir": str(tmp_path / name), "knn_every": 0.0, "linear_probe": False,
                                 "knn_bank": 256, **overrides})


# --- data: the source named is the source used --------------------------------------------------------------------

def test_two_trees_with_the_same_folder_name_get_their_own_caches(tmp_path):
    a = write_image_folder(tmp_path / "a" / "photos", classes=("cat", "dog"))
    b = write_image_folder(tmp_path / "b" / "photos", classes=("ant", "bee", "owl"))
    first = load_image_folder(a, 32, data_dir=tmp_path / "cache")
    second = load_image_folder(b, 32, data_dir=tmp_path / "cache")
    assert first.classes == ["cat", "dog"] and second.classes == ["ant", "bee", "owl"]
    assert len(list((tmp_path / "cache").glob("photos-32px-*.pt"))) == 2
    assert load_image_folder(a, 24, data_dir=tmp_path / "cache").train_images.shape[-1] == 24  # size is in the key


def test_a_changed_tree_is_read_again(tmp_path):
    root = write_image_folder(tmp_path / "tree")
    before = load_image_folder(root, 32, data_dir=tmp_path / "cache")
    (root / "train" / "dog" / "0.jpg").rename(root / "train" / "cat" / "9.jpg")  # same bytes, another label
    after = load_image_folder(root, 32, data_dir=tmp_path / "cache")
    assert before.train_labels.tolist() == [0, 0, 0, 1, 1, 1] and after.train_labels.tolist() == [0, 0, 0, 0, 1, 1]


def test_a_named_path_wins_over_the_prepared_cache_or_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_LESSONS_CIFAR10", raising=False)
    first = write_image_folder(tmp_path / "first", classes=("cat", "dog"))
    other = write_image_folder(tmp_path / "other", classes=("ant", "bee", "owl"))
    cache = tmp_path / "cache"
    assert load_cifar10(first, data_dir=cache).classes == ["cat", "dog"]  # prepares data/cifar10.pt
    assert load_cifar10(None, data_dir=cache).classes == ["cat", "dog"]   # nothing named: the prepared cache
    assert load_cifar10(other, data_dir=cache).classes == ["ant", "bee", "owl"]
    monkeypatch.setenv("SSL_LESSONS_CIFAR10", str(other))
    assert load_cifar10(None, data_dir=cache).classes == ["ant", "bee", "owl"]
    with pytest.raises(DataError, match="nowhere does not exist"):
        load_cifar10(tmp_path / "nowhere", data_dir=cache)


def test_the_prepared_cache_is_reused_for_its_own_source_without_reading_it(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "tree")
    load_cifar10(root, data_dir=tmp_path / "cache")

    def no_reading(*args, **kwargs):
        raise AssertionError("the images were read again")

    monkeypatch.setattr("ssl_lessons.data.read_image_source", no_reading)
    assert load_cifar10(root, data_dir=tmp_path / "cache").train_images.shape == (6, 3, 32, 32)


def test_a_zero_byte_image_is_named(tmp_path):
    root = write_image_folder(tmp_path / "tree")
    (root / "test" / "cat" / "2.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"test/cat/2.jpg \(the file is empty\)"):
        read_image_source(root, 32)


def test_a_class_missing_from_test_is_a_warning(tmp_path):
    root = write_image_folder(tmp_path / "tree", classes=("cat", "dog", "owl"))
    for f in (root / "test" / "owl").iterdir():
        f.unlink()
    (root / "test" / "owl").rmdir()
    with pytest.warns(UserWarning, match=r"\['owl'\] have no test images"):
        data = read_image_source(root, 32)
    assert data.classes == ["cat", "dog", "owl"] and set(data.test_labels.tolist()) == {0, 1}


def test_a_planted_cifar_batch_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({"data": Planted(), "labels": [0], "label_names": ["a"]}))
    with pytest.raises(DataError, match=r"\w+\.open is not allowed"):
        read_image_source(tmp_path, 32)
    assert not marker.exists()


# --- files: atomic, cleaned up, synced, loaded safely ------------------------------------------------------------

def test_a_save_removes_orphaned_temporaries_and_syncs_the_folder(tmp_path, monkeypatch):
    orphan = tmp_path / ".checkpoint.pt.abc123.tmp"  # what a save killed before its rename leaves
    orphan.write_bytes(b"half a checkpoint")
    other = tmp_path / ".results.json.xyz.tmp"       # another file's: not this save's business
    other.write_bytes(b"")
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    atomic_save({"x": torch.ones(2)}, tmp_path / "checkpoint.pt")
    assert not orphan.exists() and other.exists()
    assert synced == [False, True]  # the file's data, then the folder holding the rename
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint.pt")["x"], torch.ones(2))


def test_a_truncated_checkpoint_is_a_one_line_error(tmp_path):
    atomic_save({"x": torch.ones(1000)}, tmp_path / "checkpoint.pt")
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable") as info:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert "\n" not in str(info.value)


# --- the command line: every expected failure is one line and exit 2, before the images are loaded --------------

@pytest.fixture
def no_data_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the bad input was found")
    monkeypatch.setattr("ssl_lessons.train.load_dataset", refuse)
    monkeypatch.setattr("ssl_lessons.data.load_dataset", refuse)


def run_cli(argv, capsys) -> str:
    capsys.readouterr()  # what came before
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("args,message", [
    (["--method", "bylo"], "unknown method 'bylo'. Did you mean byol"),
    (["--set", "method=dino", "image_size=30"], "image_size 30 is not a multiple of patch_size"),
    (["--set", "epochs=nan"], "finite"),
    (["--set", "train_subset=100", "batch_size=128"], "batch_size 128 is larger than the 100 training images"),
    (["--set", "device=gpu"], "device is auto, cpu, mps, cuda"),
    (["--set", "method=dino", "local_size=48"], "below image_size"),
    (["--set", "knn_k=2000"], "knn_k"),
])
def test_bad_settings_are_one_line_before_any_work(args, message, capsys, no_data_loading, tmp_path):
    err = run_cli(["train", "--preset", "smoke", *args, "--set", f"out_dir={tmp_path / 'run'}"], capsys)
    assert message in err


def test_a_missing_data_path_fails_even_with_a_cache(capsys, tmp_path):
    err = run_cli(["train", "--preset", "smoke", "--data", str(tmp_path / "nonexistent"),
                   "--set", f"out_dir={tmp_path / 'run'}"], capsys)
    assert "nonexistent does not exist" in err


def test_resuming_into_another_methods_run_or_a_truncated_checkpoint(tmp_path, tiny_data, capsys, no_data_loading):
    train(smoke(tmp_path, method="byol"), data=tiny_data, stop_after=1, show_progress=False)
    err = run_cli(["train", "--preset", "smoke", "--method", "dino", "--set", f"out_dir={tmp_path / 'run'}"], capsys)
    assert "belongs to a byol run, not dino" in err
    path = tmp_path / "run" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    err = run_cli(["train", "--preset", "smoke", "--method", "byol", "--set", f"out_dir={tmp_path / 'run'}"], capsys)
    assert "unreadable" in err and "delete it" in err


# --- a NaN's advice can be followed: resume from the last good checkpoint with a lower lr -------------------------

def test_after_a_nan_the_advised_resume_with_a_lower_lr_works_and_is_recorded(tmp_path, tiny_data, monkeypatch):
    from ssl_lessons.methods import SimCLR
    real_forward, calls = SimCLR.forward, []

    def diverging_forward(self, crops, diagnostics=False):
        loss, logs = real_forward(self, crops, diagnostics)
        calls.append(1)
        return (loss * float("nan") if len(calls) >= 4 else loss), logs

    monkeypatch.setattr(SimCLR, "forward", diverging_forward)
    cfg = smoke(tmp_path, epochs=2.0, ckpt_every=2)
    with pytest.raises(TrainingDiverged, match=r"intact \(step 2\).*--set lr=0.0005 --allow-change lr") as info:
        train(cfg, data=tiny_data, show_progress=False)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(SimCLR, "forward", real_forward)
    lower = smoke(tmp_path, epochs=2.0, ckpt_every=2, lr=5e-4)
    with pytest.raises(CheckpointError, match="lr: 0.001 -> 0.0005.*--allow-change"):
        train(lower, data=tiny_data, show_progress=False)
    with pytest.raises(ConfigError, match="only these can change on resume"):
        train(lower, data=tiny_data, show_progress=False, allow_changes=("embed_dim",))
    run = train(lower, data=tiny_data, show_progress=False, allow_changes=("lr",))
    assert run["result"]["steps"] == 8 and len(run["history"]) == 8
    assert run["result"]["config_changes"] == [{"step": 2, "changes": {"lr": [1e-3, 5e-4]}}]
    from ssl_lessons.schedules import cosine_schedule
    expected = [cosine_schedule(step / 8, 5e-4 * 64 / 256, lower.min_lr, warmup=lower.warmup) for step in range(2, 8)]
    assert [h["lr"] for h in run["history"][2:]] == pytest.approx(expected)  # the new peak drives what remains


# --- export: the record reproduces the exported weights -----------------------------------------------------------

def rebuild_from_command(command: str):
    argv = shlex.split(command)
    method, preset = argv[argv.index("--method") + 1], argv[argv.index("--preset") + 1]
    sets = argv[argv.index("--set") + 1:] if "--set" in argv else []
    return make_config(preset, {"method": method, **parse_set_args(sets)})


def test_the_train_command_rebuilds_the_config_exactly(tmp_path):
    cfg = make_config("cifar10-laptop", {"method": "dino", "epochs": "5", "teacher_temp": "0.05",
                                         "linear_probe": "false", "data_source": "/data/my cifar.tar.gz"})
    assert flat_config(rebuild_from_command(train_command(cfg))) == flat_config(cfg)
    from ssl_lessons.config import variant_configs
    variant = variant_configs("cifar10-laptop", "dino", {"no centering": {"centering": "none"}})["no centering"]
    rebuilt = rebuild_from_command(train_command(variant, out_dir="runs/dino-cifar10-laptop-no-centering"))
    assert {k: v for k, v in flat_config(rebuilt).items() if k not in ("preset", "out_dir")} == \
        {k: v for k, v in flat_config(variant).items() if k not in ("preset", "out_dir")}


def test_export_refuses_other_options_and_records_the_runs_own_config(tmp_path, tiny_data):
    cfg = smoke(tmp_path, method="dino", teacher_temp=0.05)
    train(cfg, data=tiny_data, show_progress=False)
    with pytest.raises(ConfigError, match="teacher_temp: 0.05 in the run, 0.07 here"):
        export_backbone(tmp_path / "run", "tiny", directory=tmp_path / "pretrained",
                        expected=smoke(tmp_path, method="dino"))
    path = export_backbone(tmp_path / "run", "tiny", directory=tmp_path / "pretrained", expected=cfg)
    record = load_checkpoint(path)
    assert config_from_dict(record["config"]) == cfg
    assert flat_config(rebuild_from_command(record["command"])) == flat_config(cfg)
    assert record["result"] == json.loads((tmp_path / "run" / "results.json").read_text())
