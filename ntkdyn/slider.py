"""The slider page of the two-feature system: trajectories over a grid of s₁, drawn in one HTML file.

Pezeshki et al. 2021, Sec. 3–4 (the blog's slider figure): on U(δ), s = (s₁, s₂), gradient descent
from z = 0 under cross-entropy, ż = η[S²Uᵀσ(−Uz) − λz], and under Spectral Decoupling,
ż = ηS²[Uᵀσ(−Uz) − λz]. As s₁ grows, CE's z₂ ends lower (gradient starvation) while SD's does not.

:func:`slider_data` computes every trajectory at once (one ``vmap`` of :func:`~ntkdyn.dynamics.gd`
over the s₁ grid per loss) and the fixed points (:func:`~ntkdyn.fixed_points.fixed_points_batch`);
:func:`slider_page` turns them into one self-contained HTML page (inline SVG and JavaScript, the
data embedded as JSON, nothing fetched) whose slider only selects among the precomputed
trajectories; :func:`slider_record` is the page's summary for ``results.json``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Float

__all__ = ["SliderData", "slider_data", "slider_page", "slider_record"]

#: Significant digits of the drawn curves in the page (the end points and fixed points are exact).
CURVE_DIGITS = 6


class SliderData(NamedTuple):
    """Trajectories of the two-feature system over a grid of s₁ (plain numpy arrays).

    Attributes:
        s1: (K,) the grid of s₁, increasing.
        t: (T,) sample times (η × steps).
        ce: (K, T, 2) z(t) under cross-entropy with weight decay ``lam_ce``.
        sd: (K, T, 2) z(t) under Spectral Decoupling with logit penalty ``lam_sd``.
        ce_fixed: (K, 2) the CE fixed points z*.
        sd_fixed: (K, 2) the SD fixed points z*.
        s2: the weak feature's singular value.
        delta: the coupling δ of U(δ).
        lam_ce: CE weight decay λ.
        lam_sd: SD logit penalty λ.
        eta: the GD step η.
    """

    s1: Float[np.ndarray, " K"]
    t: Float[np.ndarray, " T"]
    ce: Float[np.ndarray, "K T 2"]
    sd: Float[np.ndarray, "K T 2"]
    ce_fixed: Float[np.ndarray, "K 2"]
    sd_fixed: Float[np.ndarray, "K 2"]
    s2: float
    delta: float
    lam_ce: float
    lam_sd: float
    eta: float


def slider_data(
    s1: Sequence[float] | Float[np.ndarray, " K"],
    *,
    s2: float,
    delta: float,
    lam_ce: float,
    lam_sd: float,
    eta: float,
    num_steps: int,
    save_every: int,
) -> SliderData:
    """GD trajectories from z = 0 and fixed points under CE and SD for every s₁ of a grid.

    z_{k+1} = z_k + η·field(z_k) on U(δ), s = (s₁, s₂), one vmapped :func:`~ntkdyn.dynamics.gd` per
    loss (Pezeshki et al. 2021, Sec. 3–4). Follows the default float dtype: enable
    ``jax_enable_x64`` for the float64 the theory is checked in.

    Args:
        s1: (K,) increasing values of s₁ > 0, K ≥ 2.
        s2: s₂ > 0.
        delta: coupling, |δ| < 1.
        lam_ce: CE weight decay λ > 0.
        lam_sd: SD logit penalty λ > 0.
        eta: GD step η > 0.
        num_steps: GD steps K ≥ 1.
        save_every: sampling interval; must divide ``num_steps``.

    Returns:
        :class:`SliderData`.

    Raises:
        ValueError: naming ``s1`` (not an increasing grid of positive values), ``s2``, ``delta``,
            ``lam_ce``, ``lam_sd`` or ``eta`` (GD unstable at this step) for a bad value.
        SolverError: if Newton fails for a fixed point.
    """
    import jax
    import jax.numpy as jnp

    from ntkdyn.dynamics import ce_field, gd, sd_field
    from ntkdyn.fixed_points import fixed_points_batch
    from ntkdyn.systems import FeatureSystem, rotation_system

    grid = np.asarray(s1, dtype=float)
    if grid.ndim != 1 or grid.size < 2 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ValueError(f"s1: need a 1-D grid of >= 2 finite values > 0, got {grid!r}")
    if np.any(np.diff(grid) <= 0):
        raise ValueError(f"s1: the grid must increase, got {grid!r}")
    if not (np.isfinite(s2) and s2 > 0):
        raise ValueError(f"s2: must be a finite number > 0, got {s2}")
    for name, value in (("lam_ce", lam_ce), ("lam_sd", lam_sd)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name}: must be a finite number > 0, got {value}")

    def batch(lam: float) -> FeatureSystem:
        base = rotation_system([1.0, 1.0], delta, lam)  # validates delta and lam
        s = jnp.stack([jnp.asarray(grid), jnp.full(grid.shape, s2)], axis=1).astype(base.s.dtype)
        K = grid.size
        return FeatureSystem(jnp.broadcast_to(base.U, (K, 2, 2)), s, jnp.full((K,), base.lam))

    ce_batch, sd_batch = batch(lam_ce), batch(lam_sd)
    z0 = jnp.zeros(2, ce_batch.s.dtype)
    settings = dict(eta=eta, num_steps=num_steps, save_every=save_every, throw=False)
    ce = jax.vmap(lambda sy: gd(ce_field, sy, z0, **settings))(ce_batch)
    sd = jax.vmap(lambda sy: gd(sd_field, sy, z0, **settings))(sd_batch)
    for traj in (ce, sd):
        bad = grid[~np.asarray(traj.success)]
        if bad.size:  # GD diverges or oscillates: the step is too large for these systems
            raise ValueError(f"eta: GD is unstable at eta={eta} for s1={bad[0]:g}; reduce it")
    ce_fixed, _ = fixed_points_batch(ce_field, ce_batch)
    sd_fixed, _ = fixed_points_batch(sd_field, sd_batch)
    return SliderData(
        s1=grid,
        t=np.asarray(ce.t[0], dtype=float),
        ce=np.asarray(ce.z, dtype=float),
        sd=np.asarray(sd.z, dtype=float),
        ce_fixed=np.asarray(ce_fixed, dtype=float),
        sd_fixed=np.asarray(sd_fixed, dtype=float),
        s2=float(s2),
        delta=float(delta),
        lam_ce=float(lam_ce),
        lam_sd=float(lam_sd),
        eta=float(eta),
    )


def slider_record(data: SliderData) -> dict[str, Any]:
    """The page's summary for ``results.json``: where z₂ ends at the two ends of the slider.

    Returns:
        ``s1`` (the first and last s₁), ``z2_end_ce``, ``z2_end_sd`` (z₂ at the last GD step there),
        ``z2_fixed_ce``, ``z2_fixed_sd`` (the fixed points' z₂ there), ``num_s1`` (the grid's size)
        and ``steps`` (the last time, in GD steps).
    """
    ends = [0, len(data.s1) - 1]
    return {
        "s1": [float(data.s1[i]) for i in ends],
        "z2_end_ce": [float(data.ce[i, -1, 1]) for i in ends],
        "z2_end_sd": [float(data.sd[i, -1, 1]) for i in ends],
        "z2_fixed_ce": [float(data.ce_fixed[i, 1]) for i in ends],
        "z2_fixed_sd": [float(data.sd_fixed[i, 1]) for i in ends],
        "num_s1": len(data.s1),
        "steps": round(float(data.t[-1]) / data.eta),
    }


def _rounded(a: np.ndarray) -> Any:
    """Nested lists of ``a`` to :data:`CURVE_DIGITS` significant digits (the drawn curves only)."""
    return np.vectorize(lambda v: float(f"{v:.{CURVE_DIGITS}g}"), otypes=[float])(a).tolist()


def _payload(data: SliderData) -> str:
    """The page's data as compact JSON, safe inside a ``<script>`` element."""
    payload = {
        "s1": data.s1.tolist(),
        "s2": data.s2,
        "delta": data.delta,
        "lam_ce": data.lam_ce,
        "lam_sd": data.lam_sd,
        "eta": data.eta,
        "t": _rounded(data.t),
        "ce": _rounded(data.ce),
        "sd": _rounded(data.sd),
        # Exact (full-precision) numbers: what the page reports and marks.
        "ce_end": data.ce[:, -1].tolist(),
        "sd_end": data.sd[:, -1].tolist(),
        "ce_fixed": data.ce_fixed.tolist(),
        "sd_fixed": data.sd_fixed.tolist(),
    }
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/")


def slider_page(data: SliderData, *, title: str = "Gradient starvation: the s₁ slider") -> str:
    """One self-contained HTML page: a slider over s₁ redrawing z₁(t), z₂(t) and z₂ against z₁.

    Three inline-SVG panels (CE's z(t), SD's z(t), both paths in the (z₁, z₂) plane with the fixed
    points marked) and a table of the end points and fixed points. The trajectories are embedded as
    JSON in ``<script type="application/json" id="slider-data">``; the script only picks the
    precomputed trajectory of the chosen s₁, so the page needs no network and no library. The
    elements ``#z2-end-ce`` and ``#z2-end-sd`` carry the exact z₂ end point in ``data-value``.

    Args:
        data: what :func:`slider_data` returned.
        title: the page's title and heading.

    Returns:
        The HTML text.
    """
    d = data
    caption = (
        f"U(δ = {d.delta:g}), s₂ = {d.s2:g}, gradient descent from z = 0 with η = {d.eta:g} for "
        f"{round(float(d.t[-1]) / d.eta)} steps; CE with weight decay λ = {d.lam_ce:g}, SD with "
        f"logit penalty λ = {d.lam_sd:g} (Pezeshki et al. 2021, Sec. 3–4). Move the slider: under "
        "CE a stronger feature 1 (larger s₁) leaves feature 2 less learned (gradient starvation); "
        "under SD z₂ ends at the same value for every s₁. Dotted lines and crosses: fixed points z*."
    )
    return (
        _PAGE.replace("%TITLE%", html.escape(title))
        .replace("%CAPTION%", html.escape(caption))
        .replace("%MAX%", str(len(d.s1) - 1))
        .replace("%S1%", f"{d.s1[0]:g}")
        .replace("%DATA%", _payload(d))
    )


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       background: #fff; max-width: 1140px; margin: 1rem auto; padding: 0 1rem; }
h1 { font-size: 1.3rem; font-weight: 600; }
p.caption { max-width: 60rem; line-height: 1.4; }
.controls { display: flex; align-items: center; gap: 1rem; margin: 0.8rem 0; }
.controls input { width: min(28rem, 70vw); }
.controls label { font-size: 1.1rem; min-width: 6.5rem; }
.panels { display: flex; flex-wrap: wrap; gap: 0.6rem; }
svg { background: #F9F9F9; border: 1px solid #ddd; }
svg text { font-size: 11px; fill: #333; }
svg .title { font-size: 12px; font-weight: 600; }
svg .axis { stroke: #555; stroke-width: 1; }
svg .grid { stroke: #e3e3e3; stroke-width: 1; }
table.readout { border-collapse: collapse; margin-top: 0.8rem; font-variant-numeric: tabular-nums; }
table.readout th, table.readout td { padding: 0.2rem 0.8rem; text-align: right;
                                      border-bottom: 1px solid #ddd; }
</style>
</head>
<body>
<h1>%TITLE%</h1>
<p class="caption">%CAPTION%</p>
<div class="controls">
<label for="s1">s₁ = <output id="s1-value" for="s1">%S1%</output></label>
<input type="range" id="s1" min="0" max="%MAX%" step="1" value="0">
</div>
<div class="panels">
<svg id="panel-ce" role="img" aria-label="CE: z1(t) and z2(t)"></svg>
<svg id="panel-sd" role="img" aria-label="SD: z1(t) and z2(t)"></svg>
<svg id="panel-phase" role="img" aria-label="z2 against z1 under CE and SD"></svg>
</div>
<table class="readout">
<tr><th></th><th>z₁ at the end</th><th>z₂ at the end</th><th>z₁*</th><th>z₂*</th></tr>
<tr><th>CE</th><td><output id="z1-end-ce"></output></td><td><output id="z2-end-ce"></output></td>
<td><output id="z1-fixed-ce"></output></td><td><output id="z2-fixed-ce"></output></td></tr>
<tr><th>SD</th><td><output id="z1-end-sd"></output></td><td><output id="z2-end-sd"></output></td>
<td><output id="z1-fixed-sd"></output></td><td><output id="z2-fixed-sd"></output></td></tr>
</table>
<script type="application/json" id="slider-data">%DATA%</script>
<script>
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("slider-data").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  var W = 360, H = 290, M = { l: 50, r: 14, t: 26, b: 42 };
  var BLUE = "#3B75AF", ORANGE = "#EF8636", GREEN = "#529D3E", RED = "#C53932";

  function el(name, attrs, parent) {
    var e = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function text(parent, x, y, s, attrs) {
    var e = el("text", Object.assign({ x: x, y: y }, attrs || {}), parent);
    e.textContent = s;
    return e;
  }
  function ticks(lo, hi, n) {
    var raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw))), r = raw / mag;
    var step = (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag, out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) {
      out.push(Math.abs(v) < 1e-12 * step ? 0 : v);
    }
    return out;
  }
  function range(values, pad) {
    var lo = values.reduce(function (a, b) { return Math.min(a, b); }, Infinity);
    var hi = values.reduce(function (a, b) { return Math.max(a, b); }, -Infinity), p = (hi - lo) * pad;
    return [lo - p, hi + p];
  }

  function panel(id, xr, yr, xlabel, ylabel, title) {
    var svg = document.getElementById(id);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    var x = function (v) { return M.l + (v - xr[0]) / (xr[1] - xr[0]) * (W - M.l - M.r); };
    var y = function (v) { return H - M.b - (v - yr[0]) / (yr[1] - yr[0]) * (H - M.t - M.b); };
    ticks(xr[0], xr[1], 5).forEach(function (v) {
      el("line", { x1: x(v), x2: x(v), y1: M.t, y2: H - M.b, "class": "grid" }, svg);
      text(svg, x(v), H - M.b + 14, +v.toPrecision(6), { "text-anchor": "middle" });
    });
    ticks(yr[0], yr[1], 5).forEach(function (v) {
      el("line", { x1: M.l, x2: W - M.r, y1: y(v), y2: y(v), "class": "grid" }, svg);
      text(svg, M.l - 5, y(v) + 4, +v.toPrecision(6), { "text-anchor": "end" });
    });
    el("line", { x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b, "class": "axis" }, svg);
    el("line", { x1: M.l, x2: M.l, y1: M.t, y2: H - M.b, "class": "axis" }, svg);
    text(svg, (M.l + W - M.r) / 2, H - 8, xlabel, { "text-anchor": "middle" });
    text(svg, 13, (M.t + H - M.b) / 2, ylabel,
         { "text-anchor": "middle", transform: "rotate(-90 13 " + (M.t + H - M.b) / 2 + ")" });
    text(svg, M.l, 16, title, { "class": "title" });
    var layer = el("g", {}, svg);
    return { svg: svg, x: x, y: y, layer: layer };
  }
  function path(p, xs, ys, attrs) {
    var d = xs.map(function (v, k) { return (k ? "L" : "M") + p.x(v).toFixed(2) + "," + p.y(ys[k]).toFixed(2); });
    return el("path", Object.assign({ d: d.join(""), fill: "none" }, attrs), p.layer);
  }
  function hline(p, v, color) {
    el("line", { x1: M.l, x2: W - M.r, y1: p.y(v), y2: p.y(v), stroke: color,
                 "stroke-width": 1, "stroke-dasharray": "1 3" }, p.layer);
  }
  function cross(p, z, color, id) {
    var cx = p.x(z[0]), cy = p.y(z[1]), r = 5;
    var g = el("g", { id: id, "data-z1": String(z[0]), "data-z2": String(z[1]) }, p.layer);
    el("path", { d: "M" + (cx - r) + "," + (cy - r) + "L" + (cx + r) + "," + (cy + r) +
                    "M" + (cx - r) + "," + (cy + r) + "L" + (cx + r) + "," + (cy - r),
                 stroke: color, "stroke-width": 2 }, g);
  }
  function dot(p, cx, cy, color, id, z) {
    var attrs = { cx: p.x(cx), cy: p.y(cy), r: 4, fill: color, stroke: "#fff" };
    if (id) { attrs.id = id; attrs["data-z1"] = String(z[0]); attrs["data-z2"] = String(z[1]); }
    return el("circle", attrs, p.layer);
  }
  function column(rows, j) { return rows.map(function (z) { return z[j]; }); }

  var t = D.t, T = [t[0], t[t.length - 1]];
  var all1 = [0], all2 = [0];
  [D.ce, D.sd].forEach(function (runs) {
    runs.forEach(function (rows) { rows.forEach(function (z) { all1.push(z[0]); all2.push(z[1]); }); });
  });
  D.ce_fixed.concat(D.sd_fixed).forEach(function (z) { all1.push(z[0]); all2.push(z[1]); });
  var zr = range(all1.concat(all2), 0.05), z1r = range(all1, 0.05), z2r = range(all2, 0.05);
  var time = "t (η × steps)";
  var pce = panel("panel-ce", T, zr, time, "z", "CE: z₁(t) solid, z₂(t) dashed");
  var psd = panel("panel-sd", T, zr, time, "z", "SD: z₁(t) solid, z₂(t) dashed");
  var pph = panel("panel-phase", z1r, z2r, "z₁", "z₂", "z₂ against z₁: CE (blue), SD (green)");

  function timePanel(p, rows, end, fixed, tag) {
    path(p, t, column(rows, 0), { stroke: BLUE, "stroke-width": 2 });
    path(p, t, column(rows, 1), { stroke: ORANGE, "stroke-width": 2, "stroke-dasharray": "6 4" });
    hline(p, fixed[0], BLUE);
    hline(p, fixed[1], ORANGE);
    dot(p, T[1], end[0], BLUE, "z1-end-marker-" + tag, end);
    dot(p, T[1], end[1], ORANGE, "z2-end-marker-" + tag, end);
  }
  function show(id, v) {
    var o = document.getElementById(id);
    o.textContent = v.toFixed(4);
    o.setAttribute("data-value", String(v));
  }
  function update(i) {
    [pce, psd, pph].forEach(function (p) { p.layer.textContent = ""; });
    timePanel(pce, D.ce[i], D.ce_end[i], D.ce_fixed[i], "ce");
    timePanel(psd, D.sd[i], D.sd_end[i], D.sd_fixed[i], "sd");
    path(pph, column(D.ce[i], 0), column(D.ce[i], 1), { stroke: BLUE, "stroke-width": 2 });
    path(pph, column(D.sd[i], 0), column(D.sd[i], 1), { stroke: GREEN, "stroke-width": 2 });
    dot(pph, D.ce_end[i][0], D.ce_end[i][1], BLUE, "ce-end", D.ce_end[i]);
    dot(pph, D.sd_end[i][0], D.sd_end[i][1], GREEN, "sd-end", D.sd_end[i]);
    cross(pph, D.ce_fixed[i], RED, "ce-fixed");
    cross(pph, D.sd_fixed[i], "#333", "sd-fixed");
    document.getElementById("s1-value").textContent = (+D.s1[i].toPrecision(6)).toString();
    ["ce", "sd"].forEach(function (loss) {
      show("z1-end-" + loss, D[loss + "_end"][i][0]);
      show("z2-end-" + loss, D[loss + "_end"][i][1]);
      show("z1-fixed-" + loss, D[loss + "_fixed"][i][0]);
      show("z2-fixed-" + loss, D[loss + "_fixed"][i][1]);
    });
    document.body.setAttribute("data-s1-index", String(i));
  }
  var input = document.getElementById("s1");
  input.addEventListener("input", function () { update(+input.value); });
  update(+input.value);
})();
</script>
</body>
</html>
"""
