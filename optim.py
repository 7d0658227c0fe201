"""The training step: forward, loss, gradients and the optimizer update of one batch.

FusedStep is the fast step for Adam and SGD: the model's four embedding tables become column blocks of one
table (a user's row [GMF | MLP] or [GMF | bias], an item's row the reverse, so the two rows of a (user, item)
pair read as one hold the MLP input [user MLP, item MLP] contiguously) and its dense parameters views of one
flat buffer; the gradients of GMF, MLP, NeuMF and MF are derived by hand (model.py's forward is the definition
they are tested against), and the update is a handful of operations on the batch's unique rows (lazy: rows
outside the batch untouched) or on the whole table (dense, the seed's update), plus one on the flat buffer.
AutogradStep is the plain path (autograd through model.py and a torch.optim optimizer, with LazyAdam for
sparse gradients), for Adagrad, RMSprop and --amp. make_step builds the step main.py's flags ask for.
"""
import torch
import torch.nn.functional as F

import distributed

FUSED_OPTIMIZERS = ("adam", "sgd")


def adam_(weights, grads, exp_avgs, exp_avg_sqs, step, lr, betas, eps, l2=0.0):
    """torch.optim.Adam's update (fused=True) of each tensor of the list `weights` (contiguous) and its moments, in
    place, at step `step` (a 0-d float tensor on their device)."""
    torch._fused_adam_(weights, grads, exp_avgs, exp_avg_sqs, [], [step] * len(weights), lr=lr, beta1=betas[0],
                       beta2=betas[1], weight_decay=l2, eps=eps, amsgrad=False, maximize=False)


def embedding_parts(model):
    """The model's embedding modules of each side in the packed row's column order."""
    user = [getattr(model, name) for name in ("user_gmf", "user_mlp", "user_bias") if hasattr(model, name)]
    item = [getattr(model, name) for name in ("item_bias", "item_mlp", "item_gmf") if hasattr(model, name)]
    return user, item


class FusedStep:
    """Adam (lazy on embedding rows when `sparse`, else torch.optim.Adam's dense update) or plain SGD, with weight
    decay `l2` (dense only), for an NCF or MF model of model.py; ctx: a distributed.Context (gradients summed over
    its ranks). Rebinds the model's parameters to views of its own storage: build it after moving the model."""

    def __init__(self, model, optim="adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, l2=0.0, sparse=True, ctx=None,
                 batch_size=None):
        if optim not in FUSED_OPTIMIZERS or (sparse and l2):
            raise ValueError(f"FusedStep: --optim {optim} with --l2 {l2} and sparse={sparse} is not supported")
        self.model, self.optim, self.lr, self.betas, self.eps, self.l2, self.sparse = \
            model, optim, lr, betas, eps, l2, sparse
        self.ctx = ctx
        self.max_shard_rows = 2 * -(-batch_size // ctx.world_size) if ctx is not None and ctx.world_size > 1 else 0
        user_parts, item_parts = embedding_parts(model)
        self.num_users, self.width = user_parts[0].num_embeddings, sum(m.embedding_dim for m in user_parts)
        self.kind = model.model  # gmf, mlp, neumf or mf
        self.use_gmf, self.use_mlp = hasattr(model, "user_gmf"), hasattr(model, "mlp")  # MF: the GMF tables
        self.factor = model.user_gmf.embedding_dim if self.use_gmf else 0
        device = next(model.parameters()).device
        rows = self.num_users + item_parts[0].num_embeddings
        # Planes: the table of weights, then (Adam) the two moments, so that a row's three are gathered at once.
        self.planes = torch.zeros(3 if optim == "adam" else 1, rows, self.width, device=device)
        self.table = self.planes[0]
        for side, parts in ((slice(0, self.num_users), user_parts), (slice(self.num_users, None), item_parts)):
            column = 0
            for module in parts:
                view = self.table[side, column:column + module.embedding_dim]
                view.copy_(module.weight.detach())
                module.weight.data = view
                column += module.embedding_dim
        embeddings = {id(m.weight) for m in user_parts + item_parts}
        self.dense_params = [p for p in model.parameters() if id(p) not in embeddings]
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.dense_params])
        self.flat_grad = torch.zeros_like(self.flat)
        values, self.grads, offset = {}, {}, 0  # plain tensors (no autograd) sharing each dense parameter's memory
        for p in self.dense_params:
            values[p] = self.flat[offset:offset + p.numel()].view_as(p)
            self.grads[p] = self.flat_grad[offset:offset + p.numel()].view_as(p)
            p.data = values[p]
            offset += p.numel()
        linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)] if self.use_mlp else []
        self.linears = [(values[m.weight], values[m.bias]) for m in linears]
        self.linear_grads = [(self.grads[m.weight], self.grads[m.bias]) for m in linears]
        if self.kind == "mf":
            self.bias, self.bias_grad = values[model.bias], self.grads[model.bias]
        else:
            self.predict, self.predict_grad = values[model.predict.weight][0], self.grads[model.predict.weight][0]
            self.bias, self.bias_grad = values[model.predict.bias], self.grads[model.predict.bias]
        self.flat_moments = torch.zeros(2, len(self.flat), device=device)
        self.slots = torch.zeros(rows, dtype=torch.int64, device=device)  # scratch space of unique_rows
        self.table_grad = None if sparse else torch.zeros_like(self.table)  # the dense update's gradient
        self.positions = torch.arange(0, device=device)
        self.step = torch.zeros((), device=device)
        if ctx is not None and ctx.world_size > 1:
            ctx.broadcast_(self.table)
            ctx.broadcast_(self.flat)

    def state_dict(self):
        return {"step": self.step, "moments": self.planes[1:], "flat_moments": self.flat_moments}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or state.keys() != {"step", "moments", "flat_moments"} \
                or state["moments"].shape != self.planes[1:].shape:
            raise ValueError("not the optimizer state of this fused step")
        self.step.copy_(state["step"])
        self.planes[1:].copy_(state["moments"])
        self.flat_moments.copy_(state["flat_moments"])

    def __call__(self, users, items, labels, scale):
        """Train on one batch; `scale` weighs each sample's loss (1 / the global batch). Returns the batch's
        summed loss (a 0-d tensor)."""
        ids = torch.stack([users, items + self.num_users], dim=1).view(-1)
        row_grads, loss = self.gradients(self.table.index_select(0, ids).view(len(users), 2 * self.width),
                                         labels, scale)
        row_grads = row_grads.view(-1, self.width)
        if self.ctx is not None and self.ctx.world_size > 1:
            self.ctx.sum_(self.flat_grad)
            ids, row_grads = self.ctx.gather_sparse_rows(ids, row_grads, self.max_shard_rows)
        self.update(ids, row_grads)
        return loss

    def gradients(self, pairs, labels, scale):
        """(d loss / d pairs, summed loss) for pairs [batch, 2 * width] (a user's row, then its item's row); the
        dense parameters' gradients are written to self.flat_grad."""
        factor, width = self.factor, self.width
        if self.kind == "mf":
            user, item = pairs[:, :factor], pairs[:, factor + 2:]
            logits = (user * item).sum(1).add_(pairs[:, factor]).add_(pairs[:, factor + 1]).add_(self.bias)
            loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
            d_logits = (logits.sigmoid_() - labels).mul_(scale)
            torch.sum(d_logits, 0, keepdim=True, out=self.bias_grad)
            d_logits = d_logits[:, None]
            return torch.cat([d_logits * item, d_logits, d_logits, d_logits * user], 1), loss
        parts = []
        if self.use_gmf:
            user, item = pairs[:, :factor], pairs[:, 2 * width - factor:]
            parts.append(user * item)
        if self.use_mlp:
            hidden = [pairs[:, factor:2 * width - factor]]
            for weight, bias in self.linears:
                hidden.append(torch.addmm(bias, hidden[-1], weight.t()).relu_())
            parts.append(hidden[-1])
        last = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        logits = torch.mv(last, self.predict).add_(self.bias)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        d_logits = (logits.sigmoid_() - labels).mul_(scale)
        torch.mv(last.t(), d_logits, out=self.predict_grad)
        torch.sum(d_logits, 0, keepdim=True, out=self.bias_grad)
        d_last = torch.outer(d_logits, self.predict)
        if not self.use_mlp:
            d_product = d_last
            return torch.cat([d_product * item, d_product * user], 1), loss
        d_hidden = d_last[:, factor:]
        for (weight, _), (weight_grad, bias_grad), below, above in zip(
                reversed(self.linears), reversed(self.linear_grads), reversed(hidden[:-1]), reversed(hidden[1:])):
            d_hidden = torch.ops.aten.threshold_backward(d_hidden, above, 0)
            torch.mm(d_hidden.t(), below, out=weight_grad)
            torch.sum(d_hidden, 0, out=bias_grad)
            d_hidden = d_hidden @ weight
        if not self.use_gmf:
            return d_hidden, loss
        d_product = d_last[:, :factor]
        return torch.cat([d_product * item, d_hidden, d_product * user], 1), loss

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
        """The optimizer step of the table (rows `ids` with gradients `row_grads`, repeats summed) and the flat
        buffer (gradient in self.flat_grad)."""
        self.step += 1
        lr, l2 = self.lr, self.l2
        if self.optim == "sgd":
            if self.sparse:
                self.table.index_add_(0, ids, row_grads, alpha=-lr)
            else:
                grad = self.table_grad.zero_().index_add_(0, ids, row_grads)
                self.table.add_(grad.add_(self.table, alpha=l2) if l2 else grad, alpha=-lr)
            self.flat.add_(self.flat_grad.add_(self.flat, alpha=l2) if l2 else self.flat_grad, alpha=-lr)
        elif self.sparse:
            rows, inverse = self.unique_rows(ids)
            grad = row_grads.new_zeros(len(rows), self.width).index_add_(0, inverse, row_grads)
            planes = self.planes.index_select(1, rows)
            adam_([planes[0], self.flat], [grad, self.flat_grad], [planes[1], self.flat_moments[0]],
                  [planes[2], self.flat_moments[1]], self.step, lr, self.betas, self.eps)
            self.planes.index_copy_(1, rows, planes)
        else:
            grad = self.table_grad.zero_().index_add_(0, ids, row_grads)
            adam_([self.table, self.flat], [grad, self.flat_grad], [self.planes[1], self.flat_moments[0]],
                  [self.planes[2], self.flat_moments[1]], self.step, lr, self.betas, self.eps, l2)


class AutogradStep:
    """A step through autograd: `trained` (the model, or its DistributedDataParallel wrapper) and a torch
    optimizer; bfloat16 autocast of the forward pass with `amp`."""

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


def uses_sparse_updates(args, device, say=print):
    """Whether the embeddings get sparse (lazy) updates: asked for (by default on the CPU), and the optimizer and
    weight decay allow it."""
    wanted = device.type != "cuda" if args.sparse is None else args.sparse
    if wanted and (args.l2 > 0 or args.optim not in SPARSE_OPTIMIZERS):
        if args.sparse:
            say(f"note: dense embedding updates, as --optim {args.optim} with --l2 {args.l2} needs them")
        return False
    return wanted


def make_step(model, args, sparse, ctx):
    """The training step for `model` on every rank of `ctx`: FusedStep for Adam and SGD, autograd with a torch
    optimizer for the others and for --amp."""
    if args.optim in FUSED_OPTIMIZERS and not args.amp:
        return FusedStep(model, args.optim, args.lr, (args.beta1, args.beta2), l2=args.l2, sparse=sparse, ctx=ctx,
                         batch_size=args.batch_size)
    trained = distributed.data_parallel(model, ctx, args.batch_size)
    betas = {"betas": (args.beta1, args.beta2)} if args.optim == "adam" else {}
    if sparse:
        optimizer = SPARSE_OPTIMIZERS[args.optim](model.parameters(), lr=args.lr, **betas)
    else:
        optimizer = OPTIMIZERS[args.optim](model.parameters(), lr=args.lr, weight_decay=args.l2, **betas)
    return AutogradStep(trained, optimizer, args.amp, ctx.world_size)
