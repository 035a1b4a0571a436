"""Two measurements of the performance engine on ml-1m-implicit, written to JSON:

  python -m benchmarks.engine --out benchmarks/results/engine-cpu-2core.json

1. Mixed precision: Mult-VAE trained with float32 and with bfloat16 matmuls (same seed, split and epochs); test and
   validation NDCG@100 and training users/s of each.
2. Ensembles: `fit_ensemble` over N seeds against one `fit`-equivalent member, training users/s of the ensemble
   (members x users per second) and of one model.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib

from benchmarks.accuracy import DATASETS
from benchmarks.runners import published_model
from hvae_jax.configs import TrainConfig
from hvae_jax.experiment import RunSettings, prepare_split, run
from hvae_jax.train import fit_ensemble

MULTVAE = published_model("multvae").config  # Liang et al.'s [I-600-200-600-I]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--ensemble-epochs", type=int, default=4)
    parser.add_argument("--workroot", default="runs/engine")
    parser.add_argument("--out", default="benchmarks/results/engine-cpu-2core.json")
    args = parser.parse_args()
    report: dict = {"date": datetime.date.today().isoformat(), "data": "ml-1m-implicit", "epochs": args.epochs}

    precision = {}
    for dtype in ("float32", "bfloat16"):
        settings = RunSettings(**DATASETS["ml-1m"], workdir=f"{args.workroot}/ml-1m-{dtype}")
        results = run(settings, dataclasses.replace(MULTVAE, compute_dtype=dtype), TrainConfig(epochs=args.epochs),
                      progress=False, log=lambda message: None)
        precision[dtype] = {
            "test_ndcg@100": results["test"]["ndcg@100"],
            "test_ndcg@100_se": results["test"]["ndcg@100_se"],
            "valid_ndcg@100": results["valid"]["ndcg@100"],
            "train_users_per_second": results["train_users_per_second"],
        }
        print(dtype, precision[dtype], flush=True)
    report["mixed_precision"] = precision

    split, _ = prepare_split(RunSettings(**DATASETS["ml-1m"], workdir=f"{args.workroot}/ml-1m-float32"),
                             log=lambda m: None)
    train = TrainConfig(epochs=args.ensemble_epochs)
    single = fit_ensemble(MULTVAE, train, split, (0,), progress=False)
    ensemble = fit_ensemble(MULTVAE, train, split, tuple(range(args.members)), progress=False)
    report["ensemble"] = {
        "members": args.members,
        "epochs": args.ensemble_epochs,
        "one_model_users_per_second": single.users_per_second,
        "ensemble_users_per_second": ensemble.users_per_second,
        "gain": ensemble.users_per_second / single.users_per_second,
        "note": "users/s counts every member's users; the first epoch (compilation) is excluded",
    }
    print(report["ensemble"], flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
