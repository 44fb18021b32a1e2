"""Alert serialization benchmark: our encoders against lsst-alert-packet's own serialization.

One command::

    flock /work/bench.lock python benchmarks/bench_alerts.py [--alerts 2000] [--repeats 3] [--no-write]

For each alert shape (history of 2 and of 10 earlier DiaSources and forced sources, 30 % of
the nullable fields null; all records filled from Rubin's schema by
``jointcal_ap.alerts.simulate``) and with or without three real FITS cutouts (30×30 px,
IMAGE + MASK + VARIANCE with WCS, from ``make_cutout``), it times on one core:

* ``AlertSerializer.encode_batch`` (ours, column-wise, Confluent-framed);
* ``AlertSerializer.encode`` (ours, one alert at a time: fastavro ``schemaless_writer`` with
  the parsed schema, framed);
* ``lsst.alert.packet.Schema.serialize`` (Rubin's own, one alert at a time, unframed; its
  schema is fastavro-parsed too, so this is already fastavro's best per-record speed).

Each number is the best of ``--repeats`` runs over ``--alerts`` alerts (alerts per second,
single process). Every encoding is checked byte for byte against fastavro's before timing.
The results go into the ``alerts`` section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cutouts(ids):
    from astropy.wcs import WCS

    from jointcal_ap.alerts.cutouts import make_cutout

    wcs = WCS(naxis=2)
    wcs.wcs.ctype, wcs.wcs.crval = ["RA---TAN", "DEC--TAN"], [150.1, 2.1]
    wcs.wcs.crpix, wcs.wcs.cdelt = [200, 200], [-5.5e-5, 5.5e-5]
    rng = np.random.default_rng(1)
    image = rng.normal(0, 10, (400, 400)).astype(np.float32)
    one = make_cutout(image, np.full(image.shape, 100.0), np.zeros(image.shape, np.int32), wcs,
                      150.1, 2.1)
    return {int(i): {"cutoutDifference": one, "cutoutScience": one, "cutoutTemplate": one}
            for i in ids}, len(one)


def _best(func, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(n_alerts: int, repeats: int) -> tuple[list[dict], int]:
    from lsst.alert.packet.schema import Schema

    from jointcal_ap.alerts.packets import build_alert_batch
    from jointcal_ap.alerts.serialize import AlertSerializer
    from jointcal_ap.alerts.simulate import simulate_unit
    from jointcal_ap.schemas import alert_schema

    lsst = Schema(alert_schema().definition)
    serializer = AlertSerializer(schema_id=1)
    rows, cutout_size = [], 0
    for history in (2, 10):
        unit = simulate_unit(n_alerts, n_history=history, seed=history, null_fraction=0.3)
        for with_cutouts in (False, True):
            cutouts = None
            if with_cutouts:
                cutouts, cutout_size = _cutouts(unit["dia_sources"].column("diaSourceId").to_pylist())
            batch = build_alert_batch(**unit, cutouts=cutouts)
            records = batch.records()
            fast = serializer.encode_batch(batch)
            assert fast == [serializer.encode(r) for r in records], "encodings differ"
            assert lsst.serialize(records[0]) == fast[0][5:]
            ours = _best(lambda b=batch: serializer.encode_batch(b), repeats)
            per_record = _best(lambda r=records: [serializer.encode(a) for a in r], repeats)
            rubin = _best(lambda r=records: [lsst.serialize(a) for a in r], repeats)
            rows.append({"history": history, "cutouts": with_cutouts,
                         "bytes": int(np.mean([len(f) for f in fast])),
                         "ours": n_alerts / ours, "fastavro": n_alerts / per_record,
                         "lsst": n_alerts / rubin})
            print(rows[-1], flush=True)
    return rows, cutout_size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    rows, cutout_size = run(args.alerts, args.repeats)
    load_end = os.getloadavg()
    from _report import machine_line, write_section

    lines = [
        "## Alert serialization (`benchmarks/bench_alerts.py`)",
        "",
        f"Command: `flock /work/bench.lock python benchmarks/bench_alerts.py --alerts "
        f"{args.alerts} --repeats {args.repeats}`; {machine_line()}; load average "
        f"{load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end (2 shared cores).",
        "",
        "Alerts per second on one core (best of the repeats). *ours*: "
        "`AlertSerializer.encode_batch` (column-wise, Confluent-framed); *fastavro*: "
        "`AlertSerializer.encode` (one alert at a time, parsed schema); *lsst*: "
        "`lsst.alert.packet.Schema.serialize` (Rubin's own, one at a time). History: earlier "
        f"DiaSources and as many forced sources per alert; 30 % of nullable fields null; cutouts: "
        f"three FITS cutouts of {cutout_size:,} bytes each. All three give the same bytes "
        "(checked).",
        "",
        "| history | cutouts | bytes/alert | ours | fastavro | lsst | ours / lsst |",
        "|---:|:---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['history']} | {'3' if r['cutouts'] else 'none'} | {r['bytes']:,} | "
                     f"{r['ours']:,.0f} | {r['fastavro']:,.0f} | {r['lsst']:,.0f} | "
                     f"{r['ours'] / r['lsst']:.1f}× |")
    lines += ["", "Goals: ≥ 20,000 alerts/s without cutouts, ≥ 2,000 alerts/s with three."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        print(f"wrote {write_section('alerts', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
