"""RecBole's SASRec as the peer of `recsys bench next-item`, run in RecBole's own interpreter:

    PEER_PYTHON recbole_sasrec.py --work DIR --settings DIR/settings.json

It imports only RecBole, torch, numpy and the standard library (recsys-zoo is not installed there; see
docs/peers.md for how to make that interpreter). The benchmark writes DIR/dataset/<name>/<name>.inter
(RecBole's atomic format, one user's training window then the validation and the test item, timestamp =
position, so RecBole's leave-one-out split is ours) and DIR/exclude.json (each user's full history, the
items the evaluation masks). This script trains RecBole's SASRec with RecBole's own trainer, one epoch
at a time, timing each training epoch; after each it ranks the whole catalogue for the validation users
with the benchmark's rule (the history masked, ties counted against the target), stops after `patience`
epochs without a better validation NDCG@20, and writes the test users' target ranks at the best epoch to
DIR/test_ranks.npy, which the benchmark scores with its own metrics. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path


def _compatible_numpy() -> None:
    """RecBole 1.2.1 reads aliases numpy 2 removed (np.float_, ...); give them back before importing it."""
    import numpy as np

    for name, value in {"bool8": np.bool_, "float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}.items():
        if not hasattr(np, name):
            setattr(np, name, value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--settings", required=True)
    args = parser.parse_args()
    work = Path(args.work)
    settings = json.loads(Path(args.settings).read_text())
    _compatible_numpy()
    import numpy as np
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    torch.set_num_threads(int(settings.get("threads") or os.cpu_count() or 1))
    config = Config(model="SASRec", dataset=settings["dataset"], config_dict={
        "data_path": str(work / "dataset"), "checkpoint_dir": str(work / "checkpoints"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "MAX_ITEM_LIST_LENGTH": settings["max_len"],
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "repeatable": True,
        "n_layers": settings["num_blocks"], "n_heads": settings["num_heads"], "hidden_size": settings["dim"],
        "inner_size": settings["dim"], "hidden_act": "relu", "hidden_dropout_prob": settings["dropout"],
        "attn_dropout_prob": settings["dropout"], "loss_type": "CE", "train_neg_sample_args": None,
        "learning_rate": settings["learning_rate"], "weight_decay": settings["weight_decay"],
        "train_batch_size": settings["train_batch_size"], "eval_batch_size": 4096, "epochs": settings["max_epochs"],
        "seed": settings["seed"], "reproducibility": True, "device": "cpu", "use_gpu": False, "show_progress": False,
        "state": "WARNING", "metrics": ["NDCG"], "topk": [20], "valid_metric": "NDCG@20",
    })
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)

    # Each user's full history (raw tokens) as RecBole's internal item ids, to mask at evaluation.
    token_to_item = dataset.field2token_id["item_id"]
    token_to_user = dataset.field2token_id["user_id"]
    histories = json.loads((work / "exclude.json").read_text())
    width = max(len(h) for split in histories.values() for h in split.values())
    masks = {}
    for split, by_user in histories.items():
        rows = torch.zeros(len(token_to_user), width, dtype=torch.long)  # 0 is RecBole's padding item
        for user, items in by_user.items():
            ids = [token_to_item[i] for i in items if i in token_to_item]
            rows[token_to_user[user], : len(ids)] = torch.tensor(ids, dtype=torch.long)
        masks[split] = rows

    def target_ranks(loader, split: str) -> torch.Tensor:
        """The target's 1-based rank among every item, padding and the history masked; ties count against
        the target; a masked target is unreachable (inf)."""
        model.eval()
        ranks = []
        with torch.no_grad():
            for interaction, _, positive_u, positive_i in loader:
                scores = model.full_sort_predict(interaction).view(len(interaction), -1)
                scores[:, 0] = float("-inf")
                users = interaction["user_id"]
                scores.scatter_(1, masks[split][users], float("-inf"))
                scores[:, 0] = float("-inf")
                own = scores[positive_u, positive_i].unsqueeze(1)
                rank = (scores >= own).sum(1).double()
                ranks.append(torch.where(torch.isneginf(own.squeeze(1)), torch.full_like(rank, math.inf), rank))
        model.train()
        return torch.cat(ranks)

    def ndcg(ranks: torch.Tensor, k: int) -> float:
        return float(torch.where(ranks <= k, 1.0 / torch.log2(ranks.clamp(max=1e18) + 1.0), 0.0).mean())

    epoch_seconds, history, best, best_state, stale = [], [], -1.0, None, 0
    for epoch in range(settings["max_epochs"]):
        start = time.perf_counter()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        epoch_seconds.append(time.perf_counter() - start)
        value = ndcg(target_ranks(valid_data, "valid"), 20)
        history.append({"epoch": epoch, "ndcg@20": value})
        if value > best + 1e-9:
            best, stale = value, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= settings["patience"]:
                break
    model.load_state_dict(best_state)
    np.save(work / "test_ranks.npy", target_ranks(test_data, "test").numpy(), allow_pickle=False)
    print(json.dumps({
        "name": "RecBole SASRec", "epochs": len(epoch_seconds), "epoch_seconds": epoch_seconds, "history": history,
        "best_epoch": max(history, key=lambda h: h["ndcg@20"])["epoch"], "val_ndcg@20": best,
        "num_parameters": sum(p.numel() for p in model.parameters()), "train_samples": len(train_data.dataset),
    }))


if __name__ == "__main__":
    main()
