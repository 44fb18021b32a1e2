"""Scoring DiaSources: ``reliability`` and ``reliabilityVersion`` from a real/bogus model.

>>> # doctest: +SKIP
>>> table = score_dia_sources(table, difference, template, model="default")
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["score_dia_sources"]


def score_dia_sources(table: Any, difference: Any, template: Any | None = None, *,
                      model: Any = "default") -> Any:
    """Fill ``reliability`` (P(real), 0–1) and ``reliabilityVersion`` of a DiaSource table.

    Parameters
    ----------
    table : pyarrow.Table
        Rubin's DiaSource columns, as :func:`jointcal_ap.dia.measure_dia_sources` returns
        them (measured on ``difference``).
    difference : DifferenceImage or DiaImage
    template : Template or ImagePlanes, optional
        The template the difference was made with (a feature uses it).
    model : RealBogusModel, "default", path, or "none"
        See :func:`jointcal_ap.realbogus.resolve_model`; "none" returns ``table`` unchanged.

    Returns
    -------
    pyarrow.Table
        The same rows and columns (types from Rubin's schema), the two columns filled.
    """
    import pyarrow as pa

    from jointcal_ap.realbogus.features import compute_features
    from jointcal_ap.realbogus.model import resolve_model

    rb = resolve_model(model)
    if rb is None:
        return table
    score = rb.predict(compute_features(table, difference, template)) if table.num_rows \
        else np.zeros(0, np.float32)
    for name, values in (("reliability", pa.array(score, pa.float32())),
                         ("reliabilityVersion", pa.array([rb.version] * table.num_rows,
                                                         pa.string()))):
        index = table.schema.get_field_index(name)
        values = values.cast(table.schema.field(name).type)
        table = table.set_column(index, table.schema.field(name), values)
    return table
