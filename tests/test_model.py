import pytest
import torch

from model import MF, NCF, ModelConfig, build_model, load_pretrained, model_size


def expected_parameters(users, items, factor, layers, model):
    gmf = (users + items) * factor
    mlp = (users + items) * factor * 2 ** (layers - 1)
    widths = [factor * 2 ** (layers - i) for i in range(layers + 1)]
    mlp += sum(w_in * w_out + w_out for w_in, w_out in zip(widths[:-1], widths[1:]))
    return {"gmf": gmf + factor + 1, "mlp": mlp + factor + 1, "neumf": gmf + mlp + 2 * factor + 1,
            "mf": gmf + users + items + 1}[model]


@pytest.mark.parametrize("factor,layers", [(8, 3), (4, 1), (16, 2), (8, 4)])
@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf", "mf"])
def test_shapes_and_parameter_counts(factor, layers, kind):
    model = build_model(ModelConfig(kind, factor, layers), 50, 70)
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(50, 70, factor, layers, kind)
    logits = model(torch.tensor([0, 49, 3]), torch.tensor([69, 0, 5]))
    assert logits.shape == (3,)


@pytest.mark.parametrize("factor,layers", [(8, 3), (4, 1), (16, 2), (5, 4)])
@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf", "mf"])
def test_model_size_is_the_built_models_without_building_it(factor, layers, kind):
    model = build_model(ModelConfig(kind, factor, layers), 50, 70)
    width = sum(m.embedding_dim if isinstance(m, torch.nn.Embedding) else m.out_features
                for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.Linear)))
    assert model_size(ModelConfig(kind, factor, layers), 50, 70) == (sum(p.numel() for p in model.parameters()), width)


def test_model_size_refuses_tensors_torch_cannot_index():
    assert model_size(ModelConfig("gmf", 2 ** 58, 1), 10, 10)[0] == 20 * 2 ** 58 + 2 ** 58 + 1
    with pytest.raises(OverflowError):
        model_size(ModelConfig("mlp", 8, 200), 10, 10)
    with pytest.raises(OverflowError):
        model_size(ModelConfig("mf", 2 ** 60, 1), 10, 10)


def test_seed_tower_for_factor_8_and_3_layers():
    model = NCF(10, 10, 8, 3, "neumf")
    assert model.user_mlp.weight.shape == (10, 32)
    linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 8)]
    assert (model.predict.in_features, model.predict.out_features) == (16, 1)
    assert 0.005 < model.user_gmf.weight.std().item() < 0.015  # N(0, 0.01)


def test_pretrained_neumf_reproduces_gmf_and_mlp():
    torch.manual_seed(0)
    gmf, mlp = NCF(30, 40, 8, 3, "gmf"), NCF(30, 40, 8, 3, "mlp")
    for model in (gmf, mlp):
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.5)
    neumf = load_pretrained(NCF(30, 40, 8, 3, "neumf"), gmf.state_dict(), mlp.state_dict())
    users, items = torch.arange(30), torch.arange(30) + 5
    with torch.no_grad():
        assert torch.allclose(neumf.user_gmf(users) * neumf.item_gmf(items), gmf.user_gmf(users) * gmf.item_gmf(items))
        mlp_input = torch.cat([neumf.user_mlp(users), neumf.item_mlp(items)], -1)
        assert torch.allclose(neumf.mlp(mlp_input), mlp.mlp(torch.cat([mlp.user_mlp(users), mlp.item_mlp(items)], -1)))
        assert torch.allclose(neumf(users, items), 0.5 * gmf(users, items) + 0.5 * mlp(users, items), atol=1e-5)


@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf", "mf"])
def test_candidate_scorer_equals_forward(kind):
    torch.manual_seed(1)
    model = build_model(ModelConfig(kind, 8, 3), 40, 60)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    users, items = torch.randint(40, (7,)), torch.randint(60, (7, 100))
    pairwise = model(users[:, None].expand_as(items).reshape(-1), items.reshape(-1)).view(items.shape)
    score = model.candidate_scorer()
    assert torch.allclose(score(users, items), pairwise, atol=1e-5)
    every_item = model(users.repeat_interleave(60), torch.arange(60).repeat(7)).view(7, 60)
    assert torch.allclose(score(users), every_item, atol=1e-5)


def test_mf_is_a_biased_dot_product():
    model = MF(5, 6, 4)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    users, items = torch.tensor([0, 4, 2]), torch.tensor([5, 1, 1])
    expected = ((model.user_gmf.weight[users] * model.item_gmf.weight[items]).sum(1) + model.user_bias.weight[users, 0]
                + model.item_bias.weight[items, 0] + model.bias)
    assert torch.allclose(model(users, items), expected)
