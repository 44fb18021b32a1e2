"""The runnable examples in the diffim and fitted-PSF modules' docstrings."""

import doctest
import importlib

import pytest

MODULES = ["jointcal_ap.diffim.fields", "jointcal_ap.diffim.convolve", "jointcal_ap.diffim.basis",
           "jointcal_ap.diffim.decorrelation", "jointcal_ap.diffim.sim", "jointcal_ap.psf.grid",
           "jointcal_ap.psf.pca"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_cli_help_has_numbered_examples(capsys):
    from jointcal_ap.cli import main

    assert main(["diff", "--help"]) == 0
    out = capsys.readouterr().out
    assert "1. Alard-Lupton" in out and "exit codes" in out
