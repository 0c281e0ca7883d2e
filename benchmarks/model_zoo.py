"""The model family on dynamically binarized MNIST, one budget for every row (docs/model_zoo.md).

Each row is an ordinary run folder (``aevb train`` through the API) under ``--out``, then
``Run.evaluate`` on the full test set: importance-sampled log p(x) with its standard error,
the IWAE bound L₅₀, the ELBO, the KL, active units (per layer for two stochastic layers) and the
training time. A row whose run folder is complete is not trained again, and one whose results
for this k exist is not evaluated again, so the script resumes (and a second k reuses the runs).

    python benchmarks/model_zoo.py --data-dir ../shared/data --epochs 30 --out zoo
    python benchmarks/model_zoo.py --rows vae iaf --importance-samples 5000 --device cuda

Architecture of Burda et al. (2015, Table 1): one stochastic layer of 50 units under two tanh
layers of 200; two layers of 100 and 50 units under (100, 100) and (50, 50). Adam 1e-3, batch
100, seed 0, 10% of the training images held out for choosing the best epoch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from aevb.runs import TrainConfig, load_run, train

ONE_LAYER = {"latent_dim": 50, "hidden": (200, 200)}
ROWS: dict[str, dict[str, Any]] = {
    "vae": {**ONE_LAYER},
    "iwae5": {**ONE_LAYER, "objective": "iwae", "samples": 5},
    "vamp": {**ONE_LAYER, "prior": "vamp"},
    "iaf": {**ONE_LAYER, "posterior": "iaf", "flow_steps": 2},
    "planar": {**ONE_LAYER, "posterior": "planar", "flow_steps": 10},
    # The two-layer model's lower half alone: its one-layer control at equal width.
    "vae-narrow": {"latent_dim": 100, "hidden": (100, 100)},
    "two-layer": {"latent_dim": 100, "hidden": (100, 100), "top_latent_dim": 50},
    "two-layer-ladder": {
        "latent_dim": 100,
        "hidden": (100, 100),
        "top_latent_dim": 50,
        "ladder": True,
    },
    "two-layer-iwae5": {
        "latent_dim": 100,
        "hidden": (100, 100),
        "top_latent_dim": 50,
        "objective": "iwae",
        "samples": 5,
    },
}
# Published test log p(x) on MNIST (nats), for the table.
PUBLISHED = {
    "vae": "−86.76 (Burda et al. 2015, VAE k=1, 1 layer)",
    "iwae5": "−85.54 (Burda et al., IWAE k=5, 1 layer)",
    "vamp": "−85.57 (Tomczak & Welling 2018, 1 layer)",
    "iaf": "−79.10 (Kingma et al. 2016, ResNet VAE + IAF)",
    "planar": "≥ −87.5 (Rezende & Mohamed 2015, K = 10 planar steps; a bound)",
    "vae-narrow": "— (control: the two-layer model's lower half as a one-layer VAE)",
    "two-layer": "−85.33 (Burda et al., VAE k=1, 2 layers)",
    "two-layer-ladder": "— (Sønderby et al. 2016 used batch norm and KL warm-up)",
    "two-layer-iwae5": "−83.89 (Burda et al., IWAE k=5, 2 layers)",
}


def run_row(name: str, out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    """Train and evaluate one row (or read its results); returns the results."""
    results_file = out / f"{name}-k{args.importance_samples}.json"
    if results_file.exists():
        return json.loads(results_file.read_text())
    run_dir = out / "runs" / name
    config = TrainConfig(
        dataset="mnist",
        data_dir=args.data_dir,
        epochs=args.epochs,
        batch_size=100,
        lr=1e-3,
        seed=0,
        device=args.device,
        **ROWS[name],
    )
    if not (run_dir / "summary.json").exists():
        train(config, run_dir, progress=progress)
    run = load_run(run_dir, device=args.device)
    summary = json.loads((run_dir / "summary.json").read_text())
    started = time.perf_counter()
    result = run.evaluate(
        run.split("test"),
        importance_samples=args.importance_samples,
        iwae_samples=50,
        progress=progress,
    )
    values = {
        "row": name,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in ROWS[name].items()},
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": summary["train_seconds"],
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "evaluation_seconds": time.perf_counter() - started,
        **result.to_dict(),
    }
    results_file.write_text(json.dumps(values, indent=2))
    return values


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table of the rows measured."""
    lines = [
        "| model | test log p(x) ± s.e. | k | IWAE L₅₀ | ELBO | KL | active units | parameters "
        "| training | published |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        units = f"{r['active_units']} of {r['latent_dim']}"
        if r.get("active_units_per_layer"):
            units += f" ({', '.join(map(str, r['active_units_per_layer']))})"
        lines.append(
            f"| {r['row']} | {r['log_likelihood']:.2f} ± {r['log_likelihood_se']:.3f} "
            f"| {r['importance_samples']} | {r['iwae_bound']:.2f} | {r['elbo']:.2f} "
            f"| {r['kl']:.2f} | {units} | {r['parameters']:,} | {r['train_seconds']:.0f} s "
            f"| {PUBLISHED[r['row']]} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--importance-samples", type=int, default=1000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="zoo")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_row(name, out, args, not args.no_progress) for name in args.rows]
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
