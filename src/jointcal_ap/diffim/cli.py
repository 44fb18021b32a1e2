"""``jointcal-ap diff``: HOTPANTS-style image differencing of two FITS images.

Added to the ``jointcal-ap`` parser by :func:`add_commands` (see :mod:`jointcal_ap.cliutil`).
"""

from __future__ import annotations

import argparse
import logging
import textwrap
from typing import Any

from jointcal_ap.cliutil import UsageError, command

__all__ = ["EXAMPLES_DIFF", "add_commands", "diff_command"]

log = logging.getLogger("jointcal_ap")

EXAMPLES_DIFF = textwrap.dedent("""\
    examples:
      1. Alard-Lupton, template convolved, decorrelated (the defaults):
         jointcal-ap diff science.fits template.fits --out diff.fits
      2. ZOGY, with the DIA sources written to Parquet:
         jointcal-ap diff science.fits template.fits --out diff.fits --method zogy --sources dia.parquet
      3. Preconvolution, variance planes from separate files, QA metrics table:
         jointcal-ap diff sci.fits tmpl.fits --out diff.fits --mode preconvolve \\
             --science-variance sci.var.fits --template-variance tmpl.var.fits --metrics qa.parquet

    Inputs: the first image HDU of each file; VARIANCE and MASK extensions and PSF extensions
    (jointcal_ap layout) are used when present. Without a celestial WCS in either file both are
    taken to be on the same pixel grid; otherwise the template is warped (Lanczos-3) onto the
    science grid. Without a variance, it is estimated from the image (sky MAD, + source/GAIN).

    Output: the difference in the science image's units (primary HDU, kernel and QA cards in
    its header), then VARIANCE, MASK, PSF, KERNEL (or SCORE, SCORE_CORR for ZOGY), PROVENANCE.

    exit codes: 0 done, 1 failed on the data (the message names the file), 2 usage.
    """)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``diff`` to the ``jointcal-ap`` parser (argparse only: cheap)."""
    p = sub.add_parser("diff", help="difference two images (Alard-Lupton or ZOGY), HOTPANTS-style",
                       parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=EXAMPLES_DIFF)
    p.add_argument("science", metavar="SCIENCE.fits", help="science image")
    p.add_argument("template", metavar="TEMPLATE.fits", help="template image")
    p.add_argument("--out", required=True, metavar="DIFF.fits", help="output difference image")
    p.add_argument("--method", choices=["al", "zogy"], default="al", help="al (default) or zogy")
    p.add_argument("--mode", choices=["convolve-template", "convolve-science", "auto", "preconvolve"],
                   default="convolve-template", help="Alard-Lupton: which image to convolve (default "
                                                     "convolve-template)")
    p.add_argument("--no-decorrelate", action="store_true", help="do not whiten the difference's noise")
    p.add_argument("--science-variance", metavar="V.fits", help="science variance image")
    p.add_argument("--template-variance", metavar="V.fits", help="template variance image")
    p.add_argument("--science-mask", metavar="M.fits", help="science mask image (LSST bits)")
    p.add_argument("--template-mask", metavar="M.fits", help="template mask image (LSST bits)")
    p.add_argument("--sources", metavar="DIA.parquet", help="detect DIA sources and write them (Rubin columns)")
    p.add_argument("--metrics", metavar="QA.parquet", help="write the QA metrics table")
    p.add_argument("--threshold", type=float, default=5.0, help="detection threshold, sigma (default 5)")
    p.add_argument("--keep-bad-centres", action="store_true",
                   help="keep detections whose 3x3 centre is all saturated, edge, no-data, bad or "
                        "interpolated (dropped by default, as Rubin's ip_diffim does)")
    p.add_argument("--spatial-degree", type=int, default=1, help="kernel spatial degree (default 1)")
    p.add_argument("--background-degree", type=int, default=1,
                   help="differential background degree (default 1; -1: none)")
    p.add_argument("--varying-kernel-sum", action="store_true", help="let the kernel sum vary spatially")
    p.add_argument("--kernel-half-size", type=int, default=None, help="kernel half-width (default: from the PSFs)")
    p.add_argument("--cell-px", type=int, default=512, help="decorrelation / ZOGY cell size (default 512)")
    p.add_argument("--science-saturation", type=float, default=None, help="science saturation level")
    p.add_argument("--template-saturation", type=float, default=None, help="template saturation level")
    p.set_defaults(handler=diff_command)


@command(data_errors=(ValueError, OSError))
def diff_command(args: argparse.Namespace) -> int:
    """Run ``jointcal-ap diff`` (see :data:`EXAMPLES_DIFF`)."""
    import contextlib
    import time
    from pathlib import Path

    import pyarrow.parquet as pq

    from jointcal_ap.atomic import atomic_path
    from jointcal_ap.diffim.detection import DetectionOptions, detect_dia_sources, detection_counts
    from jointcal_ap.diffim.matching import MatchOptions
    from jointcal_ap.diffim.pair import prepare_pair
    from jointcal_ap.diffim.qa import metrics_table
    from jointcal_ap.diffim.subtraction import SubtractOptions, subtract

    t0 = time.perf_counter()
    try:
        match = MatchOptions(spatial_degree=args.spatial_degree, background_degree=args.background_degree,
                             constant_kernel_sum=not args.varying_kernel_sum,
                             kernel_half_size=args.kernel_half_size)
        opts = SubtractOptions(method=args.method, mode=args.mode, decorrelate=not args.no_decorrelate,
                               match=match, cell_px=args.cell_px, science_saturation=args.science_saturation,
                               template_saturation=args.template_saturation)
        det_opts = DetectionOptions(threshold=args.threshold, cell_px=args.cell_px,
                                    **({"drop_centre_all": ()} if args.keep_bad_centres else {}))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    outputs = [Path(args.out)] + [Path(p) for p in (args.sources, args.metrics) if p]
    if len({o.resolve() for o in outputs}) != len(outputs):
        raise UsageError("--out, --sources and --metrics must be different files")
    sci, tmp = prepare_pair(args.science, args.template, science_variance=args.science_variance,
                            template_variance=args.template_variance, science_mask=args.science_mask,
                            template_mask=args.template_mask)
    diff = subtract(sci, tmp, opts)
    table = None
    if args.sources:
        from jointcal_ap.diffim.stars import find_stars

        bright = find_stars(tmp.image, tmp.variance, tmp.mask, threshold=200.0)   # bright-star residuals
        table = detect_dia_sources(diff, det_opts, template_stars=bright)
        diff = diff.with_qa(**detection_counts(table))
    with contextlib.ExitStack() as stack:        # every output renamed into place only at the end
        tmp_out = stack.enter_context(atomic_path(args.out))
        diff.to_hdulist().writeto(tmp_out, overwrite=True)
        if table is not None:
            pq.write_table(table, stack.enter_context(atomic_path(args.sources)))
        if args.metrics:
            pq.write_table(metrics_table(diff), stack.enter_context(atomic_path(args.metrics)))
    q = diff.qa
    extra = (f", {table.num_rows} DIA sources ({q['n_positive']} +, {q['n_negative']} -; "
             f"{q['n_dropped_centre']} dropped with a saturated/edge/no-data centre)" if table is not None else "")
    kernel = (f"kernel sum {q['kernel_sum']:.4f}, {q['stamps_used']} stamps ({q['stamps_rejected']} rejected), "
              if "kernel_sum" in q else "")
    print(f"{diff.method} {diff.mode}{' decorrelated' if diff.decorrelated and diff.method == 'al' else ''}: "
          f"{kernel}residual std {q['residual_std']:.3f} (mean {q['residual_mean']:+.3f}){extra}; "
          f"wrote {args.out} in {time.perf_counter() - t0:.2f} s")
    return 0
