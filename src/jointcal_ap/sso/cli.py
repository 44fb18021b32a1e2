"""The ``jointcal-ap sso`` commands: ``mock``, ``predict``, ``associate``, ``daily`` and ``link``.

:func:`add_commands` only builds the argparse parsers (it runs for every ``jointcal-ap``
invocation); the handlers import the science modules. Every output is a Parquet file
written atomically, with the command's effective options in its schema metadata (key
``jointcal_ap``, JSON), so that any output can be reproduced.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from jointcal_ap.cliutil import UsageError, command

__all__ = ["add_commands"]

EXAMPLES = textwrap.dedent("""\
    examples:
      1. A mock population of 100,000 objects (90 % main belt, 5 % NEOs, 5 % TNOs):
         jointcal-ap sso mock --n 100000 --seed 1 --out orbits.parquet
      2. Where they are for Rubin at MJD 60600.2 (TAI):
         jointcal-ap sso predict orbits.parquet --mjd 60600.2 --site rubin --out pred.parquet
      3. Only those within 2 degrees of (RA, Dec) = (10, -5), from a site given as
         longitude,latitude,height (degrees, degrees, metres):
         jointcal-ap sso predict orbits.parquet --mjd 60600.2 --site=-70.7,-30.2,2650 \\
             --cone 10,-5,2 --out pred.parquet
      4. Associate a detector's DiaSources with the predictions:
         jointcal-ap sso associate diasources.parquet pred.parquet --out-ssource ss.parquet \\
             --out-unassociated left.parquet
      5. Link unassociated detections of two weeks into new orbits:
         jointcal-ap sso link left_2weeks.parquet --out links.parquet
      6. Daily products: SSObject rows (nObs, arc, H and G12 per band) of the objects seen
         in one night, from their whole history in the APDB:
         jointcal-ap sso daily sqlite:///apdb.sqlite3 --since 60600.9 --until 60601.9

    exit codes: 0 ok, 1 bad data (a bad orbit, a missing column; the message names it),
    2 usage.
    """)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``jointcal-ap sso {mock,predict,associate,daily,link}``."""
    raw = argparse.RawDescriptionHelpFormatter
    sso = sub.add_parser("sso", help="Solar System objects: mock catalogs, ephemerides, "
                         "association, linking", formatter_class=raw, epilog=EXAMPLES)
    ssub = sso.add_subparsers(dest="sso_command", metavar="SUBCOMMAND")

    mock = ssub.add_parser("mock", help="draw a mock population of orbits (mpc_orbits columns)",
                           parents=[common], formatter_class=raw, epilog=EXAMPLES)
    mock.add_argument("--n", type=int, required=True, help="number of objects")
    mock.add_argument("--seed", type=int, required=True, help="random seed")
    mock.add_argument("--out", required=True, metavar="ORBITS.parquet", help="output file")
    mock.add_argument("--epoch", type=float, default=60600.0, metavar="MJD",
                      help="epoch of the elements, MJD TT (default 60600)")
    mock.add_argument("--mix", default="mba=0.9,neo=0.05,tno=0.05", metavar="KIND=F,...",
                      help="population fractions of mba, neo, tno, comet "
                           "(default mba=0.9,neo=0.05,tno=0.05)")
    mock.set_defaults(handler=_mock)

    pred = ssub.add_parser("predict", help="ephemerides of every object at one time",
                           parents=[common], formatter_class=raw, epilog=EXAMPLES)
    pred.add_argument("orbits", metavar="ORBITS", help="orbit catalog (.parquet or .csv)")
    pred.add_argument("--mjd", type=float, required=True, help="observation time, MJD TAI")
    pred.add_argument("--site", default="rubin",
                      help="rubin, geocenter, or LON,LAT,HEIGHT (deg, deg, m; write "
                           "--site=-70.7,-30.2,2650 when it starts with a minus)")
    pred.add_argument("--cone", metavar="RA,DEC,RADIUS", default=None,
                      help="keep only objects within RADIUS degrees of (RA, DEC)")
    pred.add_argument("--out", required=True, metavar="PRED.parquet", help="output file")
    pred.set_defaults(handler=_predict)

    assoc = ssub.add_parser("associate", help="match DiaSources to predicted objects "
                            "(one-to-one) and write SSSource rows", parents=[common],
                            formatter_class=raw, epilog=EXAMPLES)
    assoc.add_argument("sources", metavar="DIASOURCES.parquet", help="Rubin DiaSource columns")
    assoc.add_argument("predictions", metavar="PRED.parquet", help="output of sso predict")
    assoc.add_argument("--out-ssource", required=True, metavar="SS.parquet",
                       help="the SSSource rows of the matched sources")
    assoc.add_argument("--out-unassociated", default=None, metavar="LEFT.parquet",
                       help="the sources that matched no object")
    assoc.add_argument("--ephemeris-sigma", type=float, default=1.0, metavar="ARCSEC",
                       help="1-sigma ephemeris uncertainty (default 1.0)")
    assoc.add_argument("--max-chi2", type=float, default=25.0, help="largest pair chi2 (default 25)")
    assoc.add_argument("--max-distance", type=float, default=10.0, metavar="ARCSEC",
                       help="largest separation (default 10)")
    assoc.set_defaults(handler=_associate)

    daily = ssub.add_parser("daily", help="SSObject rows (nObs, arc, H, G12) of the objects "
                            "seen in a time range, from the APDB", parents=[common],
                            formatter_class=raw, epilog=EXAMPLES)
    daily.add_argument("apdb", metavar="APDB_URL",
                       help="sqlite:///file.sqlite3 or postgresql://...")
    daily.add_argument("--since", type=float, default=None, metavar="MJD",
                       help="objects with an SSSource observed at or after this MJD TAI "
                            "(default: all)")
    daily.add_argument("--until", type=float, default=None, metavar="MJD",
                       help="... and before this MJD TAI (default: no limit)")
    daily.add_argument("--orbits", default=None, metavar="ORBITS",
                       help="orbit catalog, for the Tisserand parameter (optional)")
    daily.add_argument("--out", default=None, metavar="SSOBJECT.parquet",
                       help="also write the rows to this file")
    daily.set_defaults(handler=_daily)

    lnk = ssub.add_parser("link", help="HelioLinC-style linking of detections into orbits",
                          parents=[common], formatter_class=raw, epilog=EXAMPLES)
    lnk.add_argument("sources", metavar="SOURCES.parquet",
                     help="detections: diaSourceId, ra, dec, midpointMjdTai (raErr, decErr)")
    lnk.add_argument("--out", required=True, metavar="LINKS.parquet", help="output file")
    lnk.add_argument("--site", default="rubin", help="observatory (default rubin)")
    lnk.add_argument("--r-range", default=None, metavar="MIN,MAX,STEP",
                     help="heliocentric distance hypotheses, au (default: 1.6 to 4.0 by "
                          "0.1 and 30 to 50 by 5)")
    lnk.add_argument("--rdot", default="-0.003,-0.0015,0,0.0015,0.003", metavar="V,...",
                     help="radial-rate hypotheses, au/day")
    lnk.add_argument("--cluster-radius", type=float, default=0.0005, metavar="AU",
                     help="clustering radius per au from the observer (default 0.0005)")
    lnk.add_argument("--max-rate", type=float, default=2.0, metavar="DEG_PER_DAY",
                     help="fastest tracklet (default 2.0 deg/day)")
    lnk.add_argument("--min-nights", type=int, default=3, help="nights per linkage (default 3)")
    lnk.add_argument("--max-rms", type=float, default=0.5, metavar="ARCSEC",
                     help="largest RMS of an accepted orbit fit (default 0.5)")
    lnk.set_defaults(handler=_link)


def _write(table: Any, path: str, provenance: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    from jointcal_ap.atomic import atomic_path

    meta = dict(table.schema.metadata or {})
    meta[b"jointcal_ap"] = json.dumps(provenance, default=str).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _floats(text: str, name: str, count: int | None = None) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise UsageError(f"{name} {text!r}: expected comma-separated numbers") from None
    if count is not None and len(values) != count:
        raise UsageError(f"{name} {text!r}: expected {count} numbers")
    return values


def _data_errors() -> tuple[type[BaseException], ...]:
    from jointcal_ap.apdb.errors import ApdbError, ApdbInputError
    from jointcal_ap.schemas import SchemaError
    from jointcal_ap.sso.errors import SsoError

    return (SsoError, SchemaError, ApdbError, ApdbInputError, OSError, ArithmeticError)


def _handler(func: Any) -> Any:
    """:func:`command` with the sso data errors, imported only when a handler runs."""

    def run(args: argparse.Namespace) -> int:
        return command(data_errors=_data_errors())(func)(args)

    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    return run


@_handler
def _mock(args: argparse.Namespace) -> int:
    from jointcal_ap.sso.mock import mock_orbits, parse_mix

    if args.n < 0:
        raise UsageError(f"--n {args.n}: expected a non-negative number")
    try:
        mix = parse_mix(args.mix)
    except ValueError as exc:
        raise UsageError(f"--mix: {exc}") from None
    table = mock_orbits(args.n, seed=args.seed, epoch_mjd=args.epoch, mix=mix)
    _write(table, args.out, {"command": "sso mock", "n": args.n, "seed": args.seed,
                             "epoch_mjd_tt": args.epoch, "mix": mix})
    kinds = table.column("kind").to_pylist()
    counts = {k: kinds.count(k) for k in sorted(set(kinds))}
    print(f"wrote {table.num_rows:,} orbits ({', '.join(f'{k} {v:,}' for k, v in counts.items())}) "
          f"to {args.out}")
    return 0


@_handler
def _predict(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from jointcal_ap.sso.ephemeris import predict
    from jointcal_ap.sso.errors import SiteError
    from jointcal_ap.sso.observer import parse_site
    from jointcal_ap.sso.orbits import read_orbits

    try:
        site = parse_site(args.site)
    except SiteError as exc:
        raise UsageError(str(exc)) from None
    cone = _floats(args.cone, "--cone", 3) if args.cone else None
    orbits = read_orbits(args.orbits)
    start = time.perf_counter()
    eph = predict(orbits, args.mjd, site)
    seconds = time.perf_counter() - start
    table = eph.to_table()
    if cone is not None:
        from jointcal_ap.sso.footprint import in_region
        from jointcal_ap.stages.interfaces import SkyCircle

        try:
            region = SkyCircle(*cone)
        except ValueError as exc:
            raise UsageError(f"--cone: {exc}") from None
        table = table.filter(np.asarray(in_region(eph["ephRa"], eph["ephDec"], region)))
    _write(table, args.out, {"command": "sso predict", "orbits": args.orbits,
                             "mjd_tai": args.mjd, "site": site.__dict__, "cone": cone})
    print(f"predicted {len(orbits):,} objects at MJD {args.mjd} (TAI) from {site.name} in "
          f"{seconds:.2f} s; wrote {table.num_rows:,} rows to {args.out}")
    return 0


@_handler
def _associate(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from jointcal_ap.sso.associate import AssociationOptions, associate_sso

    try:
        options = AssociationOptions(ephemeris_sigma_arcsec=args.ephemeris_sigma,
                                     max_chi2=args.max_chi2,
                                     max_distance_arcsec=args.max_distance)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    sources = pq.read_table(args.sources)
    predictions = pq.read_table(args.predictions)
    result = associate_sso(sources, predictions, options=options)
    provenance = {"command": "sso associate", "sources": args.sources,
                  "predictions": args.predictions, "options": options.__dict__}
    _write(result.ss_sources, args.out_ssource, provenance)
    if args.out_unassociated:
        _write(result.unassociated, args.out_unassociated, provenance)
    print(f"{int(result.matched.sum()):,} of {sources.num_rows:,} sources associated with "
          f"{predictions.num_rows:,} predicted objects; {result.unassociated.num_rows:,} left "
          f"for DiaObject association")
    return 0


@_handler
def _link(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import pyarrow.parquet as pq

    from jointcal_ap.sso.errors import SiteError
    from jointcal_ap.sso.linking import LinkingOptions, link
    from jointcal_ap.sso.observer import parse_site

    grid: dict[str, Any] = {}
    if args.r_range is not None:
        r_min, r_max, r_step = _floats(args.r_range, "--r-range", 3)
        if not 0 < r_min <= r_max or r_step <= 0:
            raise UsageError(f"--r-range {args.r_range}: expected 0 < MIN <= MAX and STEP > 0")
        grid["r_grid"] = tuple(np.round(np.arange(r_min, r_max + r_step / 2, r_step), 6))
    try:
        parse_site(args.site)
        options = LinkingOptions(
            site=args.site, rdot_grid=tuple(_floats(args.rdot, "--rdot")),
            cluster_radius_au=args.cluster_radius, max_rate=args.max_rate,
            min_nights=args.min_nights, max_rms_arcsec=args.max_rms, **grid)
    except (ValueError, SiteError) as exc:
        raise UsageError(str(exc)) from None
    sources = pq.read_table(args.sources)
    start = time.perf_counter()
    result = link(sources, options, progress=not getattr(args, "no_progress", False))
    seconds = time.perf_counter() - start
    options_dict = {k: v for k, v in options.__dict__.items()}
    _write(result.to_table(), args.out, {"command": "sso link", "sources": args.sources,
                                         "options": options_dict})
    print(f"{sources.num_rows:,} detections, {result.n_tracklets_total:,} tracklets, "
          f"{result.n_candidates:,} candidate clusters -> {len(result):,} linkages with orbits "
          f"in {seconds:.1f} s; wrote {args.out}")
    return 0


@_handler
def _daily(args: argparse.Namespace) -> int:
    from jointcal_ap.apdb import open_apdb
    from jointcal_ap.sso.daily import daily_products
    from jointcal_ap.sso.orbits import read_orbits

    if args.since is not None and args.until is not None and args.until <= args.since:
        raise UsageError(f"--until {args.until} must be after --since {args.since}")
    orbits = read_orbits(args.orbits) if args.orbits else None
    with open_apdb(args.apdb) as apdb:
        ids = apdb.ss_objects_observed(args.since, args.until)
        ss_sources, dia_sources = apdb.get_ss_history(ids)
        rows = daily_products(ss_sources, dia_sources, orbits=orbits)
        stored = apdb.store_ss_objects(rows)
    if args.out:
        _write(rows, args.out, {"command": "sso daily", "since": args.since,
                                "until": args.until, "orbits": args.orbits})
    fitted = sum(int(v is not None) for band in "ugrizy" for v in rows.column(f"{band}_H").to_pylist())
    print(f"{len(ids):,} objects observed, {ss_sources.num_rows:,} SSSources in their history; "
          f"stored {stored:,} SSObject rows ({fitted:,} band H fits)"
          + (f"; wrote {args.out}" if args.out else ""))
    return 0
