"""export-script: a run's config file, its torchrun launcher and its SLURM script; `train --config` reads the file."""
import json
import os
import subprocess

import pytest

from ssl_lessons.__main__ import main
from ssl_lessons.config import flat_config, make_config
from ssl_lessons.errors import ConfigError
from ssl_lessons.launch import export_script, load_config_file, save_config


def test_a_saved_config_reads_back_as_the_same_config(tmp_path):
    cfg = make_config("cifar10-laptop", {"method": "dinov2", "parallel": "fsdp", "koleo_loss_weight": "0.2"})
    back = load_config_file(save_config(cfg, tmp_path / "config.json"))
    assert flat_config(back) == flat_config(cfg) and back.recipe.koleo_loss_weight == 0.2


def test_a_config_file_with_an_unknown_key_or_a_bad_value_is_refused(tmp_path):
    cfg = make_config("smoke", {"method": "dino"})
    path = save_config(cfg, tmp_path / "config.json")
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config_file(path)
    path.write_text(json.dumps({**saved, "parallel": "zero3"}))
    with pytest.raises(ConfigError, match="parallel"):
        load_config_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.json")


def test_export_script_writes_a_multi_node_launcher_and_sbatch_with_rendezvous(tmp_path):
    cfg = make_config("cifar10-laptop", {"method": "dinov2", "parallel": "fsdp", "batch_size": "1024"})
    paths = export_script(cfg, tmp_path / "job", nodes=4, gpus_per_node=8)
    for script in (paths["launcher"], paths["sbatch"]):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script  # bash parses it
        assert os.access(script, os.X_OK)
    launcher, sbatch = paths["launcher"].read_text(), paths["sbatch"].read_text()
    assert "--rdzv_backend=c10d" in launcher and '--rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT"' in launcher
    assert '--nnodes="$NNODES"' in launcher and "--nproc_per_node=8" in launcher and "--standalone" not in launcher
    assert "#SBATCH --nodes=4" in sbatch and "#SBATCH --gpus-per-node=8" in sbatch
    assert "#SBATCH --ntasks-per-node=1" in sbatch and "scontrol show hostnames" in sbatch
    assert 'RDZV_ID="$SLURM_JOB_ID"' in sbatch and "srun" in sbatch
    assert flat_config(load_config_file(paths["config"])) == flat_config(cfg)
    with pytest.raises(ConfigError, match="multiple of 24"):
        export_script(make_config("smoke", {"method": "dino"}), tmp_path / "bad", nodes=3, gpus_per_node=8)


def test_train_config_flag_runs_a_saved_config_and_refuses_a_contradiction(tmp_path, monkeypatch, capsys):
    path = save_config(make_config("smoke", {"method": "dino"}), tmp_path / "config.json")
    seen = {}
    monkeypatch.setattr("ssl_lessons.__main__.train", lambda cfg, **kw: seen.update(cfg=cfg) or {"result": None})
    main(["train", "--config", str(path), "--set", "epochs=0.5"])
    assert seen["cfg"].method == "dino" and seen["cfg"].preset == "smoke" and seen["cfg"].epochs == 0.5
    with pytest.raises(SystemExit):
        main(["train", "--config", str(path), "--method", "simclr"])
    assert "disagrees" in capsys.readouterr().err
