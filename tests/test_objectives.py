"""Objectives against their defining formulas, the reference Group DRO rule and the theory's λ."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn import objectives as ob
from ntkdyn.dynamics import ce_field, sd_field


def _data(key, n=12):
    k1, k2 = jax.random.split(key)
    f = 2.0 * jax.random.normal(k1, (n,))
    y = (jax.random.uniform(k2, (n,)) < 0.5).astype(jnp.float64)
    return f, y


def _softplus(x):
    return np.logaddexp(0.0, x)


def test_erm_is_mean_logistic_loss_plus_l2(key):
    f, y = _data(key)
    nll = np.mean(_softplus(-(2 * np.asarray(y) - 1) * np.asarray(f)))
    value, (state, m) = ob.ERM().loss(f, y)
    np.testing.assert_allclose(value, nll, rtol=1e-12)
    assert state == () and set(m) == {"nll"}
    params = {"w": jnp.arange(3.0), "b": jnp.ones(2)}
    value, _ = ob.ERM(l2=0.5).loss(f, y, params=params)
    np.testing.assert_allclose(value, nll + 0.5 * (5.0 + 2.0), rtol=1e-12)
    with pytest.raises(ValueError, match="params"):
        ob.ERM(l2=0.5).loss(f, y)


def test_sd_value_and_the_authors_annealing(key):
    f, y = _data(key)
    nll = np.mean(_softplus(-(2 * np.asarray(y) - 1) * np.asarray(f)))
    pen = np.mean(np.asarray(f) ** 2)
    value, (_, m) = ob.SpectralDecoupling(coef=0.3).loss(f, y)
    np.testing.assert_allclose(value, nll + 0.3 * pen, rtol=1e-12)
    np.testing.assert_allclose(m["penalty"], pen, rtol=1e-12)
    sd = ob.SpectralDecoupling.annealed(0.3, at=5)
    np.testing.assert_allclose(sd.loss(f, y, step=4)[0], nll + 0.3 * pen, rtol=1e-12)
    np.testing.assert_allclose(sd.loss(f, y, step=5)[0], 0.3 * (nll + pen), rtol=1e-12)


def test_class_conditional_sd(key):
    f, y = _data(key)
    fn, yn = np.asarray(f), np.asarray(y)
    nll = np.mean(_softplus(-(2 * yn - 1) * fn))
    want = nll + 0.2 * np.mean((fn[yn == 0] - 0.44) ** 2) + 0.1 * np.mean((fn[yn == 1] - 2.5) ** 2)
    got, _ = ob.ClassConditionalSD(coef=(0.2, 0.1), target=(0.44, 2.5)).loss(f, y)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    only0 = ob.ClassConditionalSD().loss(f[yn == 0], y[yn == 0])[0]  # a class absent adds 0
    want0 = np.mean(_softplus(fn[yn == 0])) + 0.1 * np.mean((fn[yn == 0] - 0.44) ** 2)
    np.testing.assert_allclose(only0, want0, rtol=1e-12)


def _risk(f, y):
    return np.mean(_softplus(-(2 * y - 1) * f))


def test_irm_against_finite_difference_penalty(key):
    (f1, y1), (f2, y2) = _data(key, 10), _data(jax.random.fold_in(key, 1), 8)
    pens = []
    for f, y in ((f1, y1), (f2, y2)):
        f, y = np.asarray(f), np.asarray(y)
        h = 1e-6
        grad = (_risk((1 + h) * f, y) - _risk((1 - h) * f, y)) / (2 * h)
        pens.append(grad**2)
    risks = [_risk(np.asarray(f1), np.asarray(y1)), _risk(np.asarray(f2), np.asarray(y2))]
    obj = ob.IRMv1(penalty_weight=ob.switch(1.0, 50.0, at=3))
    for step, w in ((0, 1.0), (3, 50.0)):
        want = (np.mean(risks) + w * np.mean(pens)) / max(w, 1.0)
        got, (_, m) = obj.loss((f1, f2), (y1, y2), step=step)
        np.testing.assert_allclose(got, want, rtol=1e-7)
        np.testing.assert_allclose(m["penalty"], np.mean(pens), rtol=1e-6)


def test_vrex(key):
    (f1, y1), (f2, y2) = _data(key, 10), _data(jax.random.fold_in(key, 1), 8)
    r1, r2 = _risk(np.asarray(f1), np.asarray(y1)), _risk(np.asarray(f2), np.asarray(y2))
    params = {"w": jnp.full(4, 0.5)}
    obj = ob.VREx(penalty_weight=ob.switch(1.0, 1e4, at=2), l2=1e-3)
    for step, b in ((1, 1.0), (2, 1e4)):
        want = (r1 + r2 + 1e-3 * 1.0 + b * (r1 - r2) ** 2) / max(b, 1.0)
        got, _ = obj.loss((f1, f2), (y1, y2), step=step, params=params)
        np.testing.assert_allclose(got, want, rtol=1e-12)


def _reference_group_dro(q, per, groups, n_groups, step_size, adj, group_counts):
    """Direct transcription of kohpangwei/group_DRO loss.py (LossComputer), numpy."""
    group_map = (groups == np.arange(n_groups)[:, None]).astype(np.float64)
    group_count = group_map.sum(1)
    group_denom = group_count + (group_count == 0)
    group_loss = (group_map @ per) / group_denom
    adjusted_loss = group_loss  # the same array: += below changes group_loss too
    if np.all(adj > 0):
        adjusted_loss += adj / np.sqrt(group_counts)
    q = q * np.exp(step_size * adjusted_loss)
    q = q / q.sum()
    return group_loss @ q, q


@pytest.mark.parametrize("adjustment", [0.0, 2.0])
def test_group_dro_matches_the_reference_with_a_missing_group(key, adjustment):
    counts = (100, 40, 30, 3)
    obj = ob.GroupDRO(num_groups=4, step_size=0.05, adjustment=adjustment, group_counts=counts)
    state = obj.init(jnp.float64)
    q_ref = np.full(4, 0.25)
    rng = np.random.default_rng(0)
    for step in range(5):
        q_prev = np.asarray(state.q)
        f, y = _data(jax.random.fold_in(key, step), 16)
        groups = rng.integers(0, 3, 16)  # group 3 never in the batch
        value, (state, m) = obj.loss(f, y, step=step, state=state, groups=jnp.asarray(groups))
        per = _softplus(-(2 * np.asarray(y) - 1) * np.asarray(f))
        adj = np.full(4, adjustment)
        want, q_ref = _reference_group_dro(q_ref, per, groups, 4, 0.05, adj, np.asarray(counts))
        np.testing.assert_allclose(state.q, q_ref, rtol=1e-12)
        np.testing.assert_allclose(value, want, rtol=1e-12)
        # The absent group's unnormalised factor: 1 with C = 0, exp(η·C/√n_g) with C > 0.
        ratio = (state.q[3] / state.q[0]) / (q_prev[3] / q_prev[0])
        np.testing.assert_allclose(
            ratio * np.exp(0.05 * m["group_loss"][0]),
            np.exp(0.05 * adjustment / np.sqrt(3)),
            rtol=1e-10,
        )


def test_group_dro_gradient_holds_q_constant(key):
    f, y = _data(key, 8)
    groups = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])
    obj = ob.GroupDRO(num_groups=4, step_size=0.1)

    def loss(f):
        value, (state, _) = obj.loss(f, y, state=obj.init(f.dtype), groups=groups)
        return value, state.q

    g, q = jax.grad(loss, has_aux=True)(f)
    per_grad = jax.grad(lambda f: jnp.sum(ob._nll(f, y, reduction="none")))(f)
    np.testing.assert_allclose(g, per_grad * q[groups] / 2.0, rtol=1e-12)


def test_theory_lam_matches_the_sum_form_gradient(key):
    """n·∇(mean-form loss) = ∇(sum-form loss with the returned λ), for SD and for weight decay."""
    n, p = 9, 4
    kx, ky, kw = jax.random.split(key, 3)
    X = jax.random.normal(kx, (n, p))
    y = (jax.random.uniform(ky, (n,)) < 0.5).astype(jnp.float64)
    w = jax.random.normal(kw, (p,))
    ys = 2 * y - 1

    def sum_ce(w, lam_theta, lam_f):
        f = X @ w
        return jnp.sum(jax.nn.softplus(-ys * f)) + lam_theta / 2 * w @ w + lam_f / 2 * f @ f

    field, lam = ob.theory_lam(ob.SpectralDecoupling(coef=0.03), num_examples=n)
    assert field is sd_field and lam == pytest.approx(0.06)
    mean_grad = jax.grad(lambda w: ob.SpectralDecoupling(coef=0.03).loss(X @ w, y)[0])(w)
    np.testing.assert_allclose(n * mean_grad, jax.grad(sum_ce)(w, 0.0, lam), rtol=1e-10)

    wd = 2e-3
    field, lam = ob.theory_lam(ob.ERM(), num_examples=n, weight_decay=wd)
    assert field is ce_field and lam == pytest.approx(n * wd)
    mean_grad = jax.grad(lambda w: ob.ERM().loss(X @ w, y)[0])(w) + wd * w  # coupled decay
    np.testing.assert_allclose(n * mean_grad, jax.grad(sum_ce)(w, lam, 0.0), rtol=1e-10)


def test_objectives_vmap_over_a_traced_coefficient(key):
    f, y = _data(key)

    @jax.jit
    def sweep(coefs):
        return jax.vmap(lambda c: ob.SpectralDecoupling.annealed(c, at=2).loss(f, y, step=3)[0])(
            coefs
        )

    coefs = jnp.array([0.1, 0.2])
    want = [ob.SpectralDecoupling.annealed(float(c), at=2).loss(f, y, step=3)[0] for c in coefs]
    np.testing.assert_allclose(sweep(coefs), want, rtol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="coef"):
        ob.SpectralDecoupling(coef=-1.0)
    with pytest.raises(ValueError, match="coef"):
        ob.SpectralDecoupling(coef="big")
    with pytest.raises(ValueError, match="penalty_weight"):
        ob.IRMv1(penalty_weight=float("nan"))
    with pytest.raises(ValueError, match="group_counts"):
        ob.GroupDRO(adjustment=1.0)
    with pytest.raises(ValueError, match="group_counts"):
        ob.GroupDRO(num_groups=4, group_counts=(1, 2, 3))
    with pytest.raises(ValueError, match="step_size"):
        ob.GroupDRO(step_size=0.0)
    with pytest.raises(ValueError, match="at"):
        ob.switch(1.0, 2.0, at=-1)
    f, y = jnp.zeros(4), jnp.zeros(4)
    with pytest.raises(ValueError, match="groups"):
        ob.GroupDRO().loss(f, y)
    with pytest.raises(ValueError, match="tuple"):
        ob.IRMv1().loss(f, y)
    with pytest.raises(ValueError, match="logits, y01"):
        ob.ERM().loss(jnp.zeros((4, 1)), y)
    with pytest.raises(ValueError, match="objective"):
        ob.theory_lam(ob.IRMv1(), num_examples=4)
    with pytest.raises(ValueError, match="num_examples"):
        ob.theory_lam(ob.ERM(), num_examples=0)


def test_group_dro_by_hand_with_an_absent_group():
    obj = ob.GroupDRO(num_groups=3, step_size=0.5)
    f = jnp.array([1.0, -2.0, 0.5, 3.0])
    y = jnp.array([1.0, 0.0, 1.0, 0.0])
    groups = jnp.array([0, 0, 1, 1])  # group 2 absent
    per = _softplus(-(2 * np.asarray(y) - 1) * np.asarray(f))
    gl = np.array([per[:2].mean(), per[2:].mean(), 0.0])
    robust, (state, _) = obj.loss(f, y, state=obj.init(jnp.float64), groups=groups)
    q = np.exp(0.5 * gl) / 3
    q /= q.sum()
    np.testing.assert_allclose(state.q, q, rtol=1e-12)
    np.testing.assert_allclose(robust, np.sum(q * gl), rtol=1e-12)


def _irm_pen(f, y):
    """(∂R(w·f)/∂w at w = 1)² of the mean logistic loss, by hand."""
    return np.mean((1 / (1 + np.exp(-f)) - y) * f) ** 2


def test_sd_plus_irm_is_the_sum_of_its_parts(key):
    """A composed objective: [ℓ̄ + c·mean f² + l2·Σw² + λ·mean_e P_e] / max(λ, 1), each term once."""
    k1, k2 = jax.random.split(key)
    f1, y1 = _data(k1, 7)
    f2, y2 = _data(k2, 5)
    params = {"w": jnp.asarray([1.0, -0.5]), "b": jnp.asarray(1.0)}  # Σw² = 2.25
    obj = ob.SpectralDecoupling(coef=0.3, l2=0.01) + ob.IRMPenalty(4.0)
    assert isinstance(obj, ob.Composite)
    value, (_, m) = obj.loss((f1, f2), (y1, y2), params=params)
    f, y = (np.concatenate([np.asarray(a), np.asarray(b)]) for a, b in ((f1, f2), (y1, y2)))
    nll = np.mean(_softplus(-(2 * y - 1) * f))
    pen = 0.5 * (
        _irm_pen(np.asarray(f1), np.asarray(y1)) + _irm_pen(np.asarray(f2), np.asarray(y2))
    )
    want = (nll + 0.3 * np.mean(f**2) + 0.01 * 2.25 + 4.0 * pen) / 4.0
    np.testing.assert_allclose(value, want, rtol=1e-10)
    assert set(m) == {"nll", "penalty_sd", "penalty_irm"}
    np.testing.assert_allclose(m["penalty_irm"], pen, rtol=1e-10)
    # and the parts, added up, are the value
    sd_only, _ = ob.SpectralDecoupling(coef=0.3, l2=0.01).loss((f1, f2), (y1, y2), params=params)
    np.testing.assert_allclose(4.0 * value, sd_only + 4.0 * pen, rtol=1e-10)
    # objective + objective adds the right one's penalties to the left one's base
    both = ob.SpectralDecoupling(coef=0.3, l2=0.01) + ob.IRMv1(penalty_weight=4.0)
    assert both.penalties[-2:] == (ob.L2(0.0), ob.IRMPenalty(4.0))
    np.testing.assert_allclose(both.loss((f1, f2), (y1, y2), params=params)[0], value, rtol=1e-12)


def test_named_objectives_are_compositions(key):
    """ERM, SD, IRMv1 and V-REx are the composites of their docstrings, to the last bit."""
    k1, k2 = jax.random.split(key)
    f1, y1 = _data(k1, 6)
    f2, y2 = _data(k2, 6)
    params = {"w": jnp.arange(3.0)}
    named = [
        (ob.ERM(l2=0.1), ob.Logistic() + ob.L2(0.1)),
        (
            ob.SpectralDecoupling(coef=0.2, l2=0.1),
            ob.Logistic() + ob.LogitPenalty(0.2) + ob.L2(0.1),
        ),
        (
            ob.IRMv1(penalty_weight=3.0, l2=0.1),
            ob.Composite(ob.Logistic(over="environments"), (ob.L2(0.1), ob.IRMPenalty(3.0))),
        ),
        (
            ob.VREx(penalty_weight=3.0, l2=0.1),
            ob.Composite(ob.Logistic(over="environments_sum"), (ob.L2(0.1), ob.VRExPenalty(3.0))),
        ),
    ]
    for a, b in named:
        va, (_, ma) = a.loss((f1, f2), (y1, y2), params=params, step=3)
        vb, (_, mb) = b.loss((f1, f2), (y1, y2), params=params, step=3)
        assert float(va) == float(vb) and set(ma) == set(mb), a
    # a robust base takes penalties too: Group DRO + l2
    groups = jnp.asarray([0, 1, 2, 3] * 3)
    f, y = jnp.concatenate([f1, f2]), jnp.concatenate([y1, y2])
    dro = ob.GroupDRO(num_groups=4)
    v0, (s0, _) = dro.loss(f, y, groups=groups)
    v1, (s1, _) = (dro + ob.L2(0.1)).loss(f, y, groups=groups, params=params)
    np.testing.assert_allclose(v1, v0 + 0.1 * 5.0, rtol=1e-12)
    np.testing.assert_array_equal(s0.q, s1.q)
    with pytest.raises(ValueError, match=r"penalties\[0\]"):
        ob.Composite(ob.Logistic(), (ob.ERM(),))


def test_theory_lam_reads_composed_objectives():
    n = 10
    field, lam = ob.theory_lam(ob.Logistic() + ob.L2(1e-3), num_examples=n)
    assert field is ce_field and lam == pytest.approx(n * 2e-3)  # l2·Σθ² is decay wd = 2·l2
    field, lam = ob.theory_lam(ob.ERM(l2=1e-3), num_examples=n, weight_decay=1e-3)
    assert field is ce_field and lam == pytest.approx(n * 3e-3)
    field, lam = ob.theory_lam(ob.ERM() + ob.LogitPenalty(0.02), num_examples=n)
    assert field is sd_field and lam == pytest.approx(0.04)
    for bad in (
        ob.SpectralDecoupling(coef=0.1) + ob.IRMPenalty(2.0),
        ob.SpectralDecoupling(coef=0.1, l2=1e-3),
        ob.SpectralDecoupling.annealed(0.1, 5),
        ob.GroupDRO() + ob.L2(0.1),
    ):
        with pytest.raises(ValueError, match="objective|weight_decay"):
            ob.theory_lam(bad, num_examples=n)
