"""The training step: forward, loss, gradients and the optimizer update of one batch.

FusedStep is the fast step for Adam and SGD: the model's embedding tables become column blocks of one packed
buffer (PackedTables: a user's row [GMF | MLP] or [GMF | bias], an item's row the reverse, so the two rows of a
(user, item) pair read as one hold the MLP input [user MLP, item MLP] contiguously; the weights and both Adam
moments side by side) and its dense parameters views of one flat buffer (DenseParameters); the gradients of
GMF, MLP, NeuMF and MF are derived by hand (mf_gradients, ncf_gradients; model.py's forward is the definition
they are tested against), and the update is a handful of operations on the batch's unique rows (lazy: rows
outside the batch untouched) or on the whole table (dense, the seed's update), plus one on the flat buffer.
AutogradStep is the plain path (autograd through model.py and a torch.optim optimizer, with LazyAdam for
sparse gradients), for Adagrad, RMSprop and --amp, and wherever the fused step disagrees with the model's forward:
fused_step_agrees compares the fused step's loss and gradients with autograd's through forward on copies of a model
(training.make_step asks it).
"""
import copy

import torch
import torch.nn.functional as F

from model import matches, small_copy, table_rows

FUSED_OPTIMIZERS = ("adam", "sgd")


def adam_(weights, grads, exp_avgs, exp_avg_sqs, step, lr, betas, eps, l2=0.0):
    """torch.optim.Adam's update (fused=True) of each tensor of the list `weights` (contiguous) and its moments, in
    place, at step `step` (a 0-d float tensor on their device)."""
    torch._fused_adam_(weights, grads, exp_avgs, exp_avg_sqs, [], [step] * len(weights), lr=lr, beta1=betas[0],
                       beta2=betas[1], weight_decay=l2, eps=eps, amsgrad=False, maximize=False)


USER_TABLES = ("user_gmf", "user_mlp", "user_bias")  # a user's packed row, in column order (those the model has)
ITEM_TABLES = ("item_bias", "item_mlp", "item_gmf")  # an item's: the reverse, so that a pair's MLP input is contiguous


class PackedTables:
    """The model's embedding tables packed into one buffer [planes, rows, width]: rows 0 .. num_users - 1 are the
    users', the others the items'; a user's row holds its tables side by side in USER_TABLES order, an item's in
    ITEM_TABLES order, so that the rows of a (user, item) pair read as one "pair row" hold [user GMF | user MLP,
    item MLP | item GMF] (MF: [user GMF | user bias, item bias | item GMF]). Plane 0 holds the weights; for Adam,
    planes 1 and 2 the first and second moments, so that gathering a row gathers all three."""

    def __init__(self, model, planes, device):
        user = [(name, getattr(model, name)) for name in USER_TABLES if hasattr(model, name)]
        item = [(name, getattr(model, name)) for name in ITEM_TABLES if hasattr(model, name)]
        self.num_users = user[0][1].num_embeddings
        self.width = sum(module.embedding_dim for _, module in user)
        self.buffer = torch.zeros(planes, self.num_users + item[0][1].num_embeddings, self.width, device=device)
        self.weights, self.moments = self.buffer[0], self.buffer[1:]  # moments: [exp_avg, exp_avg_sq] or empty
        self.rows, self.columns, self.pair = {}, {}, {}  # table -> its rows; its columns in a row; in a pair row
        for side, tables, offset in ((slice(0, self.num_users), user, 0),
                                     (slice(self.num_users, None), item, self.width)):  # offset: in a pair row
            column = 0
            for name, module in tables:
                self.rows[name], self.columns[name] = side, slice(column, column + module.embedding_dim)
                self.pair[name] = slice(offset + column, offset + column + module.embedding_dim)
                column += module.embedding_dim
        if "user_mlp" in self.pair:
            self.pair["mlp_input"] = slice(self.pair["user_mlp"].start, self.pair["item_mlp"].stop)
        for name, module in user + item:  # the model's tables become views of the weights
            self.table(name).copy_(module.weight.detach())
            module.weight.data = self.table(name)

    def table(self, name, plane=0):
        """Table `name` in plane `plane` (0: weights, 1 and 2: Adam's moments), a view of the buffer."""
        return self.buffer[plane, self.rows[name], self.columns[name]]

    def pair_rows(self, users, items):
        """The packed rows' ids of each (user, item) pair, user then item: [2 * batch]."""
        return torch.stack([users, items + self.num_users], dim=1).view(-1)

    def in_pair(self, pairs, name):
        """Table `name`'s columns of pair rows [batch, 2 * width]."""
        return pairs[:, self.pair[name]]

    def pair_gradient(self, grads):
        """Pair rows' gradient [batch, 2 * width] from {table or "mlp_input": its gradient}, which cover the row."""
        parts = [grads[name] for name in sorted(grads, key=lambda name: self.pair[name].start)]
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


class DenseParameters:
    """The model's other parameters (MLP layers, output layer, biases) as views of one flat buffer, with their
    gradients and Adam's moments in flat buffers of the same layout: one all-reduce, one fused update for all."""

    def __init__(self, model, embeddings):
        params = [p for p in model.parameters() if all(p is not e.weight for e in embeddings)]
        self.values = torch.cat([p.detach().reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.values)
        self.moments = torch.zeros(2, len(self.values), device=self.values.device)
        self.views, self.grads, offset = {}, {}, 0  # parameter -> plain tensors (no autograd) on the flat buffers
        for p in params:
            self.views[p] = self.values[offset:offset + p.numel()].view_as(p)
            self.grads[p] = self.grad[offset:offset + p.numel()].view_as(p)
            p.data = self.views[p]
            offset += p.numel()
        layers = [m for m in model.mlp if isinstance(m, torch.nn.Linear)] if hasattr(model, "mlp") else []
        self.linears = [(self.views[m.weight], self.views[m.bias]) for m in layers]
        self.linear_grads = [(self.grads[m.weight], self.grads[m.bias]) for m in layers]
        bias = model.bias if model.model == "mf" else model.predict.bias
        self.bias, self.bias_grad = self.views[bias], self.grads[bias]
        if model.model != "mf":  # the output layer's weight, as a vector
            self.predict, self.predict_grad = self.views[model.predict.weight][0], self.grads[model.predict.weight][0]


# --- the gradients of each model, derived by hand (model.py's forward is what they are tested against) ---

def logit_gradient(logits, labels, scale):
    """(summed log loss, d loss / d logits): BCE-with-logits' gradient is sigmoid(logit) - label, each sample's
    loss weighed by `scale`. Overwrites `logits`."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    return loss, (logits.sigmoid_() - labels).mul_(scale)


def mf_gradients(tables, dense, pairs, labels, scale):
    """MF: logit = user . item + user bias + item bias + bias. d logit / d user = item (and the reverse), 1 for the
    biases."""
    user, item = tables.in_pair(pairs, "user_gmf"), tables.in_pair(pairs, "item_gmf")
    logits = (user * item).sum(1).add_(tables.in_pair(pairs, "user_bias")[:, 0]) \
        .add_(tables.in_pair(pairs, "item_bias")[:, 0]).add_(dense.bias)
    loss, d_logits = logit_gradient(logits, labels, scale)
    torch.sum(d_logits, 0, keepdim=True, out=dense.bias_grad)
    d_logits = d_logits[:, None]
    return tables.pair_gradient({"user_gmf": d_logits * item, "user_bias": d_logits, "item_bias": d_logits,
                                 "item_gmf": d_logits * user}), loss


def mlp_forward(linears, mlp_input):
    """The MLP tower's activations: [input, after layer 1, ..., after layer L] (Linear then ReLU each)."""
    hidden = [mlp_input]
    for weight, bias in linears:
        hidden.append(torch.addmm(bias, hidden[-1], weight.t()).relu_())
    return hidden


def mlp_backward(dense, hidden, d_output):
    """d loss / d MLP input from d loss / d the tower's output, writing each layer's weight and bias gradients:
    through ReLU (zero where its output is), then d weight = d out^T . in, d bias = sum d out, d in = d out . W."""
    d_hidden = d_output
    for (weight, _), (weight_grad, bias_grad), below, above in zip(
            reversed(dense.linears), reversed(dense.linear_grads), reversed(hidden[:-1]), reversed(hidden[1:])):
        d_hidden = torch.ops.aten.threshold_backward(d_hidden, above, 0)
        torch.mm(d_hidden.t(), below, out=weight_grad)
        torch.sum(d_hidden, 0, out=bias_grad)
        d_hidden = d_hidden @ weight
    return d_hidden


def ncf_gradients(tables, dense, pairs, labels, scale):
    """GMF, MLP or NeuMF: logit = predict . [user GMF * item GMF, MLP tower output] + bias (the parts the model
    has). The output layer's gradient is d logit . its input; its input's, d logit * predict, split between the
    GMF product (whose gradient is the other side's embedding) and the MLP tower (mlp_backward)."""
    parts, gmf_width = [], 0
    if "user_gmf" in tables.pair:
        user, item = tables.in_pair(pairs, "user_gmf"), tables.in_pair(pairs, "item_gmf")
        parts.append(user * item)
        gmf_width = user.shape[1]
    if "mlp_input" in tables.pair:
        hidden = mlp_forward(dense.linears, tables.in_pair(pairs, "mlp_input"))
        parts.append(hidden[-1])
    last = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
    loss, d_logits = logit_gradient(torch.mv(last, dense.predict).add_(dense.bias), labels, scale)
    torch.mv(last.t(), d_logits, out=dense.predict_grad)
    torch.sum(d_logits, 0, keepdim=True, out=dense.bias_grad)
    d_last = torch.outer(d_logits, dense.predict)
    grads = {}
    if gmf_width:
        d_product = d_last[:, :gmf_width]
        grads.update(user_gmf=d_product * item, item_gmf=d_product * user)
    if "mlp_input" in tables.pair:
        grads["mlp_input"] = mlp_backward(dense, hidden, d_last[:, gmf_width:])
    return tables.pair_gradient(grads), loss


class FusedStep:
    """Adam (lazy on embedding rows when `sparse`, else torch.optim.Adam's dense update) or plain SGD, with weight
    decay `l2` (dense only), for an NCF or MF model of model.py; ctx: a distributed.Context (gradients summed over
    its ranks). Rebinds the model's parameters to views of its own storage (PackedTables, DenseParameters): build
    it after moving the model."""

    name = "fused"  # --step's name for it

    def __init__(self, model, optim="adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, l2=0.0, sparse=True, ctx=None,
                 batch_size=None, touched_l2=0.0):
        if optim not in FUSED_OPTIMIZERS or (sparse and l2):
            raise ValueError(f"FusedStep: --optim {optim} with --l2 {l2} and sparse={sparse} is not supported")
        self.optim, self.lr, self.betas, self.eps, self.l2, self.sparse = optim, lr, betas, eps, l2, sparse
        self.touched_l2 = touched_l2
        self.ctx = ctx
        self.max_shard_rows = 2 * -(-batch_size // ctx.world_size) if ctx is not None and ctx.world_size > 1 else 0
        device = next(model.parameters()).device
        self.tables = PackedTables(model, 3 if optim == "adam" else 1, device)
        self.dense = DenseParameters(model, [getattr(model, name) for name in self.tables.rows])
        self.gradients = mf_gradients if model.model == "mf" else ncf_gradients
        rows = len(self.tables.weights)
        self.slots = torch.zeros(rows, dtype=torch.int64, device=device)  # scratch space of unique_rows
        self.table_grad = None if sparse else torch.zeros_like(self.tables.weights)  # the dense update's gradient
        self.positions = torch.arange(0, device=device)
        self.step = torch.zeros((), device=device)
        if ctx is not None and ctx.world_size > 1:
            ctx.broadcast_(self.tables.weights)
            ctx.broadcast_(self.dense.values)

    def state_dict(self):
        return {"step": self.step, "moments": self.tables.moments, "flat_moments": self.dense.moments}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or state.keys() != {"step", "moments", "flat_moments"} \
                or state["moments"].shape != self.tables.moments.shape:
            raise ValueError("not the optimizer state of this fused step")
        self.step.copy_(state["step"])
        self.tables.moments.copy_(state["moments"])
        self.dense.moments.copy_(state["flat_moments"])

    def __call__(self, users, items, labels, scale):
        """Train on one batch; `scale` weighs each sample's loss (1 / the global batch). Returns the batch's
        summed loss (a 0-d tensor)."""
        loss, ids, row_grads = self.backward(users, items, labels, scale)
        if self.touched_l2:
            self.add_touched_l2(ids, row_grads, scale)
        if self.ctx is not None and self.ctx.world_size > 1:
            self.ctx.sum_(self.dense.grad)
            ids, row_grads = self.ctx.gather_sparse_rows(ids, row_grads, self.max_shard_rows)
        self.update(ids, row_grads)
        return loss

    def backward(self, users, items, labels, scale):
        """(the batch's summed loss, the packed rows' ids of its pairs [2 * batch], their gradients [2 * batch,
        width]) on this rank; the dense parameters' gradient goes to self.dense.grad."""
        ids = self.tables.pair_rows(users, items)
        pairs = self.tables.weights.index_select(0, ids).view(len(users), 2 * self.tables.width)
        row_grads, loss = self.gradients(self.tables, self.dense, pairs, labels, scale)
        return loss, ids, row_grads.view(-1, self.tables.width)

    def named_gradients(self, model, ids, row_grads):
        """{name: gradient} of the parameters of `model` (the model this step packed) from backward's rows."""
        table_grad = torch.zeros_like(self.tables.weights).index_add_(0, ids, row_grads)
        grads = {}
        for name, p in model.named_parameters():
            table = name.removesuffix(".weight")
            grads[name] = (table_grad[self.tables.rows[table], self.tables.columns[table]]
                           if table in self.tables.rows else self.dense.grads[p].clone())
        return grads

    def add_touched_l2(self, ids, row_grads, scale):
        """Each sample's gradient gets touched_l2 x the parameters it touches (its user's and item's rows `ids`, and
        the dense parameters), weighed by `scale` as its loss is: per-example SGD's L2 on the parameters in use,
        summed over the batch."""
        row_grads.add_(self.tables.weights.index_select(0, ids), alpha=self.touched_l2 * scale)
        self.dense.grad.add_(self.dense.values, alpha=self.touched_l2 * scale * (len(ids) // 2))

    def unique_rows(self, ids):
        """(rows, inverse) with rows[inverse] == ids and rows unique, in no particular order: like torch.unique,
        but without sorting (several times faster for a batch's ids). Each entry of `ids` writes its position to
        its row's slot; the entries that find their own position there are the rows' first representatives."""
        if len(self.positions) < len(ids):
            self.positions = torch.arange(len(ids), device=ids.device)
        positions = self.positions[:len(ids)]
        self.slots[ids] = positions
        representative = self.slots[ids]
        is_first = representative == positions
        return ids[is_first], (is_first.cumsum(0) - 1)[representative]

    def update(self, ids, row_grads):
        """The optimizer step of the tables (rows `ids` with gradients `row_grads`, repeats summed) and of the
        dense parameters (gradient in self.dense.grad)."""
        self.step += 1
        if self.optim == "sgd":
            self.sgd_update(ids, row_grads)
        elif self.sparse:
            self.lazy_adam_update(ids, row_grads)
        else:
            self.dense_adam_update(ids, row_grads)

    def sgd_update(self, ids, row_grads):
        """w -= lr * (grad + l2 * w); lazily, only the batch's rows (repeats summed by index_add_), without l2."""
        lr, l2, weights, dense = self.lr, self.l2, self.tables.weights, self.dense
        if self.sparse:
            weights.index_add_(0, ids, row_grads, alpha=-lr)
        else:
            grad = self.table_grad.zero_().index_add_(0, ids, row_grads)
            weights.add_(grad.add_(weights, alpha=l2) if l2 else grad, alpha=-lr)
        dense.values.add_(dense.grad.add_(dense.values, alpha=l2) if l2 else dense.grad, alpha=-lr)

    def lazy_adam_update(self, ids, row_grads):
        """Adam on the batch's unique rows only (their weights and both moments gathered, updated, written back)
        and on the dense parameters, in one fused call."""
        rows, inverse = self.unique_rows(ids)
        grad = row_grads.new_zeros(len(rows), self.tables.width).index_add_(0, inverse, row_grads)
        gathered = self.tables.buffer.index_select(1, rows)
        weights, exp_avg, exp_avg_sq = gathered
        adam_([weights, self.dense.values], [grad, self.dense.grad], [exp_avg, self.dense.moments[0]],
              [exp_avg_sq, self.dense.moments[1]], self.step, self.lr, self.betas, self.eps)
        self.tables.buffer.index_copy_(1, rows, gathered)

    def dense_adam_update(self, ids, row_grads):
        """torch.optim.Adam's update of every row (rows outside the batch have gradient 0) and the dense
        parameters, with weight decay l2."""
        grad = self.table_grad.zero_().index_add_(0, ids, row_grads)
        exp_avg, exp_avg_sq = self.tables.moments
        adam_([self.tables.weights, self.dense.values], [grad, self.dense.grad], [exp_avg, self.dense.moments[0]],
              [exp_avg_sq, self.dense.moments[1]], self.step, self.lr, self.betas, self.eps, self.l2)


class AutogradStep:
    """A step through autograd: `trained` (the model, or its DistributedDataParallel wrapper) and a torch
    optimizer; bfloat16 autocast of the forward pass with `amp`."""

    name = "autograd"

    def __init__(self, trained, optimizer, amp=False, world_size=1):
        self.trained, self.optimizer, self.amp, self.world_size = trained, optimizer, amp, world_size

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)

    def __call__(self, users, items, labels, scale):
        with torch.autocast(users.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.trained(users, items)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum") if len(labels) \
            else logits.sum()
        self.optimizer.zero_grad(set_to_none=True)
        (loss * (scale * self.world_size)).backward()  # DistributedDataParallel averages over the ranks
        self.optimizer.step()
        return loss.detach()


class LazyAdam(torch.optim.Optimizer):
    """Adam whose update of an embedding table with a sparse gradient (nn.Embedding(sparse=True)) touches only the
    rows present, as TF's LazyAdam and torch's SparseAdam do; dense gradients get ordinary Adam. For the
    autograd path (--amp)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                tensors = p, state["exp_avg"], state["exp_avg_sq"]
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()
                    rows = grad.indices()[0]
                    weights, exp_avg, exp_avg_sq = (t.index_select(0, rows) for t in tensors)
                    adam_([weights], [grad.values()], [exp_avg], [exp_avg_sq], state["step"], group["lr"],
                          group["betas"], group["eps"])
                    for source, target in zip((weights, exp_avg, exp_avg_sq), tensors):
                        target.index_copy_(0, rows, source)  # rows are unique after coalesce()
                else:
                    adam_([p], [p.grad], [state["exp_avg"]], [state["exp_avg_sq"]], state["step"], group["lr"],
                          group["betas"], group["eps"])


OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
              "rmsprop": torch.optim.RMSprop}
SPARSE_OPTIMIZERS = {"adam": LazyAdam, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}


def torch_optimizer(params, optim, lr, betas, l2, sparse):
    """The torch optimizer --optim names for the autograd step (LazyAdam for Adam with `sparse` gradients)."""
    betas = {"betas": betas} if optim == "adam" else {}
    if sparse:
        return SPARSE_OPTIMIZERS[optim](params, lr=lr, **betas)
    return OPTIMIZERS[optim](params, lr=lr, weight_decay=l2, **betas)


def fused_step_agrees(model, optim="adam", lr=1e-3, betas=(0.9, 0.999), l2=0.0, sparse=True, pairs=64,
                      tolerance=1e-4):
    """(agrees, why not): whether one FusedStep on a copy of `model` gives the loss and gradients that autograd
    through the model's forward gives on another copy, on `pairs` random samples in training mode, both on
    small_copy(model): the part of the step derived from forward by hand. They agree within `tolerance` of their
    largest magnitude (float32 sums taken in another order). The update that follows is the optimizer's own,
    whatever forward is (tests/test_optim.py holds it to torch's), and checking it here would cost a second of
    start-up (torch.optim's first optimizer imports torch._dynamo). A forward whose training-mode output is not
    reproducible (dropout) disagrees. `model` and torch's random state are left as they were."""
    device = next(model.parameters()).device
    model = small_copy(model)
    generator = torch.Generator().manual_seed(0)
    num_users, num_items = table_rows(model)
    users, items = (torch.randint(n, (pairs,), generator=generator).to(device) for n in (num_users, num_items))
    labels = torch.randint(2, (pairs,), generator=generator).float().to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        by_autograd, by_fused = copy.deepcopy(model).train(), copy.deepcopy(model).train()
        logits = by_autograd(users, items)
        with torch.no_grad():
            if not torch.equal(logits, by_autograd(users, items)):
                return False, "its training-mode output is not reproducible (dropout?)"
        expected = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum")
        (expected / pairs).backward()
        try:
            fused = FusedStep(by_fused, optim, lr, betas, l2=l2, sparse=sparse)
            loss, ids, row_grads = fused.backward(users, items, labels, 1 / pairs)
            grads = fused.named_gradients(by_fused, ids, row_grads)
        except Exception as e:  # a model the fused step cannot pack or derive: any error means "disagrees"
            return False, f"the fused step fails on it: {type(e).__name__}: {e}"
    if not matches(loss, expected.detach(), tolerance):
        return False, f"loss {loss.item():.6g}, forward's {expected.item():.6g}"
    for name, p in by_autograd.named_parameters():
        grad = torch.zeros_like(p) if p.grad is None else p.grad.to_dense()
        if not matches(grads[name], grad, tolerance):
            return False, f"the gradient of {name}"
    return True, ""
