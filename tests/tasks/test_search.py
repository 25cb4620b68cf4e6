"""The search task: bi-level steps (weights on training batches, architecture on validation batches), an
exact resume from a checkpoint, the test split never read, and the architecture file that a retrain
takes (its contents in the run id, its copy in the retrain's folder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch

from recsys.config import ConfigError, build_model, compose_train_config
from recsys.data import SearchDataModule
from recsys.runinfo import run_id
from recsys.search import ArchitectureError, file_digest
from recsys.tasks.ctr import CTRTask
from recsys.tasks.search import SearchTask

TINY = {
    "optinter": ["model=optinter", "model.hidden_units=[16]", "model.dropout=0.0", "model.embedding_dim=4",
                 "model.pair_dim=3", "model.cross_buckets=300", "model.temperature_decay=0.05"],
    "dnis": ["model=dnis", "+model.base_params={embedding_dim: 4, hidden_units: [16], dropout: 0.0}", "model.l1=0.01"],
}
# OptInter with a minimum count on memorised values: its cross table is sized at setup, from training counts.
TINY["optinter_counted"] = [*TINY["optinter"], "model.cross_min_count=2"]
# DNIS warms up one epoch with plain SGD on its gates, as its official code does.
TASK = {"optinter": {}, "optinter_counted": {}, "dnis": {"warmup_epochs": 1, "architecture_optimizer": "sgd",
                                                         "architecture_learning_rate": 0.05}}


def _search(name: str, datamodule, seed: int = 0) -> SearchTask:  # noqa: ANN001
    torch.manual_seed(seed)
    cfg = compose_train_config(TINY[name])
    return SearchTask(build_model(cfg.model, datamodule.schema), **TASK[name])


def _trainer(tmp_path: Path, epochs: int) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, limit_train_batches=3, limit_val_batches=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, default_root_dir=tmp_path)


@pytest.fixture()
def search_data(small_synthetic) -> SearchDataModule:  # noqa: ANN001
    _, datamodule = small_synthetic
    module = SearchDataModule(datamodule.prepared, batch_size=256, eval_batch_size=1024, seed=3)
    module.setup()
    return module


@pytest.mark.parametrize("name", ["optinter", "optinter_counted", "dnis"])
def test_a_search_resumed_from_its_checkpoint_ends_where_an_uninterrupted_one_does(name: str, search_data, tmp_path) -> None:
    kind = name.split("_")[0]
    uninterrupted = _search(name, search_data)
    _trainer(tmp_path, 3).fit(uninterrupted, datamodule=search_data)

    first = _search(name, search_data)
    trainer = _trainer(tmp_path, 2)
    trainer.fit(first, datamodule=search_data)
    path = tmp_path / "search.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    # The search state is in the checkpoint: the architecture parameters, the step and block buffers, and
    # both optimisers (the weights' and the architecture's).
    keys = set(saved["state_dict"])
    assert {"model.arch_logits", "model.search_steps"} <= keys if kind == "optinter" else \
        {"model.base.embedding.dim_gates.default__4", "model.base.embedding.default__4__row_block", "model.blocks_assigned"} <= keys
    weights_state, arch_state = saved["optimizer_states"]
    assert weights_state["state"]  # Adam's moments
    # OptInter's architecture Adam has moments too; DNIS's plain SGD keeps only its settings.
    assert bool(arch_state["state"]) == (kind == "optinter") and arch_state["param_groups"][0]["lr"] == (0.05 if name == "dnis" else 1e-3)

    resumed = _search(name, search_data, seed=1)  # other initial weights: all must come from the checkpoint
    _trainer(tmp_path, 3).fit(resumed, datamodule=search_data, ckpt_path=path)
    a, b = uninterrupted.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    if name == "optinter_counted":  # the counted table: sized by the data, then stepped like any other
        rows = resumed.model.embedding.weights["cross__3"].shape[0]
        assert "model.embedding.cross__3__cross_index" in keys and 10 < rows < resumed.model.embedding.cross__3__cross_index.numel()
        # The weights' optimiser steps the table made at setup, not the placeholder it replaced.
        assert any(v["exp_avg"].shape[:1] == (rows,) for v in weights_state["state"].values())
    if kind == "optinter":
        assert int(resumed.model.search_steps) == 9  # 3 epochs of 3 search steps
    else:
        gates = resumed.model.gates().detach()
        assert 0.0 <= float(gates.min()) and float(gates.max()) <= 1.0
        assert not torch.equal(gates, torch.ones_like(gates))


def test_weights_step_on_training_batches_and_the_architecture_on_validation_batches(search_data, tmp_path) -> None:
    task = _search("optinter", search_data)
    seen: list[torch.Tensor] = []
    forward = task.model.forward

    def recording(batch):  # noqa: ANN001, ANN202
        seen.append(batch.sparse.clone())
        return forward(batch)

    task.model.forward = recording
    before = task.model.arch_logits.detach().clone()
    grads = []
    task.model.before_architecture_step = lambda: grads.append(task.model.arch_logits.grad.clone())
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=search_data)
    rows = {split: {tuple(r) for r in search_data.load(split).sparse.tolist()} for split in ("train", "valid")}
    assert len(seen) == 4  # per step: the weights' forward, then the architecture's
    for i, batch in enumerate(seen):
        split = "train" if i % 2 == 0 else "valid"
        assert {tuple(r) for r in batch.tolist()} <= rows[split], f"forward {i} did not read the {split} split"
    assert len(grads) == 2 and not torch.equal(task.model.arch_logits.detach(), before)
    assert int(task.model.search_steps) == 2


def test_a_search_never_reads_the_test_split(tmp_path, caplog) -> None:
    import logging

    from recsys.commands.train import train
    from recsys.config import prepare_configured

    overrides = [*TINY["optinter"], "task=search", "data=synthetic", "data.synthetic.n_train=1500", "data.synthetic.n_valid=500",
                 "data.synthetic.n_test=500", "data.batch_size=256", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
                 f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'search'}"]
    cfg = compose_train_config(overrides)
    prepared = prepare_configured(cfg)
    # The prepared test split is gone: any read of it fails.
    prepared.split_path("test").rename(tmp_path / "elsewhere.parquet")
    with caplog.at_level(logging.INFO, logger="recsys.commands.train"):
        metrics = train(cfg, tmp_path / "search")
    assert metrics["task"] == "search" and metrics["selected_on"] == "valid" and "test" not in metrics
    # The closing line says why there is no test metric and how to retrain, instead of "test auc nan".
    closing = [r.getMessage() for r in caplog.records if r.name == "recsys.commands.train" and " on synthetic" in r.getMessage()]
    assert len(closing) == 1 and "nan" not in closing[0], closing
    assert f"model.architecture={tmp_path / 'search' / 'architecture.json'}" in closing[0]
    assert set(metrics["val"]) == {"auc", "gauc", "logloss"}
    written = json.loads((tmp_path / "search" / "metrics.json").read_text())
    assert "test" not in written and written["architecture"]["file"] == "architecture.json"
    architecture = json.loads((tmp_path / "search" / "architecture.json").read_text())
    assert architecture["kind"] == "optinter" and len(architecture["pairs"]) == 10
    assert written["architecture"]["summary"]["counts"] == architecture["counts"]
    with pytest.raises(RuntimeError, match="never reads the test split"):
        SearchDataModule(prepared).load("test")
    # Reports leave a search run out: it is not a result.
    from recsys.commands.report import collect

    found = collect(tmp_path / "search")
    assert found.runs == [] and any("search run" in w for w in found.warnings)


def test_the_retrain_takes_the_file_by_its_contents_and_keeps_a_copy(tmp_path) -> None:
    from recsys.commands.train import train
    from recsys.serving.runs import load_run

    common = ["data=synthetic", "data.synthetic.n_train=1500", "data.synthetic.n_valid=500", "data.synthetic.n_test=500",
              "data.batch_size=256", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
              f"paths.cache_dir={tmp_path / 'cache'}"]
    search = tmp_path / "search"
    train(compose_train_config([*TINY["optinter"], "task=search", *common, f"paths.output_dir={search}"]), search)
    chosen = search / "architecture.json"
    retrain = [*TINY["optinter"], *common, f"model.architecture={chosen}"]
    cfg = compose_train_config([*retrain, f"paths.output_dir={tmp_path / 'retrain'}"])
    metrics = train(cfg, tmp_path / "retrain")
    assert metrics["architecture"]["sha256"] == file_digest(chosen) and "test" in metrics
    assert (tmp_path / "retrain" / "architecture.json").read_bytes() == chosen.read_bytes()
    pairs = json.loads(chosen.read_text())["pairs"]
    assert metrics["architecture"]["summary"]["counts"]["memorise"] == sum(m == "memorise" for m in pairs.values())

    # The run id follows the file's contents, not its path.
    moved = tmp_path / "elsewhere.json"
    shutil.copyfile(chosen, moved)
    resolved = lambda path: run_id(__import__("omegaconf").OmegaConf.to_container(  # noqa: E731
        compose_train_config([*TINY["optinter"], *common, f"model.architecture={path}"]), resolve=True))
    assert resolved(moved) == resolved(chosen) == metrics["run_id"]
    edited = json.loads(moved.read_text())
    edited["pairs"]["user*item"] = "naive" if edited["pairs"]["user*item"] != "naive" else "memorise"
    moved.write_text(json.dumps(edited))
    assert resolved(moved) != resolved(chosen)

    # The retrained run needs nothing of the search: its model is rebuilt from its own copy.
    shutil.rmtree(search)
    run = load_run(tmp_path / "retrain")
    assert run.scorer.model.methods == pairs


def test_a_search_space_is_only_searched_and_a_retrained_model_never_is(small_synthetic, tmp_path) -> None:
    from recsys.commands.train import train

    overrides, datamodule = small_synthetic
    cfg = compose_train_config([*TINY["optinter"], *overrides, f"paths.cache_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="was built as its search space .* search it with task=search"):
        train(cfg, tmp_path / "run")
    retrained = build_model(compose_train_config([*TINY["optinter"], "model.architecture=memorise"]).model, datamodule.schema)
    with pytest.raises(ValueError, match="needs a searchable model built as its search space"):
        SearchTask(retrained)
    with pytest.raises(ValueError, match="which has no search space"):
        SearchTask(build_model(compose_train_config(["model=fm"]).model, datamodule.schema))
    with pytest.raises(ArchitectureError, match="only its search space"):
        retrained.derive_architecture()
    assert isinstance(CTRTask(retrained), CTRTask)


def test_warm_up_epochs_are_never_the_selected_search_state(tmp_path) -> None:
    """DNIS warms up one epoch with its gates at 1, then a search that wrecks the gates (a huge L1 and
    step size close every gate at once): the warm-up scores better, but only search epochs are candidates,
    so the selected state and the architecture are the search's, not the untouched warm start."""
    from recsys.commands.train import train

    out = tmp_path / "search"
    cfg = compose_train_config([*TINY["dnis"], "model.l1=100.0", "task=search", "task.warmup_epochs=1",
                                "task.architecture_optimizer=sgd", "task.architecture_learning_rate=10.0",
                                "data=synthetic", "data.synthetic.n_train=4000", "data.synthetic.n_valid=500",
                                "data.synthetic.n_test=500", "data.batch_size=256", "trainer.max_epochs=2",
                                "trainer.enable_progress_bar=false", f"paths.cache_dir={tmp_path / 'cache'}",
                                f"paths.output_dir={out}"])
    metrics = train(cfg, out)
    warm, searched = metrics["history"]
    assert (warm["searching"], searched["searching"]) == (0.0, 1.0)
    # The wrecked search is worse (.598 against .550 when written; with 1,500 rows the two had come within
    # .0003 of each other, and the order flipped on a fresh install), and it is still the one selected.
    assert warm["auc"] > searched["auc"] + 0.01
    assert metrics["best_epoch"] == 1 and metrics["val"]["auc"] == pytest.approx(searched["auc"], abs=1e-6)
    architecture = json.loads((out / "architecture.json").read_text())
    assert min(min(row) for row in architecture["gates"]) == 0.0  # the warm start's gates were all 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt"]


def test_early_stopping_cannot_end_a_search_inside_its_warm_up(tmp_path) -> None:
    """Early stopping set to stop at the first epoch that is not better by a whole AUC point (so at the
    second): inside a 2-epoch warm-up that would end the run before any search step and write the
    untouched initial architecture. The run must go on to search, and early stopping must judge the search
    epochs afresh (a stop asked for in the warm-up does not carry over)."""
    from recsys.commands.train import train

    out = tmp_path / "search"
    cfg = compose_train_config([*TINY["optinter"], "task=search", "task.warmup_epochs=2", "trainer.max_epochs=4",
                                "callbacks.early_stopping.patience=0", "callbacks.early_stopping.min_delta=1.0",
                                "data=synthetic", "data.synthetic.n_train=1500", "data.synthetic.n_valid=500",
                                "data.synthetic.n_test=500", "data.batch_size=256", "trainer.enable_progress_bar=false",
                                f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={out}"])
    metrics = train(cfg, out)
    # Early stopping starts afresh with the search: the first search epoch improves on nothing, the second
    # is not better by a whole point, and the run stops there.
    assert [h["searching"] for h in metrics["history"]] == [0.0, 0.0, 1.0, 1.0]
    architecture = json.loads((out / "architecture.json").read_text())
    assert architecture["search_steps"] == 12  # 1500 rows / 256 = 6 batches in each of the two search epochs


def test_a_warm_up_that_fills_every_epoch_is_refused(tmp_path) -> None:
    from recsys.commands.train import train

    out = tmp_path / "search"
    cfg = compose_train_config([*TINY["dnis"], "task=search", "task.warmup_epochs=2", "trainer.max_epochs=2",
                                "data=synthetic", "data.synthetic.n_train=600", "data.synthetic.n_valid=200",
                                "data.synthetic.n_test=200", "data.batch_size=256", "trainer.enable_progress_bar=false",
                                f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={out}"])
    with pytest.raises(ValueError, match=r"warmup_epochs=2 leaves no search epoch in trainer.max_epochs=2"):
        train(cfg, out)
    assert not (out / "architecture.json").exists()


def test_a_minimum_count_is_counted_on_the_training_split_and_exported_with_the_run(tmp_path) -> None:
    import polars as pl

    from recsys.commands.train import train
    from recsys.config import prepare_configured
    from recsys.serving.export import SCORE_ATOL, export_run
    from recsys.serving.runs import load_run

    common = [*TINY["optinter"], "model.architecture=memorise", "model.cross_min_count=3", "model.cross_buckets=100000",
              "data=synthetic",
              "data.synthetic.n_train=1500", "data.synthetic.n_valid=1200", "data.synthetic.n_test=500",
              "data.batch_size=256", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
              f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'run'}"]
    cfg = compose_train_config(common)
    train(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    embedding = run.scorer.model.embedding
    assert embedding.crosses_counted  # from the checkpoint's state
    (group,) = embedding.groups["cross"]
    index = embedding._get(group, "cross_index")
    # The values that reach 3, counted here from the prepared training split alone, pair by exact pair:
    # exactly those have rows of their own (distinct), every other value the pair's one rare row.
    prepared = prepare_configured(cfg)
    sizes = {f.name: f.vocab_size for f in prepared.schema().sparse}
    exact = dict(zip(group.cross_pairs, embedding._get(group, "cross_exact").tolist()))
    frames = {split: pl.read_parquet(prepared.split_path(split)) for split in ("train", "valid")}
    checked = differs = 0
    for name, (start, size) in zip(group.cross_pairs, embedding._value_ranges(group)):
        if not exact[name]:
            continue
        a, b = name.split("*")

        def reaching(frame: pl.DataFrame) -> set[int]:
            counts = frame.group_by(a, b).len().filter(pl.col("len") >= 3)
            return set((counts[a] * sizes[b] + counts[b]).to_list())

        first, rows = embedding.table_rows[group.key][name]
        block = index[start:start + size].long() - first
        own = set(torch.nonzero(block != rows - 1).flatten().tolist())
        assert own == reaching(frames["train"]), name
        assert sorted(block[sorted(own)].tolist()) == list(range(rows - 1)), name  # one row each, none shared
        checked += 1
        # Counting validation rows too would have given other values rows.
        differs += own != reaching(pl.concat([frames["train"], frames["valid"]]))
    assert checked >= 3 and differs >= 1
    # The retrained model stores the kept rows only: its table is far smaller than one row per value.
    assert embedding.weights[group.key].shape[0] == sum(r for _, r in embedding.table_rows[group.key].values()) < index.numel() / 2
    assert run.metrics["num_parameters"] == sum(p.numel() for p in run.scorer.model.parameters())
    # The exported graph carries the same vocabulary: parity with torch on the validation rows.
    meta = export_run(tmp_path / "run", tmp_path / "export", cache_dir=tmp_path / "cache")
    assert meta["parity"]["max_abs_diff"] <= SCORE_ATOL
    # ... stored at 2 bytes per possible value (the table's few hundred rows fit int16), while the run's own
    # checkpoint keeps the int32 index it trained with.
    import onnx

    graph = onnx.load(str(tmp_path / "export" / "model.onnx")).graph
    stored = [t for t in graph.initializer if onnx.numpy_helper.to_array(t).shape == (index.numel(),)]
    assert index.dtype == torch.int32 and [t.data_type for t in stored] == [onnx.TensorProto.INT16]


def test_under_a_minimum_count_the_search_predicts_the_retrained_cross_table(tmp_path) -> None:
    from recsys.commands.train import train
    from recsys.serving.runs import load_run

    common = [*TINY["optinter_counted"], "model.cross_buckets=100000", "data=synthetic", "data.synthetic.n_train=1500",
              "data.synthetic.n_valid=500", "data.synthetic.n_test=500", "data.batch_size=256", "trainer.max_epochs=2",
              "trainer.enable_progress_bar=false", f"paths.cache_dir={tmp_path / 'cache'}"]
    search = tmp_path / "search"
    train(compose_train_config([*common, "task=search", f"paths.output_dir={search}"]), search)
    chosen = search / "architecture.json"
    architecture = json.loads(chosen.read_text())
    memorised = [n for n, m in architecture["pairs"].items() if m == "memorise"]
    assert memorised  # this seed's search memorises some pairs (else there is nothing to predict)
    retrain = tmp_path / "retrain"
    metrics = train(compose_train_config([*common, f"model.architecture={chosen}", f"paths.output_dir={retrain}"]), retrain)
    # The search space, counted on the same training split, said what those pairs cost once retrained; the
    # retrained model stores exactly that: a row per counted value of each memorised pair, and its rare row.
    model = load_run(retrain).scorer.model
    rows = model.embedding.weights["cross__3"].shape[0]
    assert rows == architecture["retrained_pair_parameters"]["cross_rows"] > len(memorised)
    assert sum(n for _, n in model.embedding.table_rows["cross__3"].values()) == rows
    assert metrics["num_parameters"] == sum(p.numel() for p in model.parameters())
