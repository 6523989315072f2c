"""SeedLayout (the seeds' layout of a full-batch run) and the CPU policy of ntkdyn.train.layout."""

import jax
import pytest

from ntkdyn.train.layout import SeedAxis, SeedLayout, cpu_restart_layout


def test_seed_layout_parse_and_errors():
    one = jax.local_device_count() == 1
    assert SeedLayout.parse("vmap") == SeedLayout.local()
    assert SeedLayout.parse("vmap:2@1") == SeedLayout(SeedAxis.VMAP, 2, None)
    assert SeedLayout.parse("MAP@1") == SeedLayout(SeedAxis.MAP)
    assert (SeedLayout.parse("vmap@all").devices is None) == one
    assert SeedLayout.parse("vmap:3@1").describe() == {"axis": "vmap", "chunk": 3, "devices": 1}
    for spec, what in (
        ("pmap", "unknown seed axis"),
        ("vmap:0", "chunk"),
        ("map:2", "only vmap"),
        ("vmap@7", "devices"),
        ("vmap:x", "chunk"),
    ):
        with pytest.raises(ValueError, match=f"--seed-layout: {what}"):
            SeedLayout.parse(spec)
    with pytest.raises(ValueError, match="chunk"):
        SeedLayout(SeedAxis.VMAP, 0)
    with pytest.raises(ValueError, match="devices"):
        SeedLayout(devices=[])
    with pytest.raises(ValueError, match="axis"):
        SeedLayout("vmap")
    assert cpu_restart_layout("cpu").chunk == 2 and cpu_restart_layout("gpu").chunk is None
