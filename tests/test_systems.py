import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn import (
    feature_system,
    random_system,
    rotation_matrix,
    rotation_system,
    system_from_matrix,
)


def test_rotation_matrix_is_orthogonal_and_identity_at_zero():
    U = rotation_matrix(0.5)
    np.testing.assert_allclose(U.T @ U, np.eye(2), atol=1e-14)
    np.testing.assert_allclose(rotation_matrix(0.0), np.eye(2))
    np.testing.assert_allclose(U[1, 0], 0.5)


def test_rotation_matrix_vmaps_over_delta():
    Us = jax.vmap(rotation_matrix)(jnp.linspace(-0.9, 0.9, 5))
    assert Us.shape == (5, 2, 2)
    np.testing.assert_allclose(
        jnp.einsum("bij,bik->bjk", Us, Us), np.broadcast_to(np.eye(2), (5, 2, 2)), atol=1e-13
    )


def test_system_from_matrix_reconstructs_and_truncates(key):
    A = jax.random.normal(key, (6, 3)) @ jax.random.normal(jax.random.PRNGKey(1), (3, 8))  # rank 3
    system, V = system_from_matrix(A, 0.1, return_V=True)
    assert system.d == 3
    np.testing.assert_allclose(system.U @ jnp.diag(system.s) @ V.T, A, atol=1e-10)
    assert np.all(np.diff(np.asarray(system.s)) <= 0)


def test_random_system_orthonormal(key):
    sys_ = random_system(key, 7, [3.0, 2.0, 1.0], 0.01)
    np.testing.assert_allclose(sys_.U.T @ sys_.U, np.eye(3), atol=1e-12)


@pytest.mark.parametrize(
    "U, s, lam, match",
    [
        (np.ones((2, 2)), [1.0, 2.0], 0.1, "U: columns are not orthonormal"),
        (np.eye(2), [1.0, 2.0, 3.0], 0.1, "s: has 3 singular values but U has d=2"),
        (np.eye(2), [1.0, 0.0], 0.1, "s: singular values must be > 0"),
        (np.eye(2), [1.0, 2.0], -0.1, "lam: must be >= 0"),
        (np.eye(2), [1.0, np.nan], 0.1, "s: contains non-finite"),
        (np.eye(3)[:, :2].T, [1.0, 2.0, 3.0], 0.1, "U: has n=2 rows < d=3"),
        (np.ones(3), [1.0], 0.1, "U: expected a 2-D"),
    ],
)
def test_feature_system_rejects_bad_input(U, s, lam, match):
    with pytest.raises(ValueError, match=match):
        feature_system(U, s, lam)


def test_rotation_system_rejects_bad_delta():
    with pytest.raises(ValueError, match="delta"):
        rotation_system([2.0, 2.0], 1.0, 0.01)
