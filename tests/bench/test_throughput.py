"""`recsys bench throughput`: DeepCTR-Torch's objective matched to BARS's, the contenders run in turns, the
first table is like for like, ratios are ours over the peer's, and bf16 meets only bf16."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch

from recsys.bench import throughput as bench


# ------------------------------------------------------------------------------------------ DeepCTR-Torch
def test_deepctr_deepfm_trains_on_bars_objective(small_synthetic) -> None:
    pytest.importorskip("deepctr_torch")
    _, dm = small_synthetic
    model = bench.deepctr_deepfm(dm.schema, seed=1)
    # The data loss is the batch mean, whatever reduction DeepCTR-Torch's fit asks for (it asks for 'sum').
    y_pred, y_true = torch.rand(64).clamp(0.01, 0.99), torch.randint(0, 2, (64,)).float()
    expected = -(y_true * y_pred.log() + (1 - y_true) * (1 - y_pred).log()).mean()
    torch.testing.assert_close(model.loss_func(y_pred, y_true, reduction="sum"), expected)
    # L2: lambda/2 = 0.025 times the sum of squares of every embedding and first-order table (BARS: 0.05 / 2),
    # nothing on the MLP.
    tables = [*model.embedding_dict.parameters(), *model.linear_model.parameters()]
    with torch.no_grad():
        for t in tables:
            t.normal_(0, 0.1)
    torch.testing.assert_close(model.get_regularization_loss().reshape(()), 0.025 * sum(t.pow(2).sum() for t in tables))
    # The MLP starts as BARS's does: Xavier-normal weights (std sqrt(2 / (fan_in + fan_out))), zero biases.
    for linear in [*model.dnn.linears, model.dnn_linear]:
        fan_out, fan_in = linear.weight.shape
        assert linear.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.1)
        assert linear.bias is None or torch.count_nonzero(linear.bias) == 0
    # Each optimiser step clips the gradient norm to 10 first.
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    model.optim.step()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert norm.item() == pytest.approx(10.0, rel=1e-3)  # unclipped, it would be 100 x sqrt(parameters) > 6e4


def test_a_peer_under_bf16_runs_its_forward_pass_in_autocast_and_its_optimiser_step_outside(small_synthetic) -> None:
    """Under bf16 a peer trains as Lightning's bf16-mixed trains ours: forward in autocast, loss, backward and
    optimiser step outside (wrapping DeepCTR-Torch's whole `fit` in autocast left it unable to learn), and
    evaluation in fp32."""
    pytest.importorskip("deepctr_torch")
    _, dm = small_synthetic
    model = bench.deepctr_deepfm(dm.schema, seed=1)
    bench.autocast_forward(model)
    seen: dict[str, list] = {"mlp_out": [], "step_in_autocast": []}
    model.dnn_linear.register_forward_hook(lambda mod, i, o: seen["mlp_out"].append((mod.training, o.dtype)))
    step = model.optim.step

    def recording_step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen["step_in_autocast"].append(torch.is_autocast_enabled("cpu"))
        return step(*args, **kwargs)

    model.optim.step = recording_step
    batch = next(iter(dm.train_dataloader()))
    inputs = {f.name: batch.sparse[:, i].numpy() for i, f in enumerate(dm.schema.sparse)}
    model.fit(inputs, batch.label.float().numpy(), batch_size=64, epochs=1, verbose=0)
    model.predict(inputs, batch_size=256)
    assert seen["step_in_autocast"] and not any(seen["step_in_autocast"])
    assert {dtype for training, dtype in seen["mlp_out"] if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen["mlp_out"] if not training} == {torch.float32}


# ------------------------------------------------------------------------------------------ the command
SPEEDS = {"ours": 3000.0, "deepctr": 1000.0, "fuxictr": 1500.0}  # samples/s in round 1, before the round's factor


def _fake_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Replace the contender processes by fakes that record their order and report known speeds: in round r
    every contender runs r times faster (a machine getting quieter), and bf16 doubles every speed."""
    order: list[str] = []
    rounds: dict[str, int] = {}

    def fake(argv: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
        if "--prepare-only" in argv:
            return {"prepared": "x"}
        library = "fuxictr" if str(bench.PEER_SCRIPT) in argv else ("ours" if "ours" in argv else "deepctr")
        model = argv[argv.index("--model") + 1].lower()
        precision = argv[argv.index("--precision") + 1]
        retained = (env or {}).get("GLIBC_TUNABLES") == "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
        key = f"{library}-{model}-{precision}" + ("-retain" if retained else "")
        order.append(key)
        rounds[key] = rounds.get(key, 0) + 1
        speed = SPEEDS[library] * rounds[key] * (2 if precision == "bf16" else 1) * (1.5 if model == "finalmlp" else 1)
        speed *= 1.25 if retained else 1
        return {"train_samples_per_second": speed, "time_to_best_seconds": 1e5 / speed, "test_auc": 0.98,
                "val_auc": 0.985, "test_logloss": 0.15, "epochs": 15, "best_epoch": 12}

    monkeypatch.setattr(bench, "_in_subprocess", fake)
    monkeypatch.setattr(bench, "_prepared_frappe", lambda: None)
    monkeypatch.setattr("recsys.bench.zoo.frappe_available", lambda: True)
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    return order


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    (tmp_path / "zoo").mkdir(exist_ok=True)
    return parser.parse_args(["throughput", "--out", str(tmp_path / "out"), "--peer", "deepctr", "--peer", "fuxictr",
                              "--peer-python", sys.executable, "--fuxictr-model-zoo", str(tmp_path / "zoo"), *extra])


def test_contenders_run_in_turns_and_ratios_are_ours_over_each_peer(monkeypatch, tmp_path, capsys) -> None:
    order = _fake_runs(monkeypatch, tmp_path)
    report = bench.run_throughput(_args(tmp_path, "--repeats", "3", "--finalmlp"))
    one_round = ["ours-deepfm-fp32", "deepctr-deepfm-fp32", "fuxictr-deepfm-fp32", "ours-finalmlp-fp32",
                 "fuxictr-finalmlp-fp32"]
    assert order == one_round * 3  # in turns: every contender once per round, never a contender's rounds back to back
    by_pair = {(c["ours"], c["peer"]): c for c in report["comparisons"]}
    # Ours over the peer, per round, then the median: 3000 r / 1000 r = 3 in every round.
    assert by_pair[("ours-deepfm-fp32", "deepctr-deepfm-fp32")]["speedup"] == {"median": 3.0, "min": 3.0, "max": 3.0}
    assert by_pair[("ours-deepfm-fp32", "fuxictr-deepfm-fp32")]["speedup"]["median"] == pytest.approx(2.0)
    assert by_pair[("ours-deepfm-fp32", "fuxictr-deepfm-fp32")]["time_to_best_speedup"]["median"] == pytest.approx(2.0)
    ours = report["contenders"]["ours-deepfm-fp32"]["train_samples_per_second"]
    assert ours == {"median": statistics.median([3000.0, 6000.0, 9000.0]), "min": 3000.0, "max": 9000.0}
    text = capsys.readouterr().out
    # The first table is like for like: DeepFM against DeepFM, fp32 only, with the ratios over each peer.
    first = text.split("### ")[1]
    assert first.startswith("Like for like: DeepFM against DeepFM, all fp32")
    assert "FinalMLP" not in first and "bf16" not in first
    assert "| DeepCTR-Torch DeepFM | 2,000 (1,000–3,000) | 3.00 (3.00–3.00)x |" in first
    finalmlp = text.split("### ")[2]
    assert "NOT like for like" in finalmlp and "| FuxiCTR FinalMLP |" in finalmlp


def test_peers_with_our_allocator_setting_run_in_turns_in_a_table_of_their_own(monkeypatch, tmp_path, capsys) -> None:
    order = _fake_runs(monkeypatch, tmp_path)
    report = bench.run_throughput(_args(tmp_path, "--repeats", "2", "--peers-retain-freed-memory"))
    # Only the retained peers get glibc's tunables (the fake keys a run by what its environment held).
    assert order == ["ours-deepfm-fp32", "deepctr-deepfm-fp32", "fuxictr-deepfm-fp32", "deepctr-deepfm-fp32-retain",
                     "fuxictr-deepfm-fp32-retain"] * 2
    by_pair = {(c["ours"], c["peer"]): c for c in report["comparisons"]}
    assert by_pair[("ours-deepfm-fp32", "deepctr-deepfm-fp32-retain")]["speedup"]["median"] == pytest.approx(3 / 1.25)
    assert by_pair[("ours-deepfm-fp32", "deepctr-deepfm-fp32")]["speedup"]["median"] == pytest.approx(3.0)
    tables = capsys.readouterr().out.split("### ")
    assert "with glibc's default malloc" in tables[1] and "keeps freed memory" not in tables[1].split("|", 1)[1]
    assert tables[2].startswith("DeepFM, fp32, the peers also with glibc keeping freed memory")
    assert "| DeepCTR-Torch DeepFM (glibc keeps freed memory, as ours) | 1,875 (1,250–2,500) | 2.40 (2.40–2.40)x |" in tables[2]


def test_bf16_is_compared_only_with_peers_under_bf16(monkeypatch, tmp_path, capsys) -> None:
    order = _fake_runs(monkeypatch, tmp_path)
    report = bench.run_throughput(_args(tmp_path, "--repeats", "1", "--precision", "bf16-mixed"))
    assert order == ["ours-deepfm-fp32", "deepctr-deepfm-fp32", "fuxictr-deepfm-fp32", "ours-deepfm-bf16",
                     "deepctr-deepfm-bf16", "fuxictr-deepfm-bf16"]
    pairs = [(c["ours"], c["peer"]) for c in report["comparisons"]]
    assert [p for p in pairs if p[0].endswith("bf16")] == [("ours-deepfm-bf16", "deepctr-deepfm-bf16"),
                                                           ("ours-deepfm-bf16", "fuxictr-deepfm-bf16")]
    bf16_table = capsys.readouterr().out.split("### DeepFM in bf16")[1]
    assert "fp32" not in bf16_table.replace("evaluation in fp32", "")
    assert "| DeepCTR-Torch DeepFM (bf16 autocast) | 2,000 (2,000–2,000) | 3.00 (3.00–3.00)x |" in bf16_table


def test_bf16_only_runs_the_bf16_contenders_in_turns_as_the_like_for_like_table(monkeypatch, tmp_path, capsys) -> None:
    order = _fake_runs(monkeypatch, tmp_path)
    report = bench.run_throughput(_args(tmp_path, "--repeats", "2", "--precision", "bf16-mixed", "--bf16-only"))
    assert order == ["ours-deepfm-bf16", "deepctr-deepfm-bf16", "fuxictr-deepfm-bf16"] * 2
    assert [(c["ours"], c["peer"]) for c in report["comparisons"]] == [("ours-deepfm-bf16", "deepctr-deepfm-bf16"),
                                                                       ("ours-deepfm-bf16", "fuxictr-deepfm-bf16")]
    first = capsys.readouterr().out.split("### ")[1]
    assert first.startswith("Like for like: DeepFM against DeepFM, all under bf16 autocast") and "fp32 |" not in first
    with pytest.raises(SystemExit, match="--bf16-only needs --precision bf16-mixed"):
        bench.run_throughput(_args(tmp_path, "--bf16-only"))


def test_a_bf16_run_without_a_bf16_peer_shows_no_ratio(monkeypatch, tmp_path, capsys) -> None:
    order = _fake_runs(monkeypatch, tmp_path)
    report = bench.run_throughput(_args(tmp_path, "--repeats", "1", "--precision", "bf16-mixed", "--finalmlp",
                                        "--no-peer-variants"))
    assert order == ["ours-deepfm-fp32", "deepctr-deepfm-fp32", "fuxictr-deepfm-fp32", "ours-finalmlp-fp32",
                     "ours-deepfm-bf16"]  # the peers run DeepFM in fp32 only
    bf16 = [c for c in report["comparisons"] if c["ours"] == "ours-deepfm-bf16"]
    assert bf16 == [{"group": "DeepFM in bf16", "ours": "ours-deepfm-bf16", "peer": None}]
    bf16_table = capsys.readouterr().out.split("### DeepFM in bf16")[1]
    assert "no ratio" in bf16_table and "| recsys-zoo DeepFM (bf16-mixed) | 6,000 (6,000–6,000) | — |" in bf16_table


def test_fuxictr_needs_its_interpreter_and_model_code(monkeypatch, tmp_path) -> None:
    _fake_runs(monkeypatch, tmp_path)
    args = _args(tmp_path)
    args.peer_python = str(tmp_path / "missing-python")
    with pytest.raises(SystemExit, match="--peer-python"):
        bench.run_throughput(args)
    args = _args(tmp_path)
    args.fuxictr_model_zoo = str(tmp_path / "no-zoo")
    with pytest.raises(SystemExit, match="model_zoo"):
        bench.run_throughput(args)


def test_the_profile_times_plain_gemms_of_the_steps_own_matrix_products(real_file) -> None:
    """The GEMM ceiling is only meaningful if the plain GEMMs do the step's own products: the same FLOPs as
    the profiler counts for the step's mm/addmm calls. A real Frappe_x1 batch, two steps."""
    real_file("frappe_x1/train.csv")
    args = argparse.Namespace(threads=1, seed=2021, warmup=1, steps=2, profiled_steps=1)
    p = bench.profile_step(args)
    assert p["gemm_gflop_per_step"] == pytest.approx(p["profiled_matmul_gflop_per_step"], rel=1e-6)
    assert p["gemm_gflop_per_step"] > 8  # DeepFM's 400-wide MLP on 4096 rows: about 8.9 GFLOP a step
    assert p["step_matmul_ms"] + p["step_other_ms"] == pytest.approx(p["step_ms"])
    assert p["step_other_ms"] > 0 and len(p["top_other_ops_ms"]) == 10
    assert 0 < p["plain_gemm_cpu_ms"] and 0 < p["step_cpu_ms"]
    ceiling = p["limit_samples_per_second_gemm_only"]
    text = bench.profile_markdown(p, {"slow peer": ceiling * 0.25, "faster peer": ceiling * 0.75})
    assert "GFLOP/s" in text and f"{ceiling:,.0f} samples/s" in text
    # 2x a peer at a quarter of the ceiling fits under it; 2x one at three quarters does not.
    assert f"{ceiling * 0.5:,.0f} samples/s: within" in text and f"{ceiling * 1.5:,.0f} samples/s: beyond" in text
