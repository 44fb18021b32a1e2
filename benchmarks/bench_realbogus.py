"""Real/bogus classifier: train on simulated scenes, report held-out ROC/AUC.

One command regenerates the docs section, the ROC figure and (with ``--write-default``) the
packaged default model::

    flock /work/bench.lock python benchmarks/bench_realbogus.py --write-default

Training set: ``--train-scenes`` scenes of seed 0; held-out set: ``--test-scenes`` scenes
of seed 1 (other star fields, other artefacts, never seen in training). Each scene is
384 × 384 pixels; every DiaSource comes from the production differencing and measurement
(``jointcal_ap.realbogus.make_dataset``). Records ``os.getloadavg()`` at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine_line, write_section

ROOT = Path(__file__).resolve().parents[1]
PNG = ROOT / "docs" / "realbogus_roc.png"
DEFAULT = ROOT / "src" / "jointcal_ap" / "realbogus" / "data" / "default.rbmodel"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-scenes", type=int, default=32)
    parser.add_argument("--test-scenes", type=int, default=16)
    parser.add_argument("--write-default", action="store_true",
                        help="save the trained model as the packaged default")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)

    import sklearn

    from jointcal_ap.realbogus import (
        evaluate_model,
        make_dataset,
        plot_roc,
        save_model,
        train_model,
    )

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    train = make_dataset(args.train_scenes, seed=0, progress=True)
    test = make_dataset(args.test_scenes, seed=1, progress=True)
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = train_model(train, version="hgb-1", seed=0)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate_model(model, test)
    t_score = time.perf_counter() - t0
    model.info["heldout"] = {k: v for k, v in metrics.items() if k != "roc"}
    size = None
    if args.write_default:
        save_model(model, DEFAULT)
        size = DEFAULT.stat().st_size
    load1 = os.getloadavg()
    summary = {k: v for k, v in metrics.items() if k != "roc"}
    print(json.dumps(summary, indent=1))
    if args.no_docs:
        return 0
    plot_roc(metrics, PNG)
    rows = "\n".join(f"| {kind} | {'real' if kind in ('transient', 'variable') else 'bogus'} | "
                     f"{v['n']} | {v['scored_real']:.3f} |"
                     for kind, v in metrics["per_kind"].items())
    text = f"""## Real/bogus classifier (held out)

`flock /work/bench.lock python benchmarks/bench_realbogus.py --write-default` — {machine_line()},
load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end; scikit-learn
{sklearn.__version__}.

HistGradientBoostingClassifier on the {len(model.features)} features of
`jointcal_ap.realbogus.FEATURES`, trained on {metrics_n(train)} DiaSources of
{args.train_scenes} simulated 384² scenes (seed 0), scored on {metrics['n']} DiaSources
({metrics['n_real']} real, {metrics['n_bogus']} bogus) of {args.test_scenes} other scenes
(seed 1). {model.info['n_iter']} boosting rounds (early stopping).
{'' if size is None else f'Saved as the packaged default model ({size / 1024:.0f} KiB).'}

| held out | value |
|---|---|
| **AUC** | **{metrics['auc']:.4f}** (goal ≥ 0.98) |
| TPR / FPR at reliability ≥ 0.5 | {metrics['tpr']:.4f} / {metrics['fpr']:.4f} |
| TPR at FPR = 1 % | {metrics['tpr_at_fpr_1pct']:.4f} |
| time: datasets / training / scoring | {t_data:.1f} s / {t_train:.1f} s / {t_score:.2f} s |

| planted kind | truth | DiaSources | fraction scored real (≥ 0.5) |
|---|---|---|---|
{rows}

`noise`: detections matched to no planted object (noise peaks, artefact wings), counted as
bogus. ROC curve: [realbogus_roc.png](realbogus_roc.png). These are simulated artefacts with
known truth: the AUC says the features separate these kinds, not how a model does on real
DECam/HSC/Rubin difference images.
"""
    print(f"wrote {write_section('realbogus', text)}")
    return 0


def metrics_n(table) -> int:
    return int(table.num_rows)


if __name__ == "__main__":
    raise SystemExit(main())
