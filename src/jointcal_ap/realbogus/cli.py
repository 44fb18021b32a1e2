"""``jointcal-ap realbogus export|train|score|report``: labelled cutouts, the classifier,
scoring DiaSources and the held-out report."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from jointcal_ap.cliutil import UsageError, command

__all__ = ["EXAMPLES_REALBOGUS", "add_commands"]

EXAMPLES_REALBOGUS = textwrap.dedent("""\
    examples:
      1. Labelled cutouts of 24 simulated scenes (seed 0) to Parquet:
         jointcal-ap realbogus export rb_train.parquet --scenes 24 --seed 0
         or the DiaSources of a pipeline run, labelled by its injected sources:
         jointcal-ap realbogus export rb_run.parquet --run runs/night1
      2. Train a model on them (version string <= 7 characters, Rubin's reliabilityVersion):
         jointcal-ap realbogus train rb_train.parquet --out rb.rbmodel --version hgb-1
      3. Held-out report (another seed) with the ROC curve as a PNG and the metrics as JSON:
         jointcal-ap realbogus export rb_test.parquet --scenes 12 --seed 1
         jointcal-ap realbogus report rb_test.parquet --model rb.rbmodel --png roc.png --json rb.json
      4. Score a difference stage's DiaSources (reliability, reliabilityVersion):
         jointcal-ap realbogus score run/units/visit1_det0/dia_sources.parquet \\
             run/units/visit1_det0/difference.fits --template run/units/visit1_det0/template.fits \\
             --out scored.parquet

    --model takes a model file or "default" (the packaged model).
    exit codes: 0 done, 1 unreadable or mismatched data or model, 2 usage.
    """)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``realbogus`` and its subcommands to the ``jointcal-ap`` parser."""
    parser = sub.add_parser(
        "realbogus", help="real/bogus: labelled cutouts, classifier, scoring, held-out report",
        parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES_REALBOGUS)
    rb = parser.add_subparsers(dest="realbogus_command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        p = rb.add_parser(name, help=help_text, parents=[common], epilog=EXAMPLES_REALBOGUS,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler)
        return p

    p = add("export", "labelled cutouts of simulated scenes to Parquet", _export)
    p.add_argument("out", metavar="OUT.parquet")
    p.add_argument("--scenes", type=int, default=24, help="number of scenes (default 24)")
    p.add_argument("--size", type=int, default=384, help="scene side in pixels (default 384)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--run", default=None, metavar="RUN_DIR",
                   help="export a pipeline run's DiaSources instead (injected = real)")
    p = add("train", "train a HistGradientBoosting model on a dataset", _train)
    p.add_argument("dataset", metavar="DATASET.parquet")
    p.add_argument("--out", required=True, metavar="MODEL.rbmodel")
    p.add_argument("--version", dest="model_version", default="hgb-1",
                   help="reliabilityVersion written by the model (<= 7 characters)")
    p.add_argument("--seed", type=int, default=0, help="early-stopping split seed")
    p = add("score", "fill reliability/reliabilityVersion of a DiaSource Parquet file", _score)
    p.add_argument("dia_sources", metavar="DIA_SOURCES.parquet")
    p.add_argument("difference", metavar="DIFFERENCE.fits")
    p.add_argument("--template", default=None, metavar="TEMPLATE.fits")
    p.add_argument("--model", default="default", help="model file or 'default'")
    p.add_argument("--out", required=True, metavar="OUT.parquet")
    p = add("report", "held-out ROC and AUC of a model on a dataset", _report)
    p.add_argument("dataset", metavar="DATASET.parquet")
    p.add_argument("--model", default="default", help="model file or 'default'")
    p.add_argument("--png", default=None, help="write the ROC curve here")
    p.add_argument("--json", default=None, help="write the metrics here")


def _data_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    from jointcal_ap.dia.errors import DiaError
    from jointcal_ap.diffim.errors import DiffimError

    return (DiaError, DiffimError, pa.ArrowException, OSError, KeyError, ValueError)


def _export(args: argparse.Namespace) -> int:
    return command(data_errors=_data_errors())(_run_export)(args)


def _run_export(args: argparse.Namespace) -> int:
    from jointcal_ap.realbogus import make_dataset, run_dataset, write_dataset

    if args.scenes < 1 or args.size < 96:
        raise UsageError(f"need --scenes >= 1 and --size >= 96, got {args.scenes}, {args.size}")
    show = not getattr(args, "no_progress", False)
    if args.run:
        table = run_dataset(args.run, progress=show)
    else:
        table = make_dataset(args.scenes, shape=(args.size, args.size), seed=args.seed,
                             progress=show)
    write_dataset(table, args.out)
    labels = table.column("label").to_numpy()
    print(f"{args.out}: {table.num_rows} DiaSources ({int(labels.sum())} real, "
          f"{int((labels == 0).sum())} bogus)")
    return 0


def _train(args: argparse.Namespace) -> int:
    return command(data_errors=_data_errors())(_run_train)(args)


def _run_train(args: argparse.Namespace) -> int:
    from jointcal_ap.realbogus import read_dataset, save_model, train_model

    model = train_model(read_dataset(args.dataset), version=args.model_version, seed=args.seed)
    save_model(model, args.out)
    print(f"{args.out}: {model.version}, {model.info['n_train']} rows, "
          f"{model.info['n_iter']} boosting rounds, scikit-learn {model.info['sklearn']}")
    return 0


def _score(args: argparse.Namespace) -> int:
    return command(data_errors=_data_errors())(_run_score)(args)


def _run_score(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from jointcal_ap.atomic import atomic_path
    from jointcal_ap.diffim import DifferenceImage, read_template
    from jointcal_ap.realbogus import score_dia_sources

    table = pq.read_table(args.dia_sources)
    diff = DifferenceImage.read(args.difference)
    template = read_template(args.template) if args.template else None
    scored = score_dia_sources(table, diff, template, model=args.model)
    with atomic_path(args.out) as tmp:
        pq.write_table(scored, tmp)
    print(f"{args.out}: {scored.num_rows} DiaSources scored")
    return 0


def _report(args: argparse.Namespace) -> int:
    return command(data_errors=_data_errors())(_run_report)(args)


def _run_report(args: argparse.Namespace) -> int:
    import json

    from jointcal_ap.atomic import write_json
    from jointcal_ap.realbogus import evaluate_model, plot_roc, read_dataset

    metrics = evaluate_model(args.model, read_dataset(args.dataset))
    if args.png:
        plot_roc(metrics, args.png)
    if args.json:
        write_json(args.json, metrics)
    summary = {k: v for k, v in metrics.items() if k != "roc"}
    print(json.dumps(summary, indent=1))
    return 0
