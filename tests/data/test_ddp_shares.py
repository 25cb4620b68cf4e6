"""Under data parallelism (two CPU processes with gloo), the disk source's processes read disjoint shares
that together cover the split, in the same number of steps; and a DDP run trains from disk."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = """
import json, sys
import torch.distributed as dist
from recsys.data.arrays import SplitArrays
from recsys.data.sources import DiskSource

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
source = DiskSource(SplitArrays(sys.argv[1]), 128, shuffle=True, seed=3, rank=rank, world_size=world, block_rows=300)
epochs = [[b.dense[:, 0].long().tolist() for b in source] for _ in range(2)]
gathered = [None] * world
dist.all_gather_object(gathered, {"steps": len(source), "epochs": epochs})
if rank == 0:
    json.dump(gathered, open(sys.argv[2], "w"))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_read_disjoint_shares_covering_the_split(disk_module, tmp_path) -> None:  # noqa: ANN001
    arrays = disk_module.load_arrays("train")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(script), str(arrays.directory), str(tmp_path / "out.json")],
                              env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    ranks = json.loads((tmp_path / "out.json").read_text())
    assert ranks[0]["steps"] == ranks[1]["steps"] == len(ranks[0]["epochs"][0]) == len(ranks[1]["epochs"][0])
    n = arrays.n_rows
    for epoch in range(2):
        shares = [np.concatenate([np.asarray(b, dtype=np.int64) for b in r["epochs"][epoch]]) for r in ranks]
        assert not set(shares[0].tolist()) & set(shares[1].tolist())
        assert np.array_equal(np.sort(np.concatenate(shares)), np.arange(n))
        for step in range(ranks[0]["steps"]):  # each step's two batches make one global batch of 128
            sizes = [len(r["epochs"][epoch][step]) for r in ranks]
            assert sum(sizes) == min(128, n - 128 * step) and abs(sizes[0] - sizes[1]) <= 1
    first, second = (np.concatenate([np.asarray(b) for b in ranks[0]["epochs"][e]]) for e in range(2))
    assert not np.array_equal(first, second)  # each epoch its own order


def test_ddp_training_reads_from_disk(tmp_path: Path) -> None:
    args = ["train", "model=lr", "data=synthetic", "data.synthetic.n_train=4000", "data.synthetic.n_valid=1000",
            "data.synthetic.n_test=1000", "data.batch_size=256", "+data.storage=disk", "+data.block_rows=1000",
            "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
            "+trainer.strategy=ddp", "trainer.devices=2", f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.output_dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-m", "recsys.commands.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs"] == 2 and metrics["val"]["auc"] > 0.5
    log = (proc.stdout + proc.stderr + "".join(p.read_text() for p in (tmp_path / "run").glob("*.log")))
    assert "data storage: disk (data.storage=disk" in log
    assert len(list((tmp_path / "cache").glob("synthetic_ctr-*/arrays/train/manifest.json"))) == 1
