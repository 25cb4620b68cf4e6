"""OptInter and DNIS as retrained from an architecture file: the file's choices are the model's, naive
pairs and pruned dimensions really cost nothing, DNIS pruning meets its budget exactly, and its
frequency blocks follow the training counts. (Their search is tested in tests/tasks/test_search.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recsys.config import ConfigError, build_model, compose_train_config
from recsys.search import write_architecture

FIELDS = ["user", "item", "context", "device", "category"]  # the sparse fields of the synthetic set


def _optinter(datamodule, architecture, **params) -> torch.nn.Module:  # noqa: ANN001, ANN003
    cfg = compose_train_config(["model=optinter", "model.hidden_units=[16]", "model.dropout=0.0",
                                "model.embedding_dim=4", "model.pair_dim=3", "model.cross_buckets=500"])
    cfg.model.architecture = architecture
    for key, value in params.items():
        cfg.model[key] = value
    return build_model(cfg.model, datamodule.schema).eval()


def _pairs(default: str, **chosen: str) -> dict[str, str]:
    pairs = {f"{a}*{b}": default for i, a in enumerate(FIELDS) for b in FIELDS[i + 1:]}
    return {**pairs, **{k.replace("__", "*"): v for k, v in chosen.items()}}


def _file(tmp_path: Path, pairs: dict[str, str]) -> str:
    path = tmp_path / "architecture.json"
    path.write_text(json.dumps({"kind": "optinter", "pairs": pairs}, indent=1))
    return str(path)


def _with_ids_copied(model: torch.nn.Module, schema, field: str, source: int, target: int, batch):  # noqa: ANN001, ANN202
    """Two copies of `batch`, with `field` set to id `source` in one and `target` in the other, after copying
    `source`'s rows onto `target`'s in the field embeddings and the factor set: the two then differ only
    through cross rows, that is through memorised pairs."""
    emb = model.embedding
    with torch.no_grad():
        for table_set in ("default", "factor"):
            for group in emb.groups.get(table_set, []):
                if field in emb.table_rows[group.key]:
                    offset = emb.table_rows[group.key][field][0]
                    emb.weights[group.key][offset + target] = emb.weights[group.key][offset + source]
    col = [f.name for f in schema.sparse].index(field)
    out = []
    for value in (source, target):
        copy = batch.take(slice(None))
        copy.sparse = batch.sparse.clone()
        copy.sparse[:, col] = value
        out.append(copy)
    return out


@pytest.fixture()
def batch(small_synthetic):  # noqa: ANN001, ANN201
    return next(iter(small_synthetic[1].train_dataloader()))


def test_a_hand_written_architecture_gives_the_model_its_choices(small_synthetic, batch, tmp_path) -> None:
    _, datamodule = small_synthetic
    # Every pair with `device` is naive or factorised, except in the control, where device*user is memorised.
    pairs = _pairs("factorise", user__item="memorise", item__context="memorise", user__device="naive",
                   item__device="naive", context__device="naive", device__category="factorise")
    model = _optinter(datamodule, _file(tmp_path, pairs))
    assert model.methods == pairs
    assert model.memorised == ["user*item", "item*context"]
    assert model.factorised == [p for p in model.pair_names if pairs[p] == "factorise"]
    # Naive pairs cost nothing: no cross rows, no MLP inputs.
    assert list(model.embedding.table_rows["cross__3"]) == ["user*item", "item*context"]
    pair_outputs = 2 + sum(m == "factorise" for m in pairs.values())
    fields_width = 7 * 4  # user, item, context, device, category, price, hist_item at 4 dims
    assert model.dnn[0].in_features == fields_width + pair_outputs * 3
    # A naive pair contributes nothing: `device` ids that share their field and factor rows give the same
    # score, though their cross values with user differ ...
    same_a, same_b = _with_ids_copied(model, datamodule.schema, "device", 2, 3, batch)
    with torch.no_grad():
        assert torch.equal(model(same_a), model(same_b))
    # ... while a memorised device*user makes the same change show through its cross rows.
    control = _optinter(datamodule, _file(tmp_path, {**pairs, "user*device": "memorise"}))
    diff_a, diff_b = _with_ids_copied(control, datamodule.schema, "device", 2, 3, batch)
    with torch.no_grad():
        assert not torch.allclose(control(diff_a), control(diff_b))


def test_the_keyword_variants_and_the_pair_parameters_a_search_predicts(small_synthetic, tmp_path) -> None:
    _, datamodule = small_synthetic
    memorise = _optinter(datamodule, "memorise")
    factorise = _optinter(datamodule, "factorise")
    naive = _optinter(datamodule, "naive")
    assert memorise.factorised == [] and "factor" not in memorise.embedding.groups
    assert factorise.memorised == [] and "cross" not in factorise.embedding.groups
    fields_width = 7 * 4  # the synthetic set's 7 feature fields at 4 dims
    assert naive.dnn[0].in_features == fields_width and set(naive.embedding.groups) == {"default"}
    # The retrained size a search writes into its file is what the retrained model allocates.
    space = _optinter(datamodule, None)
    pairs = _pairs("naive", user__item="memorise", context__device="factorise", item__category="factorise")
    predicted = space.pair_parameters(pairs)
    retrained = _optinter(datamodule, _file(tmp_path, pairs))
    cross = retrained.embedding.weights["cross__3"].numel()
    factor = retrained.embedding.weights["factor__3"].numel()
    assert (cross, factor) == (predicted["cross"], predicted["factor"])
    assert retrained.dnn[0].in_features - fields_width == predicted["pair_inputs"] == 3 * 3
    field_params = retrained.embedding.stored_entries("default")  # field rows and the dense field's vector
    mlp = sum(p.numel() for p in retrained.dnn.parameters())
    assert sum(p.numel() for p in retrained.parameters()) == field_params + cross + factor + mlp


def test_a_search_that_withholds_memorise_from_hashed_pairs_never_chooses_it(small_synthetic, batch) -> None:
    """With memorise_hashed=False, a pair with more combinations than cross_buckets (500 here) has weight 0
    on memorise and no gradient into its logit, and the derived architecture never memorises it, even when
    every memorise logit is far the largest; pairs that fit exactly still may."""
    _, datamodule = small_synthetic
    sizes = {f.name: int(f.vocab_size) for f in datamodule.schema.sparse}
    space = _optinter(datamodule, None, memorise_hashed=False).train()
    hashed = {n for n in space.pair_names if sizes[n.split("*")[0]] * sizes[n.split("*")[1]] > 500}
    assert hashed and len(hashed) < len(space.pair_names)  # the synthetic set has both kinds
    with torch.no_grad():
        space.arch_logits[:, 0] = 10.0
    space(batch).sum().backward()
    rows = torch.tensor([n in hashed for n in space.pair_names])
    assert (space.method_weights()[rows, 0] == 0).all() and (space.arch_logits.grad[rows, 0] == 0).all()
    arch = space.derive_architecture()
    assert set(arch["memorise_withheld"]) == hashed
    assert {n for n, m in arch["pairs"].items() if m == "memorise"} == set(space.pair_names) - hashed
    # The default offers memorise to every pair.
    assert _optinter(datamodule, None).derive_architecture()["memorise_withheld"] == []


def test_architecture_files_that_do_not_fit_are_refused_with_the_reason(small_synthetic, tmp_path) -> None:
    _, datamodule = small_synthetic
    pairs = _pairs("naive")
    with pytest.raises(ConfigError, match="no method for the pairs \\['user\\*item'\\]"):
        _optinter(datamodule, _file(tmp_path, {k: v for k, v in pairs.items() if k != "user*item"}))
    with pytest.raises(ConfigError, match="pair 'user\\*item' has method 'memorize'"):
        _optinter(datamodule, _file(tmp_path, {**pairs, "user*item": "memorize"}))
    with pytest.raises(ConfigError, match="pair 'user\\*price' is not a pair"):
        _optinter(datamodule, _file(tmp_path, {**pairs, "user*price": "naive"}))
    # A pair may be named in either order.
    assert _optinter(datamodule, _file(tmp_path, {**{k: v for k, v in pairs.items() if k != "user*item"},
                                                  "item*user": "memorise"})).memorised == ["user*item"]
    wrong = tmp_path / "dnis.json"
    wrong.write_text(json.dumps({"kind": "dnis"}))
    with pytest.raises(ConfigError, match=f"architecture file {wrong} is of kind 'dnis'"):
        _optinter(datamodule, str(wrong))
    with pytest.raises(ConfigError, match="does not exist"):
        _optinter(datamodule, str(tmp_path / "missing.json"))


# ------------------------------------------------------------------------------------------------ DNIS
def _dnis(datamodule, **params):  # noqa: ANN001, ANN003, ANN202
    cfg = compose_train_config(["model=dnis", "+model.base_params={embedding_dim: 6, hidden_units: [8], dropout: 0.0}"])
    for key, value in params.items():
        cfg.model[key] = value
    return build_model(cfg.model, datamodule.schema)


def test_frequency_blocks_rank_every_feature_by_its_training_count(small_synthetic) -> None:
    _, datamodule = small_synthetic
    counts = datamodule.row_counts()
    space = _dnis(datamodule)
    space.set_row_counts(counts)
    row_block = space.row_blocks()
    tables = space.embedding.table_rows[space.group_key]
    features = [(int(counts[t][i]), int(row_block[offset + i])) for t, (offset, size) in tables.items() for i in range(2, size)]
    # Over all tables together: a more frequent feature is never in a later block ...
    features.sort(key=lambda f: -f[0])
    blocks = [b for _, b in features]
    assert blocks == sorted(blocks)
    # ... and each block holds its fraction of the features (the official CF split 0.1/0.2/0.2/0.2/0.3).
    sizes = torch.bincount(torch.tensor(blocks), minlength=5).tolist()
    bounds = [round(x * len(features)) for x in (0.1, 0.3, 0.5, 0.7, 1.0)]
    assert sizes == [b - a for a, b in zip([0, *bounds[:-1]], bounds)]
    for t, (offset, _) in tables.items():  # padding and out-of-vocabulary join their table's first block
        assert row_block[offset] == row_block[offset + 1] == row_block[offset + 2]


@pytest.mark.parametrize("budget", [1, 257, 1234, None])
def test_pruning_keeps_exactly_the_budget_and_the_retrained_model_stores_it(small_synthetic, budget, tmp_path) -> None:
    _, datamodule = small_synthetic
    space = _dnis(datamodule, budget=budget, keep_fraction=0.37)
    space.set_row_counts(datamodule.row_counts())
    with torch.no_grad():  # gates away from 1, so the criterion is |gate x embedding|
        space.gates().uniform_(0.0, 1.0)
    arch = space.derive_architecture()
    expected = budget if budget is not None else round(0.37 * space.dense_entries())
    assert arch["budget"] == arch["kept_entries"] == expected
    kept = sum((r["rows"][1] - r["rows"][0]) * len(r["dims"]) for ranges in arch["tables"].values() for r in ranges)
    assert kept == expected
    path = tmp_path / "architecture.json"
    write_architecture(path, arch)
    retrained = _dnis(datamodule, architecture=str(path), budget=budget, keep_fraction=0.37)
    embedding = retrained.embedding
    assert embedding.weights[retrained.group_key].numel() == expected
    # Everything else is the base model's own: the parameter count is the base's less the pruned entries.
    gates = space.gates()
    base = sum(p.numel() for p in space.parameters() if p is not gates)  # the base model's own parameters
    assert sum(p.numel() for p in retrained.parameters()) == base - (space.dense_entries() - expected)


def test_pruning_keeps_the_units_with_the_largest_gate_times_embedding(small_synthetic) -> None:
    _, datamodule = small_synthetic
    space = _dnis(datamodule)
    space.set_row_counts(datamodule.row_counts())
    with torch.no_grad():
        space.gates().fill_(1.0)
        space.gates()[:, 0] = 0.0  # dimension 0 off in every block: never kept
        space.gates()[:, 5] = 1e3  # dimension 5 dominant: kept everywhere
    arch = space.derive_architecture()
    dims = [r["dims"] for ranges in arch["tables"].values() for r in ranges]
    assert all(5 in d for d in dims) and not any(0 in d for d in dims)


def test_the_summary_names_a_table_that_lost_every_dimension(small_synthetic) -> None:
    """A table whose embeddings are all zero scores last; with a budget of everything else it keeps no
    dimension, and the per-table summary says so (the per-block view spreads it over the blocks)."""
    _, datamodule = small_synthetic
    space = _dnis(datamodule)
    space.set_row_counts(datamodule.row_counts())
    tables = space.embedding.table_rows[space.group_key]
    dropped, (offset, size) = next(iter(tables.items()))
    with torch.no_grad():
        space.embedding.weights[space.group_key][offset:offset + size] = 0.0
    space.budget = space.dense_entries() - size * space.width
    summary = space.derive_architecture()["mean_dims_per_table"]
    assert summary == {t: (0.0 if t == dropped else float(space.width)) for t in tables}


def test_the_search_hooks_normalise_clip_and_penalise_the_gates(small_synthetic) -> None:
    _, datamodule = small_synthetic
    space = _dnis(datamodule, l1=0.5)
    gates = space.gates()
    with torch.no_grad():
        gates.copy_(torch.linspace(0.1, 0.9, gates.numel()).view_as(gates))
    assert torch.allclose(space.architecture_penalty(), 0.5 * gates.detach().sum())
    grad = torch.randn_like(gates) * torch.tensor([1e-4, 1.0, 1e3, 5.0, 0.1])[:, None]
    gates.grad = grad.clone()
    space.before_architecture_step()
    # Each block's row over its mean absolute value: every row then has mean |g| = 1, whatever its scale.
    assert torch.allclose(gates.grad.abs().mean(dim=1), torch.ones(5), atol=1e-3)
    assert torch.allclose(gates.grad, grad / grad.abs().mean(dim=1, keepdim=True), rtol=1e-3)
    with torch.no_grad():
        gates.add_(torch.linspace(-2, 2, gates.numel()).view_as(gates))
    space.after_architecture_step()
    assert float(gates.detach().min()) == 0.0 and float(gates.detach().max()) == 1.0
    assert set(map(id, space.searched_weights())) == {id(p) for p in space.embedding.parameters() if p is not gates}


def test_a_dnis_architecture_of_another_base_or_width_is_refused(small_synthetic, tmp_path) -> None:
    _, datamodule = small_synthetic
    space = _dnis(datamodule)
    space.set_row_counts(datamodule.row_counts())
    path = tmp_path / "architecture.json"
    write_architecture(path, {**space.derive_architecture(), "embedding_dim": 8})
    with pytest.raises(ConfigError, match="searched with embedding_dim=8, but this model has embedding_dim=6"):
        _dnis(datamodule, architecture=str(path))


@pytest.mark.parametrize("base", ["fm", "finalmlp"])
def test_dnis_searches_and_retrains_other_zoo_models(small_synthetic, base, tmp_path) -> None:
    _, datamodule = small_synthetic
    cfg = compose_train_config(["model=dnis", f"model.base={base}", "+model.base_params={embedding_dim: 6}"])
    space = build_model(cfg.model, datamodule.schema)
    space.set_row_counts(datamodule.row_counts())
    batch = next(iter(datamodule.train_dataloader()))
    assert space(batch).shape == (len(batch),)
    path = tmp_path / "architecture.json"
    write_architecture(path, space.derive_architecture())
    cfg.model.architecture = str(path)
    retrained = build_model(cfg.model, datamodule.schema)
    assert retrained.embedding.weights[retrained.group_key].numel() == round(0.5 * space.dense_entries())
    out = retrained(batch)
    assert out.shape == (len(batch),) and torch.isfinite(out).all()
    out.sum().backward()
    assert retrained.embedding.weights[retrained.group_key].grad.abs().sum() > 0
