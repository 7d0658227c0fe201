import torch
import torch.nn.functional as F

from model import NCF
from optim import LazyAdam


def twin_models(users=12, items=15):
    torch.manual_seed(0)
    dense = NCF(users, items, 4, 2, "neumf")
    sparse = NCF(users, items, 4, 2, "neumf", sparse=True)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def loss_of(model, users, items, labels):
    return F.binary_cross_entropy_with_logits(model(users, items), labels)


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
