"""The DenseStructure protocol, and the import rules of the tangent package and of the library."""

import ast
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tangent_models import F64, inputs, mlp

from ntkdyn.models.mlp import DenseApply
from ntkdyn.tangent import DenseStructure, NTKMethod, empirical_ntk

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class TwoLayerTanh:
    """A user's own dense network: tanh hidden layer, output layer without bias."""

    activation = staticmethod(jnp.tanh)

    def layers(self, params):
        return [(params["W1"], params["b1"]), (params["W2"], None)]

    def __call__(self, params, x):
        return jnp.tanh(x @ params["W1"] + params["b1"]) @ params["W2"]


class NoLayers:
    def __call__(self, params, x):
        return x @ params


class Unhashable(TwoLayerTanh):
    __hash__ = None  # e.g. a mutable dataclass with eq=True


def _params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "W1": jax.random.normal(k1, (3, 6)),
        "b1": jax.random.normal(k2, (6,)),
        "W2": jax.random.normal(k3, (6, 1)),
    }


def test_dense_apply_implements_the_protocol():
    assert isinstance(DenseApply(), DenseStructure)
    apply_fn, _ = mlp(jax.random.PRNGKey(0))
    assert isinstance(apply_fn, DenseStructure)
    assert not isinstance(NoLayers(), DenseStructure)


def test_user_class_satisfying_the_protocol_gets_the_structured_path(key):
    x1, x2 = inputs()
    params = _params(key)
    f = TwoLayerTanh()
    assert isinstance(f, DenseStructure)
    ref = empirical_ntk(f, params, x1, x2)
    structured = empirical_ntk(f, params, x1, x2, method=NTKMethod.STRUCTURED)
    np.testing.assert_allclose(structured, ref, **F64)
    # The structured path is the one that ran: it reads the layers, so lying layers change Θ.

    @dataclasses.dataclass(frozen=True)
    class Lying(TwoLayerTanh):
        def layers(self, params):
            return [(2.0 * params["W1"], params["b1"]), (params["W2"], None)]

    lying = empirical_ntk(Lying(), params, x1, x2, method=NTKMethod.STRUCTURED)
    assert not np.allclose(lying, ref)


def test_structured_path_refuses_other_models_by_name(key):
    x1, _ = inputs()
    with pytest.raises(ValueError, match="method: NTKMethod.STRUCTURED needs .*DenseStructure"):
        empirical_ntk(NoLayers(), jnp.ones(3), x1, method=NTKMethod.STRUCTURED)
    with pytest.raises(ValueError, match="apply_fn: .*hashable"):
        empirical_ntk(Unhashable(), _params(key), x1, method=NTKMethod.STRUCTURED)


def _imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _modules(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [node.module or ""]


def test_tangent_imports_no_models_data_train_or_experiments():
    forbidden = ("ntkdyn.models", "ntkdyn.data", "ntkdyn.train", "ntkdyn.experiments")
    files = sorted((REPO / "ntkdyn" / "tangent").glob("*.py"))
    assert {f.name for f in files} >= {"features.py", "ntk.py", "spectrum.py", "responses.py"}
    bad = [
        f"{f.name}: {m}"
        for f in files
        for node in _imports(f)
        for m in _modules(node)
        if m.startswith(forbidden) or m == "experiments" or m.startswith("experiments.")
    ]
    assert not bad, f"ntkdyn/tangent imports what it must not: {bad}"


def test_no_private_name_crosses_a_module():
    """Only ntkdyn._checks, the private module of shared checks, may be imported from."""
    bad = []
    for root in ("ntkdyn", "experiments"):
        for f in sorted((REPO / root).rglob("*.py")):
            for node in _imports(f):
                if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                    "ntkdyn"
                ):
                    continue
                private = [
                    a.name
                    for a in node.names
                    if a.name.startswith("_") and not a.name.endswith("__")  # dunders are public
                ]
                if private:
                    bad.append(f"{f.relative_to(REPO)}: from {node.module} import {private}")
    assert not bad, f"private names imported across modules: {bad}"
