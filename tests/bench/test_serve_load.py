"""`recsys bench serve`: a real (tiny) run of the load bench, and how repeats are summarised and checked."""

from __future__ import annotations

from recsys.bench.serve import bench, check_goals, markdown, summarise


def _row(backend: str, candidates: int, concurrency: int, repeat: int, p99: float, errors: int = 0) -> dict:
    return {"run": "m", "model": "m", "dataset": "d", "backend": backend, "candidates": candidates,
            "concurrency": concurrency, "repeat": repeat, "requests": 100, "errors": errors,
            "p50_ms": p99 / 4, "p95_ms": p99 / 2, "p99_ms": p99, "requests_per_second": 1000 / p99}


def test_a_goal_is_the_median_of_the_repeats_and_says_how_many_held() -> None:
    rows = [_row("onnx", 100, 1, r, p99) for r, p99 in enumerate([30.0, 8.0, 9.0])]
    rows += [_row("onnx", 1, 1, r, p99) for r, p99 in enumerate([4.0, 6.0, 7.0])]
    rows += [_row("onnx", 100, 32, r, 50.0, errors=e) for r, e in enumerate([0, 1, 0])]
    cells = summarise(rows)
    by_candidates = {(c["candidates"], c["concurrency"]): c for c in cells}
    assert by_candidates[(100, 1)]["p99_ms"] == 9.0 and by_candidates[(100, 1)]["p99_ms_by_repeat"] == [30.0, 8.0, 9.0]
    assert by_candidates[(100, 32)]["errors"] == 1 and by_candidates[(100, 32)]["requests"] == 300
    goals = {(g["goal"]): g for g in check_goals(cells)}
    hundred = goals["p99 <= 10.0 ms, 100 candidate(s), concurrency 1"]
    assert hundred["met"] and (hundred["repeats_met"], hundred["repeats"]) == (2, 3)  # one burst does not decide it
    one = goals["p99 <= 5.0 ms, 1 candidate(s), concurrency 1"]
    assert not one["met"] and one["repeats_met"] == 1  # a median over the limit does
    assert not goals["zero errors, 100 candidate(s), concurrency 32"]["met"]  # an error in any repeat counts


def test_the_bench_runs_both_backends_over_repeats_on_a_real_server(tiny_runs, tmp_path) -> None:
    run = tiny_runs("din")
    result = bench({"din": run}, concurrency=[1, 2], candidates=[1, 20], max_requests=15, max_seconds=5.0,
                   warmup=3, threads=1, work=tmp_path, repeats=2)
    assert len(result["rows"]) == 2 * 2 * 2 * 2  # backends x concurrency x candidates x repeats
    assert sorted({r["repeat"] for r in result["rows"]}) == [0, 1]
    assert len(result["cells"]) == 8 and all(c["errors"] == 0 and c["requests"] == 30 for c in result["cells"])
    assert all(c["p50_ms"] <= c["p99_ms"] for c in result["cells"])
    table = markdown(result)
    assert "median over 2 repeat(s)" in table and table.count("| din (din, synthetic") == 4
    assert [g["goal"] for g in result["goals"]] == ["p99 <= 5.0 ms, 1 candidate(s), concurrency 1"]  # no 100 or 32 cells
