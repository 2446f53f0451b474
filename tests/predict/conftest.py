"""Tiny exports with fresh random weights for the predictor tests (tests/support/exports.py makes them)."""

import pytest
from support.exports import dit_export as make_dit
from support.exports import unet_export as make_unet


@pytest.fixture(scope="module")
def unet_export(tmp_path_factory):
    return make_unet(tmp_path_factory.mktemp("x"))


@pytest.fixture(scope="module")
def dit_export(tmp_path_factory):
    return make_dit(tmp_path_factory.mktemp("d"))
