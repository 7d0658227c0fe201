import copy

import pytest
import torch
import torch.nn.functional as F

from model import NCF, ModelConfig, build_model
import optim
from optim import AutogradStep, FusedStep, LazyAdam
import training

KINDS = ["gmf", "mlp", "neumf", "mf"]
SHAPES = [(8, 3), (4, 1), (16, 2), (5, 4)]


def twin_models(users=12, items=15, factor=4, layers=2, kind="neumf", std=0.3):
    torch.manual_seed(0)
    dense = build_model(ModelConfig(kind, factor, layers), users, items)
    for p in dense.parameters():
        torch.nn.init.normal_(p, std=std)
    sparse = build_model(ModelConfig(kind, factor, layers), users, items, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def loss_of(model, users, items, labels):
    return F.binary_cross_entropy_with_logits(model(users, items), labels)


def batch(users, items, size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(users, (size,), generator=generator), torch.randint(items, (size,), generator=generator),
            torch.randint(2, (size,), generator=generator).float())


def grad_of(table_grad, table, param):
    """The block of a gradient shaped like FusedStep's table that belongs to `param` (a view of the table)."""
    offset = param.storage_offset() - table.storage_offset()
    return table_grad.as_strided(param.shape, param.stride(), offset)


@pytest.mark.parametrize("factor,layers", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_fused_gradients_equal_autograd(kind, factor, layers):
    reference, model = twin_models(30, 40, factor, layers, kind)
    step = FusedStep(model)
    users, items, labels = batch(30, 40, 257)  # repeated users and items: their rows' gradients add up
    scale = 1 / 300
    loss = F.binary_cross_entropy_with_logits(reference(users, items), labels, reduction="sum")
    (loss * scale).backward()
    ids = torch.stack([users, items + 30], 1).view(-1)
    row_grads, fused_loss = step.gradients(step.tables, step.dense, step.tables.weights[ids].view(len(users), -1),
                                           labels, scale)
    table_grad = torch.zeros_like(step.tables.weights).index_add_(0, ids, row_grads.view(len(ids), -1))
    assert torch.allclose(fused_loss, loss, rtol=1e-5)
    checked = 0
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        if isinstance(getattr(model, name.split(".")[0]), torch.nn.Embedding):
            fused = grad_of(table_grad, step.tables.weights, q)
        else:
            fused = step.dense.grads[q]
        assert torch.allclose(fused, p.grad, rtol=1e-4, atol=1e-8), name
        checked += 1
    assert checked == len(list(reference.parameters()))


@pytest.mark.parametrize("kind", KINDS)
def test_packed_tables_name_every_table_in_every_plane_and_pair_row(kind):
    reference, model = twin_models(kind=kind)
    step = FusedStep(model, "adam")
    tables = step.tables
    names = [name for name in optim.USER_TABLES + optim.ITEM_TABLES if hasattr(model, name)]
    assert sorted(tables.rows) == sorted(names) and tables.moments.shape == (2, 12 + 15, tables.width)
    users, items = torch.tensor([3, 0, 11]), torch.tensor([14, 2, 0])
    pairs = tables.weights[tables.pair_rows(users, items)].view(3, 2 * tables.width)
    for name in names:
        weight = getattr(model, name).weight
        assert weight.data_ptr() == tables.table(name).data_ptr() and torch.equal(weight, tables.table(name))
        assert torch.equal(tables.in_pair(pairs, name), getattr(reference, name).weight[users if "user" in name
                                                                                            else items])
        tables.table(name, plane=2).fill_(len(name))  # the second moment of this table only
        assert torch.equal(tables.moments[1, tables.rows[name], tables.columns[name]], tables.table(name, plane=2))
    assert sum(tables.pair[name].stop - tables.pair[name].start for name in names) == 2 * tables.width
    if "user_mlp" in names:  # the MLP input is contiguous in a pair row
        assert torch.equal(tables.in_pair(pairs, "mlp_input"), torch.cat(
            [reference.user_mlp.weight[users], reference.item_mlp.weight[items]], 1))


@pytest.mark.parametrize("kind", KINDS)
def test_fused_model_scores_like_the_model_it_was_built_from(kind):
    reference, model = twin_models(kind=kind)
    FusedStep(model)
    users, items, _ = batch(12, 15, 50)
    with torch.no_grad():
        assert torch.equal(model(users, items), reference(users, items))
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.state_dict().items())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sparse", [True, False])
def test_fused_adam_equals_torch_adam_when_every_row_is_in_every_batch(kind, sparse):
    reference, model = twin_models(6, 6, kind=kind)
    adam = torch.optim.Adam(reference.parameters(), lr=0.01)
    step = FusedStep(model, "adam", lr=0.01, sparse=sparse)
    users, items = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1]), torch.tensor([5, 4, 3, 2, 1, 0, 0, 0])
    labels = torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0])
    for _ in range(5):
        adam.zero_grad()
        loss_of(reference, users, items, labels).backward()
        adam.step()
        step(users, items, labels, 1 / len(labels))
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


@pytest.mark.parametrize("optim,l2,sparse", [("adam", 1e-2, False), ("sgd", 0.0, False), ("sgd", 1e-2, False),
                                             ("sgd", 0.0, True)])
def test_fused_updates_equal_torch_optimizers(optim, l2, sparse):
    reference, model = twin_models(20, 25, 8, 3, "neumf")
    torch_optimizer = (torch.optim.Adam if optim == "adam" else torch.optim.SGD)(reference.parameters(), lr=0.05,
                                                                                 weight_decay=l2)
    step = FusedStep(model, optim, lr=0.05, l2=l2, sparse=sparse)
    for seed in range(4):
        users, items, labels = batch(20, 25, 64, seed)
        torch_optimizer.zero_grad()
        loss_of(reference, users, items, labels).backward()
        torch_optimizer.step()
        step(users, items, labels, 1 / len(labels))
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        assert not torch.equal(p, twin_models(20, 25, 8, 3, "neumf")[0].state_dict()[name]), name  # it moved
        assert torch.allclose(p, q, atol=1e-6), name


@pytest.mark.parametrize("kind", KINDS)
def test_fused_lazy_adam_leaves_rows_outside_the_batch_untouched(kind):
    _, model = twin_models(kind=kind)
    step = FusedStep(model, "adam", lr=0.01)
    table, moments = step.tables.weights.clone(), step.tables.moments.clone()
    for _ in range(3):
        step(torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([1.0, 0.0]), 0.5)
    touched = torch.tensor([1, 2, 12 + 3, 12 + 4])
    untouched = torch.ones(len(table), dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(step.tables.weights[untouched], table[untouched])
    assert torch.equal(step.tables.moments[:, untouched], moments[:, untouched])
    assert not torch.equal(step.tables.weights[touched], table[touched])


def test_fused_step_resumes_from_its_state():
    _, model = twin_models()
    step = FusedStep(model, "adam", lr=0.01)
    first = [batch(12, 15, 8, seed) for seed in range(3)]
    for b in first:
        step(*b, 1 / 8)
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(step.state_dict())
    step(*batch(12, 15, 8, 9), 1 / 8)
    expected = copy.deepcopy(model.state_dict())
    _, other = twin_models()
    other.load_state_dict(saved_model)
    resumed = FusedStep(other, "adam", lr=0.01)
    resumed.load_state_dict(saved_state)
    resumed(*batch(12, 15, 8, 9), 1 / 8)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in expected.items())


def test_fused_step_refuses_what_it_cannot_do():
    _, model = twin_models()
    with pytest.raises(ValueError):
        FusedStep(model, "rmsprop")
    with pytest.raises(ValueError):
        FusedStep(model, "adam", l2=1e-3, sparse=True)


def test_sparse_model_gives_the_same_loss_and_gradients():
    dense, sparse = twin_models()
    users, items = torch.tensor([0, 3, 3, 11, 5]), torch.tensor([14, 2, 2, 0, 7])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    dense_loss, sparse_loss = loss_of(dense, users, items, labels), loss_of(sparse, users, items, labels)
    dense_loss.backward()
    sparse_loss.backward()
    assert torch.equal(dense_loss, sparse_loss)
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        grad = q.grad.to_dense() if q.grad.is_sparse else q.grad
        assert q.grad.is_sparse == (name.split(".")[0] in ("user_gmf", "item_gmf", "user_mlp", "item_mlp"))
        assert torch.allclose(p.grad, grad, atol=1e-7), name


def test_lazy_adam_equals_adam_when_every_row_is_in_every_batch():
    dense, sparse = twin_models(users=6, items=6)
    adam, lazy = torch.optim.Adam(dense.parameters(), lr=0.01), LazyAdam(sparse.parameters(), lr=0.01)
    users, items = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1]), torch.tensor([5, 4, 3, 2, 1, 0, 0, 0])
    labels = torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0])
    for _ in range(5):
        for model, optimizer in ((dense, adam), (sparse, lazy)):
            optimizer.zero_grad()
            loss_of(model, users, items, labels).backward()
            optimizer.step()
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_lazy_adam_leaves_rows_outside_the_batch_untouched():
    _, sparse = twin_models()
    lazy = LazyAdam(sparse.parameters(), lr=0.01)
    before = sparse.user_gmf.weight.detach().clone()
    for _ in range(3):
        lazy.zero_grad()
        loss_of(sparse, torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([1.0, 0.0])).backward()
        lazy.step()
    after = sparse.user_gmf.weight.detach()
    assert torch.equal(after[[0, 3, 4]], before[[0, 3, 4]])
    assert not torch.equal(after[[1, 2]], before[[1, 2]])


def test_autograd_step_equals_the_fused_step():
    (_, reference), (_, model) = twin_models(20, 25, 8, 3, "neumf"), twin_models(20, 25, 8, 3, "neumf")
    autograd = AutogradStep(reference, LazyAdam(reference.parameters(), lr=0.01))
    fused = FusedStep(model, "adam", lr=0.01)
    for seed in range(3):
        b = batch(20, 25, 32, seed)
        assert torch.allclose(autograd(*b, 1 / 32), fused(*b, 1 / 32), rtol=1e-5)
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_sparse_updates_by_default_on_the_cpu_and_dense_on_cuda():
    import main
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training.uses_sparse_updates(main.parse_args([]), cpu)
    assert not training.uses_sparse_updates(main.parse_args([]), cuda)
    assert training.uses_sparse_updates(main.parse_args(["--sparse"]), cuda)
    assert not training.uses_sparse_updates(main.parse_args(["--no-sparse"]), cpu)
    assert not training.uses_sparse_updates(main.parse_args(["--l2", "1e-3"]), cpu, say=lambda _: None)


@pytest.mark.parametrize("flags,fused", [([], True), (["--optim", "sgd"], True), (["--no-sparse", "--l2", "1e-4"], True),
                                         (["--optim", "adagrad"], False), (["--optim", "rmsprop"], False),
                                         (["--amp"], False)])
def test_the_fused_step_serves_adam_and_sgd(flags, fused):
    import distributed
    import main
    args = main.parse_args(flags)
    sparse = training.uses_sparse_updates(args, torch.device("cpu"), say=lambda _: None)
    model = NCF(10, 12, 4, 2, "neumf", sparse)
    step = training.make_step(model, args, sparse, distributed.Context(0, 1, torch.device("cpu")))
    assert isinstance(step, FusedStep if fused else AutogradStep)
    loss = step(torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([1.0, 0.0]), 0.5)
    assert loss.shape == () and loss > 0


def test_resuming_an_older_optimizer_state_is_one_line(shared_split, tmp_path):
    from conftest import run_script
    data_dir, _ = shared_split
    save_dir = str(tmp_path / "run")
    flags = ["--data_dir", data_dir, "--dataset", "tiny", "--gpu", "cpu", "--wandb", "disabled", "--epochs", "1"]
    assert run_script("main.py", *flags, "--save_dir", save_dir).returncode == 0
    last = tmp_path / "run" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["optimizer"] = {"state": {}, "param_groups": []}  # a torch.optim state, as versions before FusedStep
    torch.save(checkpoint, last)
    result = run_script("main.py", "--resume", str(last), "--epochs", "2")
    assert result.returncode == 2 and "optimizer state" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert last.exists() and (tmp_path / "run" / "best.pt").exists()  # the earlier run's files are kept
