"""The Python examples of docs/dia.md and docs/metrics.md run."""

import re
import tempfile
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("page", ["dia.md", "metrics.md"])
def test_the_examples_of_the_page_run(page, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))     # the examples' mkdtemp()
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, f"{page}", "exec"), {"__name__": f"docs_{page}"})
    assert capsys.readouterr().out
