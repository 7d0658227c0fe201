"""model.forward is the definition: the fused step and the fast scorers check themselves against it when a run or an
evaluation starts, and where they disagree training goes through autograd and scoring through forward, so that a
changed forward changes the first epoch's loss and the evaluation's HR@10."""
import os

import pytest
import torch
import torch.nn.functional as F

import continuation
import model as model_module
import training
from conftest import TINY, results, run_script
from model import NCF, ModelConfig, build_model, checked_scorer, forward_scorer, scorer_agrees
from optim import fused_step_agrees

FORWARD = NCF.forward


def scaled(self, users, items):
    return 0.5 * FORWARD(self, users, items) + 1


def negated(self, users, items):
    return -FORWARD(self, users, items)


def dropped_out(self, users, items):
    return F.dropout(FORWARD(self, users, items), 0.2, self.training)


def train(data_dir, save_dir, *flags):
    """(results.json, what it printed) of a two-epoch tiny run of main.py in this process."""
    done = run_script("main.py", "--data_dir", data_dir, *TINY, "--epochs", "2", "--save_dir", save_dir, *flags)
    assert done.returncode == 0, done.stderr
    return results(save_dir), done.stdout


def figures(history):
    """The history without its timings."""
    return [{key: value for key, value in record.items() if "second" not in key} for record in history]


def lines_with(text, words):
    return sum(words in line for line in text.splitlines())


def test_a_changed_forward_changes_the_first_epochs_loss_through_autograd(shared_split, tmp_path, monkeypatch):
    data_dir, _ = shared_split
    plain, out = train(data_dir, str(tmp_path / "plain"))
    assert plain["provenance"]["step"] == "fused" and "disagrees" not in out
    monkeypatch.setattr(NCF, "forward", scaled)
    changed, out = train(data_dir, str(tmp_path / "changed"))
    assert changed["provenance"]["step"] == "autograd"
    assert changed["history"][0]["loss"] != pytest.approx(plain["history"][0]["loss"], rel=1e-3)
    assert lines_with(out, "the fused step disagrees") == 1
    assert lines_with(out, "candidate_scorer disagrees") == 1  # checked once a model, not once an epoch
    by_hand, out = train(data_dir, str(tmp_path / "by_hand"), "--step", "autograd")
    assert figures(by_hand["history"]) == figures(changed["history"]) and "fused step" not in out


def test_a_forward_with_dropout_trains_through_autograd_and_scores_in_eval_mode(shared_split, tmp_path,
                                                                                 monkeypatch):
    data_dir, _ = shared_split
    monkeypatch.setattr(NCF, "forward", dropped_out)
    summary, out = train(data_dir, str(tmp_path / "run"))
    assert summary["provenance"]["step"] == "autograd" and lines_with(out, "not reproducible") == 1
    assert "candidate_scorer disagrees" not in out  # in eval mode dropout is the identity: the fast scorer agrees


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_a_changed_forward_changes_the_evaluations_hr(trained_run, monkeypatch, protocol):
    save_dir, _ = trained_run
    flags = ["--checkpoint", os.path.join(save_dir, "best.pt"), "--eval", protocol, "--gpu", "cpu"]
    plain = run_script("evaluate.py", *flags)
    monkeypatch.setattr(NCF, "forward", negated)
    changed = run_script("evaluate.py", *flags)
    assert plain.returncode == changed.returncode == 0, plain.stderr + changed.stderr
    hr = [float(done.stdout.split("HR@10 ")[1].split()[0]) for done in (plain, changed)]
    assert hr[1] < hr[0] / 2, hr
    assert "disagrees" not in plain.stdout and lines_with(changed.stdout, "candidate_scorer disagrees") == 1


def test_the_checks_leave_an_unchanged_model_training_and_scoring_as_without_them(shared_split, tmp_path,
                                                                                   monkeypatch):
    data_dir, _ = shared_split
    checked, _ = train(data_dir, str(tmp_path / "checked"), "--eval", "full")
    monkeypatch.setattr(training, "fused_step_agrees", lambda *args, **kwargs: (True, ""))
    monkeypatch.setattr(model_module, "scorer_agrees", lambda model: (True, ""))
    unchecked, _ = train(data_dir, str(tmp_path / "unchecked"), "--eval", "full")
    assert figures(checked["history"]) == figures(unchecked["history"])


def test_step_fused_with_a_disagreeing_forward_is_a_one_line_error(shared_split, tmp_path, monkeypatch):
    data_dir, _ = shared_split
    monkeypatch.setattr(NCF, "forward", scaled)
    save_dir = tmp_path / "run"
    done = run_script("main.py", "--data_dir", data_dir, *TINY, "--epochs", "1", "--save_dir", save_dir,
                      "--step", "fused")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--step fused" in done.stderr
    assert not save_dir.exists()  # nothing half-written
    done = run_script("main.py", "--data_dir", data_dir, *TINY, "--step", "fused", "--optim", "adagrad")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--step fused" in done.stderr


@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf", "mf"])
@pytest.mark.parametrize("optim,sparse,l2", [("adam", True, 0.0), ("adam", False, 1e-4), ("sgd", True, 0.0),
                                             ("sgd", False, 1e-4)])
def test_the_fused_step_agrees_with_forward_and_leaves_everything_as_it_was(kind, optim, sparse, l2):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind, 8, 3), 30, 40, sparse).train(False)
    for embedding in model.embeddings():
        torch.nn.init.normal_(embedding.weight, std=0.3)
    state, rng = {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()
    assert fused_step_agrees(model, optim, 0.01, (0.9, 0.999), l2, sparse) == (True, "")
    assert scorer_agrees(model) == (True, "")
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("forward,why", [(scaled, "loss"), (negated, "loss"), (dropped_out, "not reproducible")])
def test_a_changed_forward_disagrees(monkeypatch, forward, why):
    monkeypatch.setattr(NCF, "forward", forward)
    agrees, reason = fused_step_agrees(build_model(ModelConfig(), 30, 40))
    assert not agrees and why in reason


def test_the_scorer_is_checked_once_a_model_and_scores_through_forward_where_it_disagrees(monkeypatch):
    verdicts = []
    monkeypatch.setattr(model_module, "scorer_agrees", lambda model: verdicts.append(model) or (False, "told so"))
    model, said = build_model(ModelConfig(), 30, 40), []
    users, items = torch.tensor([3, 7]), torch.tensor([[1, 2, 3], [4, 5, 39]])
    for _ in range(3):
        score = checked_scorer(model, said.append)
    assert verdicts == [model] and len(said) == 1 and "told so" in said[0]
    with torch.no_grad():
        expected = torch.stack([model(users[row].expand(3), items[row]) for row in range(2)])
        assert torch.allclose(score(users, items), expected, atol=1e-6)
        assert torch.allclose(score(users)[:, items[1]], forward_scorer(model, block_pairs=7)(users, items[[1, 1]]),
                              atol=1e-6)


def test_fold_in_trains_through_forward(monkeypatch):
    """A negated forward: folding a playlist in raises its songs' logits by that forward, not by candidate_scorer's."""
    monkeypatch.setattr(NCF, "forward", negated)
    torch.manual_seed(0)
    model = NCF(num_users=8, num_items=60, latent_dim_mf=4, num_layers=1)
    with torch.no_grad():
        model.item_gmf.weight.copy_(torch.eye(4)[torch.arange(60) // 15] + 0.05 * torch.randn(60, 4))
        model.predict.weight[0, :4] = 1.0
    indptr, songs = torch.tensor([0, 5]), torch.tensor([30, 31, 32, 33, 34])
    start, folded = (continuation.fold_in(model, indptr, songs, 60, steps=steps) for steps in (0, 20))
    with torch.no_grad():
        scores = [m(torch.zeros(60, dtype=torch.int64), torch.arange(60)) for m in (start, folded)]
    gain = [score[songs].mean() - score.mean() for score in scores]
    assert gain[1] > gain[0] + 0.1, gain
