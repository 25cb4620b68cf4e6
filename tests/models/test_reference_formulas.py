"""Each model's distinctive computation against its formula, written out here term by term with the model's
own (copied) weights: FinalMLP's feature gates and bilinear fusion, DCNv2's cross layers (full rank and the
low-rank mixture of experts, stacked and parallel), AutoInt's multi-head attention with its residual,
SDIM's normalise-then-average over hash functions, and where DARE's gradients flow.

The shared embedding lookups, MLP blocks and DIN's attention unit have their own tests; here they are
taken from the model, and everything the model adds on top of them is recomputed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from recsys.batch import Batch
from recsys.config import build_model, compose_train_config


def _model(name: str, datamodule, *overrides: str, train: bool = False) -> torch.nn.Module:
    model = build_model(compose_train_config([f"model={name}", *overrides]).model, datamodule.schema)
    with torch.no_grad():  # embeddings of a trained size, so that the formulas see distinct, non-tiny vectors
        for layer in _embedding_layers(model):
            for key, weight in layer.weights.items():
                weight.normal_(0, 0.3)
                for first, _ in layer.table_rows.get(key, {}).values():
                    weight[first] = 0.0  # padding rows stay zero, as training keeps them
    return model.train(train)


def _embedding_layers(model: torch.nn.Module):
    from recsys.embedding import FeatureEmbedding

    return [layer for layer in model.modules() if isinstance(layer, FeatureEmbedding)]


def _batch(datamodule, n: int = 32) -> Batch:
    return datamodule.load("valid").take(slice(0, n))


def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """x W^T + b, from the layer's copied weights."""
    w = layer.weight.detach().clone()
    b = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(w.shape[0])
    return x @ w.T + b


# ---------------------------------------------------------------------------------------------- FinalMLP
def test_finalmlp_feature_gates_and_bilinear_fusion(small_synthetic) -> None:
    _, dm = small_synthetic
    model = _model("finalmlp", dm, "model.num_heads=2", "model.mlp1_hidden_units=[12]", "model.mlp2_hidden_units=[6]")
    batch = _batch(dm)
    with torch.no_grad():
        e = model.embedding.flat(batch)  # [B, F * D]
        gates = []
        for gate in (model.gate1, model.gate2):
            # Gate_i = 2 * sigmoid(W2 relu(W1 c_i + b1) + b2), c_i = the context fields' own embeddings.
            first, second = gate.gate[0][0], gate.gate[0][2]
            c = gate.context.flat(batch)
            gates.append(2.0 * torch.sigmoid(_linear(torch.relu(_linear(c, first)), second)))
        x = model.mlp1(e * gates[0])
        y = model.mlp2(e * gates[1])
        # y_hat = w_x^T x + b_x + w_y^T y + b_y + sum_h x_h^T W_h y_h, heads = equal chunks of x and y.
        heads = model.fusion.num_heads
        dx, dy = x.shape[1] // heads, y.shape[1] // heads
        w_xy = model.fusion.w_xy.detach().clone().view(heads, dx, dy)
        logit = _linear(x, model.fusion.w_x).squeeze(-1) + _linear(y, model.fusion.w_y).squeeze(-1)
        for h in range(heads):
            x_h, y_h = x[:, h * dx:(h + 1) * dx], y[:, h * dy:(h + 1) * dy]
            logit = logit + torch.einsum("bi,ij,bj->b", x_h, w_xy[h], y_h)
        got = model(batch)
    torch.testing.assert_close(got, logit, rtol=1e-5, atol=1e-5)
    assert gates[0].std() > 1e-3 and not torch.allclose(gates[0], gates[1])  # the gates do something, differently


def test_finalmlp_without_feature_selection_feeds_the_embeddings_to_both_streams(small_synthetic) -> None:
    _, dm = small_synthetic
    model = _model("finalmlp", dm, "model.use_fs=false")
    batch = _batch(dm)
    with torch.no_grad():
        e = model.embedding.flat(batch)
        torch.testing.assert_close(model(batch), model.fusion(model.mlp1(e), model.mlp2(e)))
    assert not hasattr(model, "gate1")


# ---------------------------------------------------------------------------------------------- DCNv2
def _cross_full_rank(cross, x0: torch.Tensor) -> torch.Tensor:
    """x_{l+1} = x0 * (W_l x_l + b_l) + x_l."""
    x = x0
    for layer in cross.layers:
        x = x0 * _linear(x, layer) + x
    return x


def _cross_mixture(cross, x0: torch.Tensor) -> torch.Tensor:
    """x_{l+1} = sum_i G_i(x_l) E_i(x_l) + x_l, with E_i(x_l) = x0 * (U_i tanh(C_i tanh(V_i^T x_l)) + b_l) and
    G = softmax over experts of a bias-free linear gate on x_l (DCN-V2, section 3.3)."""
    x = x0
    gate = cross.gate.weight.detach().clone()
    for u, v, c, b in zip(cross.u, cross.v, cross.c, cross.bias):
        u, v, c, b = (t.detach().clone() for t in (u, v, c, b))
        g = torch.softmax(x @ gate.T, dim=1)  # [B, experts]
        mixed = torch.zeros_like(x)
        for i in range(u.shape[0]):
            low = torch.tanh(x @ v[i])  # V_i^T x: [B, r]
            low = torch.tanh(low @ c[i].T)  # C_i (.): [B, r]
            expert = x0 * (low @ u[i].T + b)  # U_i (.) + b: [B, D]
            mixed = mixed + g[:, i:i + 1] * expert
        x = mixed + x
    return x


@pytest.mark.parametrize(("structure", "mixture"), [("parallel", False), ("stacked", False), ("parallel", True),
                                                    ("stacked", True), ("crossnet_only", False)])
def test_dcnv2_cross_layers_stacked_and_parallel(structure: str, mixture: bool, small_synthetic) -> None:
    _, dm = small_synthetic
    model = _model("dcnv2", dm, f"model.model_structure={structure}", f"model.use_low_rank_mixture={str(mixture).lower()}",
                   "model.num_cross_layers=3", "model.low_rank=4", "model.num_experts=3",
                   "model.stacked_dnn_hidden_units=[16,8]", "model.parallel_dnn_hidden_units=[16,8]")
    with torch.no_grad():  # non-zero biases, so the formula's "+ b" is exercised
        for name, p in model.named_parameters():
            if name.startswith("cross.") and p.dim() == 1:
                p.normal_(0, 0.1)
    batch = _batch(dm)
    with torch.no_grad():
        x0 = model.embedding.flat(batch)
        cross = (_cross_mixture if mixture else _cross_full_rank)(model.cross, x0)
        assert not torch.allclose(cross, x0)
        if structure == "stacked":  # the MLP on top of the cross network
            head_input = model.stacked_dnn(cross)
        elif structure == "parallel":  # the cross network beside an MLP on x0
            head_input = torch.cat([cross, model.parallel_dnn(x0)], dim=1)
        else:
            head_input = cross
        expected = _linear(head_input, model.fc).squeeze(-1)
        torch.testing.assert_close(model(batch), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- AutoInt
def _attention_layer(layer, x: torch.Tensor, layer_norm: torch.nn.Module | None) -> torch.Tensor:
    """ReLU(concat_h softmax(Q_h K_h^T * scale) V_h + W_res x), optionally layer-normalised before the ReLU;
    Q, K, V = x W_Q, x W_K, x W_V, each split into heads by columns."""
    w = layer.qkv.weight.detach().clone()
    w_q, w_k, w_v = w.chunk(3, dim=0)
    heads, head_dim = layer.num_heads, layer.head_dim
    q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T  # [B, F, A]
    outputs = []
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) * layer.scale  # [B, F, F]
        outputs.append(torch.softmax(scores, dim=-1) @ v[..., cols])
    out = torch.cat(outputs, dim=-1)
    if layer.residual is not None:
        residual = layer.residual
        out = out + (x if isinstance(residual, torch.nn.Identity) else x @ residual.weight.detach().clone().T)
    if layer_norm is not None:
        out = F.layer_norm(out, out.shape[-1:], layer_norm.weight.detach(), layer_norm.bias.detach(), layer_norm.eps)
    return torch.relu(out)


@pytest.mark.parametrize("options", [
    ("model.use_scale=false", "model.layer_norm=false"),  # the paper's unit
    ("model.use_scale=true", "model.layer_norm=true", "model.use_wide=true"),  # the zoo's config, plus the wide term
])
def test_autoint_attention_with_its_residual(options: tuple[str, ...], small_synthetic) -> None:
    _, dm = small_synthetic
    model = _model("autoint", dm, "model.attention_layers=2", "model.num_heads=2", "model.attention_dim=8",
                   "model.dnn_hidden_units=[]", *options)
    batch = _batch(dm)
    with torch.no_grad():
        x = model.embedding(batch)  # [B, F, D]
        for layer in model.attention:
            norm = layer.norm if isinstance(layer.norm, torch.nn.LayerNorm) else None
            x = _attention_layer(layer, x, norm)
        expected = _linear(x.flatten(1), model.fc).squeeze(-1)
        if model.use_wide:
            expected = expected + model.embedding(batch, "linear").sum(dim=(1, 2))
        torch.testing.assert_close(model(batch), expected, rtol=1e-5, atol=1e-5)
    # The first layer maps width 10 to 8, so its residual is a projection; the second's is the identity.
    assert isinstance(model.attention[0].residual, torch.nn.Linear) and isinstance(model.attention[1].residual, torch.nn.Identity)


# ---------------------------------------------------------------------------------------------- SDIM
def test_sdim_normalises_each_hash_functions_bucket_sum_then_averages(small_synthetic) -> None:
    _, dm = small_synthetic
    model = _model("sdim", dm, "model.num_hashes=6", "model.hash_bits=2", "model.short_length=4")
    batch = _batch(dm)
    m, tau = model.num_hashes, model.hash_bits
    projections = model.projections.clone()
    with torch.no_grad():
        view = model.behaviours(batch)
        b, length, _ = view.keys.shape

        def code(vector: torch.Tensor, i: int) -> int:
            # Hash i: bit t is 1 where the projection on column i * tau + t is positive; the code reads the bits
            # as a binary number, bit t worth 2^t.
            return sum(int(vector @ projections[:, i * tau + t] > 0) << t for t in range(tau))

        long = torch.zeros(b, view.values.shape[-1])
        averaged_first = torch.zeros_like(long)
        for row in range(b):
            sums = []
            for i in range(m):
                target = code(view.target[row], i)
                bucket = torch.zeros(view.values.shape[-1])
                for pos in range(length):
                    if view.mask[row, pos] and code(view.keys[row, pos], i) == target:
                        bucket += view.values[row, pos]
                sums.append(bucket)
            # Normalise each hash function's sum (an empty bucket stays zero) ...
            per_hash = [s / s.norm() if s.norm() > 0 else s for s in sums]
            long[row] = torch.stack(per_hash).mean(0)  # ... then average over the hash functions.
            averaged_first[row] = F.normalize(torch.stack(sums).mean(0), dim=0)  # (the other order, for contrast)
        k = model.short_length
        short = model.short_attention(view.target, view.keys[:, -k:], view.values[:, -k:], view.mask[:, -k:])
        expected = model.dnn(torch.cat([view.context, view.target, short, long], dim=1)).squeeze(-1)
        torch.testing.assert_close(model(batch), expected, rtol=1e-5, atol=1e-5)
        # Normalise-then-average differs from average-then-normalise here, so the test tells them apart.
        assert not torch.allclose(long, averaged_first, atol=1e-3)


# ---------------------------------------------------------------------------------------------- DARE
def _dare_by_hand(model, batch: Batch, detach_search: bool = False, detach_values: bool = False) -> torch.Tensor:
    """DARE's forward, written out: scores = <a_t, a_h> / sqrt(P * D_att) + <r_att(pos), q> / sqrt(R) over
    the attention embeddings (the representation ones when coupled), the top-k kept, softmax over them
    (padding zeroed); interest = sum_k w_k [v_k, r_rep(pos_k)] over the representation embeddings; the MLP
    reads [context, target, interest, target * interest]. `detach_search` cuts the gradient through the
    weights (the search), `detach_values` the one through the aggregated representation embeddings."""
    table = "default" if model.coupled else "attention"
    att = model.behaviours(batch, table)
    scores = (att.keys * att.target.unsqueeze(1)).sum(-1) / math.sqrt(att.target.shape[1])
    if model.recency_dim:
        scores = scores + model.recency_attention() @ model.recency_query / math.sqrt(model.recency_dim)
    scores = scores.masked_fill(att.mask == 0, -1e9)
    top, positions = scores.topk(min(model.top_k, scores.shape[1]), dim=1)
    weights = torch.softmax(top, dim=1) * att.mask.gather(1, positions)
    rep = model.behaviours(batch)  # the representation ("default") tables
    chosen = rep.values.gather(1, positions.unsqueeze(-1).expand(-1, -1, rep.values.shape[-1]))
    if model.recency_dim:
        chosen = torch.cat([chosen, model.recency(positions)], dim=-1)
    if detach_search:
        weights = weights.detach()
    if detach_values:
        chosen = chosen.detach()
    interest = (weights.unsqueeze(-1) * chosen).sum(1)
    cross = rep.target * interest[:, : rep.target.shape[1]]
    return model.dnn(torch.cat([rep.context, rep.target, interest, cross], dim=1)).squeeze(-1)


def _table_grads(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    tables = dict(model.behaviours.embedding.weights.items())
    grads = torch.autograd.grad(loss, list(tables.values()), allow_unused=True)
    return {k: torch.zeros_like(t) if g is None else g for (k, t), g in zip(tables.items(), grads)}


def test_dare_decoupled_attention_learns_through_the_search_and_representation_through_the_aggregation(small_synthetic) -> None:
    _, dm = small_synthetic
    model = _model("dare", dm, "model.attention_dim=8", "model.top_k=3")  # eval: no dropout, fixed weights
    with torch.no_grad():
        model.recency_query.normal_()  # a recency term of the same order as the content term
    batch = _batch(dm)
    torch.testing.assert_close(model(batch), _dare_by_hand(model, batch), rtol=1e-5, atol=1e-5)

    full = _table_grads(model, model(batch).sum())
    without_search = _table_grads(model, _dare_by_hand(model, batch, detach_search=True).sum())
    without_values = _table_grads(model, _dare_by_hand(model, batch, detach_values=True).sum())
    (att_key,) = [k for k in full if k.startswith("attention__")]
    rep_key = "default__16"
    # The attention table learns from the search alone: all of its gradient goes through the weights ...
    assert full[att_key].abs().sum() > 0
    torch.testing.assert_close(full[att_key], without_values[att_key])
    assert torch.count_nonzero(without_search[att_key]) == 0
    # ... and the representation table from the aggregation (and the MLP's direct inputs), never the search.
    torch.testing.assert_close(full[rep_key], without_search[rep_key])
    assert (full[rep_key] - without_values[rep_key]).abs().sum() > 0  # the aggregation does send it gradient


def test_dare_coupled_one_table_learns_through_both(small_synthetic) -> None:
    _, dm = small_synthetic
    model = _model("dare", dm, "model.coupled=true", "model.top_k=3")
    with torch.no_grad():
        model.recency_query.normal_()
    batch = _batch(dm)
    torch.testing.assert_close(model(batch), _dare_by_hand(model, batch), rtol=1e-5, atol=1e-5)
    assert list(model.behaviours.embedding.weights) == ["default__16", "default__16__dense"]  # one table set
    full = _table_grads(model, model(batch).sum())["default__16"]
    without_search = _table_grads(model, _dare_by_hand(model, batch, detach_search=True).sum())["default__16"]
    without_values = _table_grads(model, _dare_by_hand(model, batch, detach_values=True).sum())["default__16"]
    # The one table gets gradient through the search and through the aggregation, and they add up.
    assert (full - without_search).abs().sum() > 0 and (full - without_values).abs().sum() > 0
    direct = _table_grads(model, _dare_by_hand(model, batch, detach_search=True, detach_values=True).sum())["default__16"]
    torch.testing.assert_close(full - direct, (without_values - direct) + (without_search - direct), rtol=1e-4, atol=1e-6)
