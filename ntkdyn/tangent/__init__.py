"""Tangent features, the empirical NTK, the feature spectrum and feature responses of real networks.

For a network f(x; θ) at θ₀ the tangent features are Φ = ∇_θ f(X; θ₀) (n × p, one row per
example, columns in the order of ``jax.flatten_util.ravel_pytree(params)``), the empirical neural
tangent kernel is Θ = ΦΦᵀ, and the label-signed features have the thin SVD YΦ = U S Vᵀ whose
(U, s) form the feature system of the theory core (Pezeshki et al. 2021, Sec. 2 and 3). The
feature responses of a trained network are z(t) = Uᵀ Y (f(X; θ_t) − f(X; θ₀)) with U from θ₀
(Sec. 4, Fig. 5).

One idea per module:

* :mod:`~ntkdyn.tangent.features`: Φ of any pure ``apply_fn(params, x)`` (:data:`ApplyFn`);
* :mod:`~ntkdyn.tangent.ntk`: Θ by three methods (:class:`NTKMethod`);
* :mod:`~ntkdyn.tangent.structure`: :class:`DenseStructure`, what the layer-wise NTK needs to know
  about a dense network (a protocol: this package imports no model class);
* :mod:`~ntkdyn.tangent.spectrum`: (U, s) of YΦ by a solver (:class:`Dense`, :class:`BlockKrylov`)
  and its :class:`ntkdyn.FeatureSystem`;
* :mod:`~ntkdyn.tangent.responses`: z(t) of any parameter path.
"""

from ntkdyn.tangent.features import ApplyFn, tangent_features
from ntkdyn.tangent.ntk import NTKMethod, empirical_ntk
from ntkdyn.tangent.responses import (
    FeatureResponseTracker,
    feature_response_trajectory,
    feature_responses,
    responses_from_outputs,
)
from ntkdyn.tangent.spectrum import (
    BlockKrylov,
    Dense,
    FeatureSpectrum,
    feature_spectrum,
    signed_labels,
)
from ntkdyn.tangent.structure import DenseStructure

__all__ = [
    "ApplyFn",
    "DenseStructure",
    "NTKMethod",
    "tangent_features",
    "empirical_ntk",
    "FeatureSpectrum",
    "Dense",
    "BlockKrylov",
    "feature_spectrum",
    "feature_responses",
    "responses_from_outputs",
    "feature_response_trajectory",
    "FeatureResponseTracker",
    "signed_labels",
]
