"""GMF, MLP and NeuMF (He et al., Neural Collaborative Filtering, WWW 2017), plain matrix factorisation as the
baseline (Rendle et al. 2020), and loading pretrained GMF/MLP into NeuMF.

A model's forward is its definition. Its candidate_scorer (the first MLP layer split between users and items) is
an optimisation of it: checked_scorer uses it where it gives forward's logits on a few users, checked once per model
instance, else forward_scorer, which runs forward on every (user, item) pair.
"""
import copy
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("gmf", "mlp", "neumf", "mf")


@dataclass(frozen=True)
class ModelConfig:
    """What a model is built from, named as main.py's flags: --model, --latent_dim_mf (the predictive factors: GMF
    embedding size and last MLP layer width) and --num_layers (MLP layers)."""
    model: str = "neumf"
    latent_dim_mf: int = 8
    num_layers: int = 3

    @classmethod
    def of(cls, config):
        """The configuration held by parsed flags (an argparse namespace) or a checkpoint's "config" dict."""
        values = config if isinstance(config, dict) else vars(config)
        return cls(values["model"], values["latent_dim_mf"], values["num_layers"])


class NCF(nn.Module):
    """GMF, MLP or NeuMF, chosen by `model`; forward returns logits.

    GMF: user and item embeddings of size `latent_dim_mf`, element-wise product.
    MLP: embeddings of size latent_dim_mf * 2**(num_layers - 1) per side, concatenated, then `num_layers`
    Linear+ReLU layers each halving the width down to `latent_dim_mf` (8, 3 layers: 64 -> 32 -> 16 -> 8).
    NeuMF: both, the output layer reading [GMF product, MLP output].
    sparse: embedding gradients hold only the batch's rows (for optimizers that update only those rows).
    """

    def __init__(self, num_users, num_items, latent_dim_mf=8, num_layers=3, model="neumf", sparse=False):
        super().__init__()
        if model not in ("gmf", "mlp", "neumf"):
            raise ValueError(f"NCF: model {model!r} is not gmf, mlp or neumf (MF is the class MF)")
        self.model = model
        self.use_gmf = model in ("gmf", "neumf")
        self.use_mlp = model in ("mlp", "neumf")
        if self.use_gmf:
            self.user_gmf = nn.Embedding(num_users, latent_dim_mf, sparse=sparse)
            self.item_gmf = nn.Embedding(num_items, latent_dim_mf, sparse=sparse)
        if self.use_mlp:
            mlp_dim = latent_dim_mf * 2 ** (num_layers - 1)
            self.user_mlp = nn.Embedding(num_users, mlp_dim, sparse=sparse)
            self.item_mlp = nn.Embedding(num_items, mlp_dim, sparse=sparse)
            widths = [latent_dim_mf * 2 ** (num_layers - i) for i in range(num_layers + 1)]
            layers = []
            for width_in, width_out in zip(widths[:-1], widths[1:]):
                layers += [nn.Linear(width_in, width_out), nn.ReLU()]
            self.mlp = nn.Sequential(*layers)
        self.predict = nn.Linear(latent_dim_mf * (self.use_gmf + self.use_mlp), 1)
        init_embeddings(self)

    def embeddings(self):
        return [m for m in self.modules() if isinstance(m, nn.Embedding)]

    def forward(self, users, items):
        parts = []
        if self.use_gmf:
            parts.append(self.user_gmf(users) * self.item_gmf(items))
        if self.use_mlp:
            parts.append(self.mlp(torch.cat([self.user_mlp(users), self.item_mlp(items)], dim=-1)))
        return self.predict(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]).squeeze(-1)

    def candidate_scorer(self):
        """A function (users [rows], items [rows, candidates] or None for every item) -> logits [rows, candidates],
        equal to forward on every (user, item) pair, for evaluation: the first MLP layer is linear in the
        concatenation [user, item], so it is applied to every item once here and to each user once per call,
        instead of to every pair; the output layer is split the same way instead of concatenating its input.
        Every item (None) goes through every_item_scorer, without gradients."""
        gmf_width = self.user_gmf.embedding_dim if self.use_gmf else 0
        weight, bias = self.predict.weight[0], self.predict.bias
        if self.use_mlp:
            first, user_width = self.mlp[0], self.user_mlp.embedding_dim
            item_part = F.linear(self.item_mlp.weight, first.weight[:, user_width:])
            every_item = self.every_item_scorer(item_part, weight[gmf_width:])

        def score(users, items=None):
            if items is None and self.use_mlp:
                logits = every_item(F.linear(self.user_mlp(users), first.weight[:, :user_width], first.bias))
                if self.use_gmf:
                    logits += (self.user_gmf(users) * weight[:gmf_width]) @ self.item_gmf.weight.t()
                return logits.add_(bias)
            logits = bias
            if self.use_gmf:
                user_gmf = self.user_gmf(users) * weight[:gmf_width]
                logits = logits + (user_gmf[:, None, :] * per_item(self.item_gmf.weight, items)).sum(-1)
            if self.use_mlp:
                user_part = F.linear(self.user_mlp(users), first.weight[:, :user_width], first.bias)
                hidden = self.mlp[1:](user_part[:, None, :] + per_item(item_part, items))
                logits = logits + hidden @ weight[gmf_width:]
            return logits

        return score

    def every_item_scorer(self, item_part, output_weight, block_pairs=1 << 17):
        """A function (user_part [rows, width]: the users' share of the first MLP layer, its bias included) -> the
        MLP's share of the logits [rows, items] for every item. Features lie along the rows and pairs along the
        columns ([width, users x items] blocks of `block_pairs` pairs): each layer is then one wide matrix product
        (weight [out, in] @ hidden [in, pairs]), 2x faster on the CPU than pairs along the rows. No gradients."""
        item_part_t = item_part.t().contiguous()  # [width, items]
        layers = [(m.weight, m.bias[:, None]) for m in self.mlp[2:] if isinstance(m, nn.Linear)]
        output = output_weight[None, :]
        num_items = item_part_t.shape[1]

        @torch.no_grad()
        def every_item(user_part):
            logits = torch.empty(len(user_part), num_items, device=user_part.device, dtype=user_part.dtype)
            rows = max(1, min(len(user_part), block_pairs // num_items))
            first = torch.empty(len(item_part_t), rows, num_items, device=user_part.device, dtype=user_part.dtype)
            for begin in range(0, len(user_part), rows):
                block = user_part[begin:begin + rows]
                out = first if len(block) == rows else first.view(-1)[:first[:, :len(block)].numel()].view(
                    len(item_part_t), len(block), num_items)
                hidden = torch.add(item_part_t[:, None, :], block.t()[:, :, None], out=out).relu_()
                hidden = hidden.view(len(item_part_t), -1)
                for layer_weight, layer_bias in layers:
                    hidden = torch.addmm(layer_bias, layer_weight, hidden).relu_()
                logits[begin:begin + rows] = (output @ hidden).view(len(block), num_items)
            return logits

        return every_item


class MF(nn.Module):
    """Plain matrix factorisation, the baseline of Rendle et al. 2020: the dot product of user and item embeddings
    of size `latent_dim_mf`, plus user, item and global biases; forward returns logits. Its parameters keep the names
    they had when MF ran through NCF (user_gmf, item_gmf, user_bias, item_bias, bias), so checkpoints load."""

    model = "mf"

    def __init__(self, num_users, num_items, latent_dim_mf=8, sparse=False):
        super().__init__()
        self.user_gmf = nn.Embedding(num_users, latent_dim_mf, sparse=sparse)
        self.item_gmf = nn.Embedding(num_items, latent_dim_mf, sparse=sparse)
        self.user_bias = nn.Embedding(num_users, 1, sparse=sparse)
        self.item_bias = nn.Embedding(num_items, 1, sparse=sparse)
        self.bias = nn.Parameter(torch.zeros(1))
        init_embeddings(self)

    def embeddings(self):
        return [self.user_gmf, self.item_gmf, self.user_bias, self.item_bias]

    def forward(self, users, items):
        return ((self.user_gmf(users) * self.item_gmf(items)).sum(-1) + self.user_bias(users)[:, 0]
                + self.item_bias(items)[:, 0] + self.bias)

    def candidate_scorer(self):
        """As NCF.candidate_scorer: (users [rows], items [rows, candidates] or None) -> logits [rows, candidates]."""
        def score(users, items=None):
            if items is None:  # every item: one matrix product, never a [rows, items, factor] product
                products = self.user_gmf(users) @ self.item_gmf.weight.t()
            else:
                products = (self.user_gmf(users)[:, None, :] * per_item(self.item_gmf.weight, items)).sum(-1)
            return products + self.user_bias(users) + per_item(self.item_bias.weight[:, 0], items) + self.bias

        return score


def matches(actual, expected, tolerance=1e-4, norm=float("inf")):
    """Whether tensor `actual` equals `expected` within `tolerance` of expected's size, both measured by the vector
    norm `norm` (by default the largest magnitude): equal up to float32 round-off of the same sums taken in another
    order."""
    if actual.shape != expected.shape or not expected.numel():
        return actual.shape == expected.shape
    error = torch.linalg.vector_norm(actual - expected, norm)
    return bool(error <= tolerance * torch.linalg.vector_norm(expected, norm))


def table_rows(model):
    """(users, items): the rows of the model's user and item embedding tables."""
    users = next(getattr(model, name) for name in ("user_gmf", "user_mlp", "user_bias") if hasattr(model, name))
    items = next(getattr(model, name) for name in ("item_gmf", "item_mlp", "item_bias") if hasattr(model, name))
    return users.num_embeddings, items.num_embeddings


def small_copy(model, rows=64):
    """A deep copy of `model` whose embedding tables hold only their first `rows` rows: the same code on less data,
    for checks."""
    memo = {}
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            memo[id(module)] = nn.Embedding.from_pretrained(module.weight[:rows].detach().clone(), sparse=module.sparse,
                                                            freeze=not module.weight.requires_grad)
    return copy.deepcopy(model, memo)


def forward_scorer(model, block_pairs=1 << 16):
    """A scorer with candidate_scorer's contract through forward itself: (users [rows], items [rows, candidates] or
    None for every item) -> logits [rows, candidates], forward run on every (user, item) pair, `block_pairs` pairs
    at a time."""
    num_items = table_rows(model)[1]

    def score(users, items=None):
        if items is None:
            items = torch.arange(num_items, device=users.device).expand(len(users), num_items)
        pair_users, pair_items = users[:, None].expand_as(items).reshape(-1), items.reshape(-1)
        blocks = [model(pair_users[begin:begin + block_pairs], pair_items[begin:begin + block_pairs])
                  for begin in range(0, len(pair_items), block_pairs)]
        return torch.cat(blocks).view(items.shape) if blocks else torch.zeros(items.shape, device=items.device)

    return score


def scorer_agrees(model, users=3, candidates=16, tolerance=1e-4):
    """(agrees, why not): whether model.candidate_scorer() gives forward's logits (within `tolerance` of their
    largest magnitude) for `users` random users on `candidates` random items each and on every item, on a
    small_copy of the model in eval mode. The model and torch's random state are left as they were."""
    device = next(model.parameters()).device
    model = small_copy(model).eval()
    num_users, num_items = table_rows(model)
    generator = torch.Generator().manual_seed(0)
    some_users = torch.randint(num_users, (users,), generator=generator).to(device)
    items = torch.randint(num_items, (users, candidates), generator=generator).to(device)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            fast, forward = model.candidate_scorer(), forward_scorer(model)
            for what, its_items in (("candidates", items), ("every item", None)):
                if not matches(fast(some_users, its_items).float(), forward(some_users, its_items).float(),
                               tolerance):
                    return False, f"its logits of {what} differ"
    except Exception as e:  # a scorer that cannot follow a changed model: any error means "disagrees"
        return False, f"{type(e).__name__}: {e}"
    return True, ""


SCORER_AGREES = weakref.WeakKeyDictionary()  # model -> scorer_agrees' verdict on it


def checked_scorer(model, say=print):
    """model.candidate_scorer() where it agrees with the model's forward (scorer_agrees, once per model instance),
    else forward_scorer(model), with one line saying so. A model without a forward of its own (the baselines) is
    defined by its candidate_scorer."""
    if type(model).forward is nn.Module.forward:
        return model.candidate_scorer()
    if model not in SCORER_AGREES:
        SCORER_AGREES[model], why = scorer_agrees(model)
        if not SCORER_AGREES[model]:
            say(f"note: {type(model).__name__}.candidate_scorer disagrees with its forward ({why}): scoring through "
                f"forward instead")
    return model.candidate_scorer() if SCORER_AGREES[model] else forward_scorer(model)


def build_model(config, num_users, num_items, sparse=False):
    """The model a ModelConfig describes: MF for "mf", else NCF (GMF, MLP or NeuMF)."""
    if config.model == "mf":
        return MF(num_users, num_items, config.latent_dim_mf, sparse)
    return NCF(num_users, num_items, config.latent_dim_mf, config.num_layers, config.model, sparse)


def model_size(config, num_users, num_items):
    """(parameters, width) of the model build_model makes, by arithmetic alone (nothing is built or allocated):
    width is the values one sample's forward pass produces (its embedding rows and every layer's outputs).
    OverflowError when a tensor would have more elements than torch can index (2^63)."""
    model, dim, num_layers = config.model, config.latent_dim_mf, config.num_layers
    embedding_dims = {"mf": [dim, dim, 1, 1], "gmf": [dim, dim]}.get(model, [])
    layer_shapes = []  # (in, out) of each Linear
    if model in ("mlp", "neumf"):
        widths = [dim * 2 ** (num_layers - i) for i in range(num_layers + 1)]
        embedding_dims = ([dim, dim] if model == "neumf" else []) + [widths[1], widths[1]]
        layer_shapes = list(zip(widths[:-1], widths[1:]))
    if model != "mf":
        layer_shapes.append((dim * (2 if model == "neumf" else 1), 1))
    tables = [(num_users if i % 2 == 0 else num_items) * size for i, size in enumerate(embedding_dims)]
    weights = [n_in * n_out for n_in, n_out in layer_shapes]
    if max(tables + weights) >= 2 ** 63:
        raise OverflowError(f"a tensor of {max(tables + weights):.3g} elements")
    params = sum(tables) + sum(weights) + sum(n_out for _, n_out in layer_shapes) + (model == "mf")
    return params, sum(embedding_dims) + sum(n_out for _, n_out in layer_shapes)


def init_embeddings(model, std=0.01):
    """N(0, std) embeddings (0.01: the NCF paper's code); biases (embeddings of width 1) start at zero."""
    for embedding in model.embeddings():
        nn.init.normal_(embedding.weight, std=std if embedding.embedding_dim > 1 else 0.0)


def per_item(table, items):
    """table's rows for items [rows, candidates] (as [rows, candidates, ...]), or the whole table for None."""
    if items is None:
        return table
    return table.index_select(0, items.reshape(-1)).view(*items.shape, *table.shape[1:])  # faster than table[items]


def load_pretrained(neumf, gmf_state, mlp_state, alpha=0.5):
    """Copy pretrained GMF and MLP weights into a NeuMF; its output layer is [alpha * GMF's, (1 - alpha) * MLP's]."""
    state = neumf.state_dict()
    for key in ("user_gmf.weight", "item_gmf.weight"):
        state[key] = gmf_state[key]
    for key in mlp_state:
        if key.startswith(("user_mlp.", "item_mlp.", "mlp.")):
            state[key] = mlp_state[key]
    state["predict.weight"] = torch.cat(
        [alpha * gmf_state["predict.weight"], (1 - alpha) * mlp_state["predict.weight"]], dim=1)
    state["predict.bias"] = alpha * gmf_state["predict.bias"] + (1 - alpha) * mlp_state["predict.bias"]
    neumf.load_state_dict(state)
    return neumf
