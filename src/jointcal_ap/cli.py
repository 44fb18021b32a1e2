"""The ``jointcal-ap`` command line.

Exit codes: 0 success, 1 the work failed on the data, 2 usage error. Logs go to
stderr; progress bars too (``--no-progress`` turns them off).
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Sequence

from jointcal_ap.cliutil import UsageError
from jointcal_ap.refcat.cli import EXAMPLES as REFCAT_EXAMPLES

log = logging.getLogger("jointcal_ap")

#: The refcat examples, shown by the top-level help too (the commands: :mod:`jointcal_ap.refcat.cli`).
EXAMPLES_REFCAT = REFCAT_EXAMPLES


#: Command families: each module's ``add_commands(sub, common)`` adds its subcommands (see
#: :mod:`jointcal_ap.cliutil`), and the top-level commands it adds (a test checks these against
#: ``add_commands``). One line per family. ``main`` loads only the family of the command asked
#: for, so that ``jointcal-ap diff`` does not import what ``metrics`` or ``run`` need (~0.4 s a
#: call); a command not listed here (a plugin's) loads every family.
FAMILY_COMMANDS: dict[str, tuple[str, ...]] = {
    "jointcal_ap.refcat.cli": ("refcat",),
    "jointcal_ap.stages.cli": ("run", "stages"),
    "jointcal_ap.store.cli": ("repo",),
    "jointcal_ap.alerts.cli": ("alerts", "registry"),
    "jointcal_ap.metrics.cli": ("metrics",),
    "jointcal_ap.sso.cli": ("sso",),
    "jointcal_ap.diffim.cli": ("diff",),
    "jointcal_ap.apdb.cli": ("apdb",),
    "jointcal_ap.realbogus.cli": ("realbogus",),
    "jointcal_ap.report.cli": ("report",),
}

#: The command families' modules, in the order their commands are listed.
COMMAND_FAMILIES: tuple[str, ...] = tuple(FAMILY_COMMANDS)

#: Commands defined in this module; ``main`` builds the parser without the command families
#: (and the plugin manager they load) when one of these is asked for.
BUILTIN_COMMANDS = ("fit", "demo")


def build_parser(*, families: bool | Sequence[str] = True) -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation).

    ``families``: ``True`` adds the commands of every one of :data:`COMMAND_FAMILIES` and the
    plugins' (what ``--help`` lists); a sequence of module names adds those families' only;
    ``False`` none. ``main`` leaves them out when a built-in command is run, so that
    ``jointcal-ap fit`` does not pay for loading the stage plugins, and loads only the
    command's own family when :data:`FAMILY_COMMANDS` knows it.
    """
    from jointcal_ap import __version__

    parser = argparse.ArgumentParser(
        prog="jointcal-ap", description="Joint calibration of astronomical exposures.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES_REFCAT)
    parser.add_argument("--version", action="version", version=f"jointcal-ap {__version__}")
    # Global flags are accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more logging (-vv for debug)")
    common.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fit = sub.add_parser(
        "fit", help="joint astrometric and photometric fit of many exposures against a refcat",
        description="Fit the astrometry (a WCS per exposure x CCD) and the photometry (zero points and "
                    "flat fields, in nJy) of many exposures jointly against a reference catalog; write "
                    "the calibration product, SCAMP .head files (TPV), TAN-SIP headers, the model and a "
                    "report. Progress goes to stderr (tqdm bars on a terminal, plain lines otherwise; "
                    "--no-progress turns it off).",
        parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            examples:
              1. SExtractor FITS-LDAC catalogs, as SCAMP takes them (astrometry and photometry):
                 jointcal-ap fit ldac/*.cat --refcat refcat/gaia --out fit-out --plots
              2. Our Parquet survey layout, per-detector x per-visit model, astrometry only:
                 jointcal-ap fit survey/ --refcat refcat/gaia --out fit-out --model constrained --fit astrometry
              3. Proper motion and parallax for every star seen over a year or more:
                 jointcal-ap fit ldac/*.cat --refcat refcat/gaia --out fit-out --star-params 5
              4. Catalogs with the same name from two nights, replacing an earlier output:
                 jointcal-ap fit night1/*.cat night2/*.cat --refcat refcat/gaia --out fit-out \\
                     --head-names path --overwrite
            """))
    fit.add_argument("catalogs", nargs="+", metavar="CATALOG",
                     help="FITS-LDAC catalogs (one per exposure) or one Parquet survey directory")
    fit.add_argument("--refcat", required=True, help="reference catalog directory (jointcal-ap refcat convert)")
    fit.add_argument("--out", required=True,
                     help="output directory: written under a hidden temporary name and renamed at the "
                          "end; an existing non-empty one is refused unless --overwrite")
    fit.add_argument("--overwrite", action="store_true",
                     help="replace an existing --out directory (swapped by rename once the new one is complete)")
    fit.add_argument("--head-names", choices=["catalog", "path", "visit"], default="catalog",
                     help="name of each exposure's .head: catalog = the catalog's base name (SCAMP's rule, "
                          "default), path = its path below the catalogs' common directory with / as _ "
                          "(for catalogs of the same name in different directories), visit = visit_<id>")
    fit.add_argument("--model", choices=["auto", "simple", "constrained"], default="auto",
                     help="simple: a polynomial per visit x detector; constrained: per-detector o per-visit; "
                          "auto (default): constrained when every visit has the same detectors")
    fit.add_argument("--degree", type=int, default=3, help="polynomial degree (default 3)")
    fit.add_argument("--visit-degree", type=int, default=1, help="constrained model: per-visit degree (default 1)")
    fit.add_argument("--star-params", type=int, choices=[2, 5], default=2,
                     help="5: fit proper motion and parallax of stars without reference motion")
    fit.add_argument("--clip-sigma", type=float, default=5.0, help="outlier clipping threshold (default 5)")
    fit.add_argument("--ref-error-floor", type=float, default=0.0, metavar="MAS",
                     help="added in quadrature to reference position errors (needed if the refcat has none)")
    fit.add_argument("--fit", choices=["both", "astrometry", "photometry"], default="both", dest="what",
                     help="what to fit (default both: one calibration product with WCS and flux scale)")
    phot = fit.add_argument_group("photometry")
    phot.add_argument("--phot-model", choices=["simple", "constrained"], default="simple",
                      help="simple: zero point per visit + flat per visit x detector; constrained: zero point "
                           "per visit + flat per detector shared by all visits")
    phot.add_argument("--flat-degree", type=int, default=2, help="Chebyshev degree of the flats (default 2)")
    phot.add_argument("--phot-visit-degree", type=int, default=0,
                      help="constrained photometry: degree of a per-visit focal-plane term (default 0: none)")
    phot.add_argument("--ref-mag", help="refcat column of the reference magnitude (default: ref_mag or the first *mag)")
    phot.add_argument("--ref-mag-error", help="refcat column of its error (default: <ref-mag>_error)")
    phot.add_argument("--ref-colour", help="reference colour: a column or A-B of two columns (e.g. b_v)")
    phot.add_argument("--colour-transform", default="0", metavar="C0[,C1[,C2]]",
                      help="exposure band = ref mag + C0 + C1*colour + C2*colour^2 (default 0)")
    phot.add_argument("--colour-term", action="store_true", help="also fit a colour term")
    phot.add_argument("--ref-mag-floor", type=float, default=0.0, metavar="MAG",
                      help="added in quadrature to reference magnitude errors (default 0)")
    fit.add_argument("--plots", action="store_true", help="write PNG plots")
    fit.add_argument("--visit-keys", metavar="KEY[,KEY...]", default="VISIT,EXPNUM,EXPID,OBSID",
                     help="FITS-LDAC: image-header keywords holding the visit id, tried in order "
                          "(default VISIT,EXPNUM,EXPID,OBSID)")
    fit.add_argument("--detector-keys", metavar="KEY[,KEY...]", default="DETECTOR,CCDNUM,EXTNAME",
                     help="FITS-LDAC: keywords holding the detector id (EXTNAME by its trailing digits; "
                          "default DETECTOR,CCDNUM,EXTNAME)")

    demo = sub.add_parser("demo", help="run the main job on the bundled real catalogs", parents=[common])
    demo.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    demo.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU cores)")
    demo.add_argument("--apdb", default=None, metavar="URL",
                      help="APDB URL, e.g. postgresql://user@127.0.0.1:5432/db (an existing database; "
                           "default: the SQLite file OUT/apdb.sqlite3)")
    demo.add_argument("--no-broker", action="store_true",
                      help="do not start a schema registry and tansu broker: alerts go only to OUT/alerts")

    # `stages list`, `run PIPELINE.toml`, the other families and the subcommands plugins add
    if families:
        import importlib

        for module in COMMAND_FAMILIES if families is True else families:
            importlib.import_module(module).add_commands(sub, common)
    return parser


def _families_for(command: str | None) -> bool | tuple[str, ...]:
    """What ``build_parser(families=...)`` needs to parse ``command``."""
    if command in BUILTIN_COMMANDS:
        return False
    home = tuple(module for module, names in FAMILY_COMMANDS.items() if command in names)
    return home or True


def _keys(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip().upper() for k in text.split(",") if k.strip())
    if not keys or any(len(k) > 8 for k in keys):
        raise UsageError(f"expected comma-separated FITS keywords (at most 8 characters each), got {text!r}")
    return keys


def _fit(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from pathlib import Path

    import numpy as np

    from jointcal_ap.fit import FitOptions, JointFit
    from jointcal_ap.fit.io import read_inputs
    from jointcal_ap.fit.output import head_names, write_fit_outputs
    from jointcal_ap.fit.photometry import PhotometryOptions
    from jointcal_ap.fit.progress import ProgressReporter
    from jointcal_ap.refcat import open_refcat

    try:
        terms = tuple(float(t) for t in args.colour_transform.split(","))
        photometry = PhotometryOptions(model=args.phot_model, flat_degree=args.flat_degree,
                                       visit_degree=args.phot_visit_degree,
                                       colour_term=args.colour_term, ref_colour_terms=terms,
                                       ref_error_floor=args.ref_mag_floor)
        options = FitOptions(model=args.model, degree=args.degree, visit_degree=args.visit_degree,
                             star_params=args.star_params, clip_sigma=args.clip_sigma,
                             ref_error_floor_mas=args.ref_error_floor, fit=args.what, photometry=photometry,
                             ref_mag=args.ref_mag, ref_mag_error=args.ref_mag_error, ref_colour=args.ref_colour)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = Path(args.out)
    if out.exists() and not args.overwrite and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: already exists (pass --overwrite to replace it once the new "
                         f"fit is complete)")
    progress = None if args.no_progress else ProgressReporter(sys.stderr)
    data = read_inputs(args.catalogs, visit_keys=_keys(args.visit_keys), detector_keys=_keys(args.detector_keys))
    try:
        names = head_names(data.visits, args.head_names)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if progress is not None:
        progress("read catalogs", 1, 1, f"{len(data.ccds)} CCDs, {len(data.measurements):,} detections")
    refcat = open_refcat(args.refcat)
    result = JointFit(data, refcat, options).run(progress=progress)
    written = write_fit_outputs(result, out, plots=args.plots, progress=progress, overwrite=args.overwrite,
                                names=names, provenance={
        "options": asdict(options), "catalogs": list(args.catalogs), "refcat": str(args.refcat)})
    if progress is not None:
        progress.close()
    s = result.summary()
    if result.fitted_astrometry:
        print(f"astrometry: chi2/dof = {s['chi2_per_dof']:.3f} ({s['dof']} dof); {s['n_measurements']:,} "
              f"measurements of {s['n_stars']:,} stars ({s['n_reference_stars']:,} reference), "
              f"{s['n_clipped']} clipped")
        print(f"  RMS: internal {s['internal_rms_mas']:.2f} mas, against the refcat {s['reference_rms_mas']:.2f} mas")
    ph = result.photometry
    if ph is not None:
        print(f"photometry: chi2/dof = {ph.chi2_per_dof:.3f} ({ph.dof} dof); {ph.n_measurements:,} measurements "
              f"of {ph.n_stars:,} stars ({ph.n_reference_stars:,} reference), {ph.n_clipped} clipped")
        print(f"  zero points {np.nanmin(ph.visit_zero_point):.3f}..{np.nanmax(ph.visit_zero_point):.3f} mag, "
              f"median error {1000 * np.nanmedian(ph.zero_point_err):.1f} mmag")
    print(f"wrote calibration/, {len(written.heads)} .head files, TAN-SIP headers (max approximation error "
          f"{written.sip_max_error_mas:.3f} mas), model.json and fit_report.json/.txt to {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import os

    from jointcal_ap.demo import run_demo

    summary = run_demo(args.out, workers=args.workers or min(os.cpu_count() or 1, 4),
                       progress=not args.no_progress, apdb=args.apdb, broker=not args.no_broker)
    xm, sv, ft, acc = summary["crossmatch"], summary["survey"], summary["fit"], summary["accuracy"]
    print(f"1. refcats: Hipparcos 2 ({summary['hip2']['rows']:,} stars) and Gaia DR3 bright "
          f"({summary['gaia_bright']['rows']:,} stars) converted into {args.out}/refcats")
    print(f"   Hipparcos moved to J{xm['epoch_tdb']:.4f} (TDB) vs Gaia, {xm['matched_within_1arcsec']:,} matched: "
          f"median {xm['with_propagation_mas']['median']} mas (without the motion: "
          f"{xm['without_propagation_mas']['median']} mas)")
    print(f"2. survey: {sv['exposures']} exposures ({sv['visits']} visits x {sv['detectors']} CCDs, "
          f"{sv['epochs'][0]}-{sv['epochs'][-1]}) of {sv['true_stars']:,} stars around RA {sv['field_radec'][0]}, "
          f"Dec {sv['field_radec'][1]} ({sv['hipparcos_stars']} real Hipparcos stars), rendered to {args.out}/raw "
          f"as a camera writes them ({sv['raw_files']} files, a CCD per extension, with weight maps)")
    pl = summary["pipeline"]
    print(f"3-6. pipeline {pl['file']} ({pl['units']} units on {pl['scheduler']}): detect, joint fit, "
          f"calibrate, inject, template, difference, associate (SSO, APDB, forced photometry), alerts; "
          f"rerun it with: {pl['rerun']}")
    print(f"   joint fit: {ft['measurements']:,} measurements of {ft['stars']:,} stars "
          f"({ft['reference_stars']} reference); astrometry chi2/dof {ft['astrometry_chi2_per_dof']}, "
          f"photometry chi2/dof {ft['photometry_chi2_per_dof']}")
    print(f"   calibrated exposures (nJy, TAN-SIP WCS) in {args.out}/run/units/*/calexp.fits; "
          f"calibration, report, plots and .head files in {args.out}/run/calibration and {args.out}/run/fit")
    print(f"6. against the truth (the WCS and calibration written in the calibrated exposures): "
          f"astrometry {acc['astrometry_rms_vs_truth_mas']:.1f} mas RMS "
          f"(max {acc['astrometry_max_vs_truth_mas']:.1f} mas; the fitted model: "
          f"{acc['astrometry_model_rms_vs_truth_mas']:.1f} mas RMS; stated error of one measurement "
          f"{acc['astrometry_stated_measurement_err_mas']:.1f} mas; 1 pixel = 6000 mas); calibration "
          f"{acc['calibration_rms_vs_truth_mmag']:.1f} mmag RMS (offset {acc['calibration_offset_vs_truth_mmag']:+.1f} "
          f"mmag; stated zero-point error {acc['photometric_zero_point_err_median_mmag']:.1f} mmag); "
          f"{acc['star_flux_n_bright']:,} bright detections calibrated to nJy: median "
          f"{acc['star_flux_vs_true_njy_median_mmag']:+.1f} mmag from their true flux (robust RMS "
          f"{acc['star_flux_vs_true_njy_robust_rms_mmag']:.1f} mmag, stated "
          f"{acc['star_flux_stated_err_median_mmag']:.1f})")
    al = summary["alerts"]
    got = al.get("received")
    print(f"   alerts: {al['sent']:,} sent ({al['sink']}), archived in {al['archive']}"
          + (f"; consumed back from the broker: {got['distinct_dia_sources']:,}" if got else ""))
    print(f"7. report: {summary['report']['html']} ({summary['report']['headline']})")
    print("   time: " + ", ".join(f"{k} {v} s" for k, v in summary["seconds"].items()))
    print(f"summary written to {args.out}/demo_summary.json")
    if got and got["distinct_dia_sources"] < al["sent"]:
        print(f"jointcal-ap: error: {al['sent'] - got['distinct_dia_sources']:,} of the "
              f"{al['sent']:,} alerts the broker acknowledged did not come back to the consumer "
              f"(they are in the archive {al['archive']})", file=sys.stderr)
        return 1
    return 0


def _configure_logging(verbosity: int, *, dask: bool = True) -> None:
    level = logging.WARNING - 10 * min(verbosity, 2) if verbosity else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # JAX logs its accelerator probing at INFO; that is noise for our users.
    logging.getLogger("jax").setLevel(max(level, logging.WARNING))
    if verbosity >= 2:  # -vv: everything, Dask's scheduler and worker chatter included
        return
    # Dask logs every worker start and stop at INFO. Importing distributed sets its loggers'
    # levels from the Dask config, so set both: the loggers (if already imported) and the
    # config (read when it is imported).
    for name in ("distributed", "tornado", "bokeh"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.level, logging.WARNING))
    if dask and "distributed.config" not in sys.modules:
        try:
            import dask.config
        except ImportError:  # pragma: no cover - dask is a dependency
            return
        dask.config.set({"logging.distributed": "warning"})


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failed on the data, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(families=_families_for(_command_of(argv)))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    # the fit never starts Dask: do not import it (a third of a second) to quiet its loggers
    _configure_logging(args.verbose, dask=args.command != "fit")
    handlers = {
        ("demo", None): _demo,
        ("fit", None): _fit,
    }
    handler = getattr(args, "handler", None)  # stage and plugin commands handle their errors
    if handler is not None:
        return handler(args)
    key = (args.command, None)
    if key not in handlers:  # no command, or a command group without its subcommand
        group = parser._subparsers._group_actions[0].choices.get(args.command)  # type: ignore[union-attr]
        (group or parser).print_help(sys.stderr)
        return 2

    try:
        return handlers[key](args)
    except UsageError as exc:
        print(f"jointcal-ap: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # imported here: loading them costs the commands that never fail most of a second
        from jointcal_ap.errors import AssociationError, FitError
        from jointcal_ap.refcat.catalog import RefcatError
        from jointcal_ap.refcat.config import ConfigError
        from jointcal_ap.refcat.convert import ConversionError
        from jointcal_ap.refcat.readers import InputError
        from jointcal_ap.stages.errors import PluginError

        if isinstance(exc, ConfigError):
            print(f"jointcal-ap: config error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, (InputError, ConversionError, RefcatError, FileNotFoundError, FitError,
                            AssociationError, PluginError)):
            print(f"jointcal-ap: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
