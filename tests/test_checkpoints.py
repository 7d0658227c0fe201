"""Lean checkpoints (each tensor once, compact; best.pt without the optimizer) and what --resume says."""
import io
import os

import pytest
import torch

import main
from utils import InputError

TINY = ["--dataset", "tiny", "--batch_size", "256", "--lr", "0.01", "--gpu", "cpu", "--wandb", "disabled"]


def tensors(state):
    if isinstance(state, torch.Tensor):
        return [state]
    values = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else []
    return [t for value in values for t in tensors(value)]


def nbytes(state):
    return sum(t.numel() * t.element_size() for t in tensors(state))


def saved_size(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


@pytest.fixture
def trained(tiny_split, tmp_path):
    data_dir, _ = tiny_split
    save_dir = str(tmp_path / "run")
    main.main(["--data_dir", data_dir, *TINY, "--epochs", "2", "--save_dir", save_dir])
    return save_dir


@pytest.mark.parametrize("extra", [[], ["--no-sparse"]])
def test_checkpoints_hold_each_tensor_once(tiny_split, tmp_path, extra):
    data_dir, _ = tiny_split
    save_dir = str(tmp_path / "run")
    main.main(["--data_dir", data_dir, *TINY, "--epochs", "1", "--save_dir", save_dir, *extra])
    best = torch.load(os.path.join(save_dir, "best.pt"), weights_only=True)
    last = torch.load(os.path.join(save_dir, "last.pt"), weights_only=True)
    assert "optimizer" not in best and "rng" not in best and {"optimizer", "rng"} <= last.keys()
    for checkpoint in (best, last):
        for t in tensors(checkpoint):  # its own storage: a view would bring its whole buffer along
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    parameters = nbytes(best["model"])
    rest = saved_size({key: value for key, value in best.items() if key != "model"})  # configuration, history
    assert os.path.getsize(os.path.join(save_dir, "best.pt")) <= 1.2 * parameters + rest
    optimizer = nbytes(last["optimizer"])
    assert optimizer >= 2 * parameters * 0.9  # Adam's two moments of (nearly) every parameter: what resuming needs
    rest = saved_size({key: value for key, value in last.items() if key not in ("model", "optimizer")})
    assert os.path.getsize(os.path.join(save_dir, "last.pt")) <= 1.2 * (parameters + optimizer) + rest


def test_resume_says_what_it_will_do_before_choosing_the_device(trained, capsys):
    main.main(["--resume", os.path.join(trained, "last.pt"), "--epochs", "3"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"resuming {os.path.join(trained, 'last.pt')} after epoch 2 with its configuration")
    assert "epochs 3 to 3" in out[0] and "--gpu cpu" in out[0]
    assert not any("asked for CUDA" in line or "update rule" in line for line in out)
    assert out[-1].startswith("best epoch")


@pytest.mark.parametrize("recorded", [True, False])  # sparse_updates in the checkpoint, or an older one without it
def test_resume_on_another_device_says_the_update_rule_changes(trained, capsys, recorded):
    path = os.path.join(trained, "last.pt")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["sparse_updates"] is True  # --gpu cpu: lazy Adam by default
    checkpoint["provenance"]["device"] = "cuda:0"  # as if trained on a GPU, where the default is dense Adam
    if recorded:
        checkpoint["sparse_updates"] = False
    else:
        del checkpoint["sparse_updates"]
    torch.save(checkpoint, path)
    main.main(["--resume", path, "--epochs", "3"])
    notes = [line for line in capsys.readouterr().out.splitlines() if "update rule" in line]
    assert notes == ["note: the update rule changes on resuming: sparse (lazy adam) embedding updates on cpu, where "
                     "the checkpoint was trained with dense adam updates on cuda:0 (--sparse's default)"]


def test_resuming_from_best_pt_is_one_line(trained):
    with pytest.raises(InputError, match="holds the model only"):
        main.main(["--resume", os.path.join(trained, "best.pt"), "--epochs", "3"])
