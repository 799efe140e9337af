r"""Fully connected (dense) CRF with Gaussian edge potentials and its mean-field inference.

Krähenbühl and Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials",
NIPS 2011 (https://arxiv.org/abs/1210.5644). Every pixel ``i`` of an ``H x W`` image is a node with a
label ``x_i`` in ``{0..C-1}``; every pair of pixels is an edge. The Gibbs energy is

.. math::
  E(\mathbf x) = \sum_i \psi_u(x_i) + \sum_{i<j} \mu(x_i, x_j)
    \Big[w^{(1)} \underbrace{\exp\Big(-\frac{|p_i-p_j|^2}{2\theta_\alpha^2}
          - \frac{|I_i-I_j|^2}{2\theta_\beta^2}\Big)}_{\text{appearance (bilateral) kernel } k^{(1)}}
       + w^{(2)} \underbrace{\exp\Big(-\frac{|p_i-p_j|^2}{2\theta_\gamma^2}\Big)}_{\text{smoothness kernel } k^{(2)}}\Big]

with ``p`` the pixel position (row, column, in pixels), ``I`` its RGB colour (0..255), the unary
``psi_u = -log softmax(logits)`` and the label compatibility ``mu`` (Potts: ``mu(l, l') = [l != l']``,
or any ``[C, C]`` matrix, e.g. learned by CRF-as-RNN). Mean-field inference approximates the
posterior by a product ``Q(x) = prod_i Q_i(x_i)`` and iterates (paper Alg. 1)::

  Q_i(l) = softmax(logits)_i(l)                                   # initialisation
  repeat num_iters times:
    m_i^(k)(l') = sum_j k^(k)(f_i, f_j) Q_j(l')                   # message passing = filtering
    p_i(l)      = sum_l' mu(l, l') sum_k w^(k)(l') m_i^(k)(l')     # compatibility transform
    Q_i(l)      = softmax_l( log softmax(logits)_i(l) - p_i(l) )  # add unary, normalise

Kernel normalisation (``normalize``). The paper's message excludes ``j = i`` and is not normalised.
Krähenbühl's released code and Zheng et al.'s CRF-as-RNN normalise each kernel instead: the
message is ``m_i = sum_j k_ij Q_j / sum_j k_ij`` (``j = i`` included), a weighted *average* of the
neighbours' beliefs, so the weights ``w`` do not depend on the image size or the kernel widths.
``normalize=True`` (the default) is that practice; ``normalize=False`` is the paper's formula and
needs the exact ``method="brute_force"``: the permutohedral lattice approximates the Gaussian only up
to a scale that varies over the image (its unnormalised output was 0.34-0.61 of the exact kernel sum
on shapes images, depending on the kernel widths), which normalisation cancels.

Filtering, and its cost per mean-field iteration (``N = H W`` pixels, ``C`` labels):

* Smoothness kernel: a Gaussian of the position only, exactly separable: ``[H, H]`` times the label
  maps times ``[W, W]`` (two dense 1-D Gaussian matrices, no truncation), ``O(N (H + W) C)``;
  exact, equal to the brute force up to float rounding.
* Appearance kernel: a 5-D Gaussian of ``(row / theta_a, col / theta_a, r / theta_b, g / theta_b,
  b / theta_b)``, filtered on the **permutohedral lattice** (Adams, Baek and Davis, "Fast
  High-Dimensional Filtering Using the Permutohedral Lattice", Eurographics 2010), as in the
  paper: *splat* every pixel's values onto the ``d + 1 = 6`` vertices of the lattice simplex that
  contains its feature (barycentric weights), *blur* the lattice with the kernel ``[1/2, 1, 1/2]``
  along each of its ``d + 1`` axes, *slice* (gather back with the same weights). ``O(N d C)`` per
  splat/slice and ``O(N d^2 C)`` per blur, against ``O(N^2 C)`` for the brute force. Static shapes:
  the lattice has at most ``N (d + 1)`` vertices, so every array is sized by that bound; the vertex
  table is a sort of the vertex keys (packed into as few int32 words as the static feature bounds
  allow, usually one or two) and the blur neighbours are found by a vectorised binary search, once
  per image and reused by every iteration: building the lattice costs ``O(N d^2 log N)`` (a sort of
  ``N (d + 1)`` keys, ``N (d + 1)^2`` binary searches). It is an approximation. Measured against the
  exact kernel on 64 x 64 shapes images (``tests/ops/test_crf.py``, ``Q`` close to the ground truth,
  theta_alpha 10 px, theta_beta 13): the normalised message differs from the exact one by 0.0002 on
  average (its spread over the image is ~0.04), at most ~0.2 on a few pixels at colour edges; a
  5-iteration mean field on 43 x 43 shapes images with noisy logits gave the brute force's argmax
  on 99.65 % of the pixels (mean |dQ| 0.0012). Speed on the shared, heavily loaded 2-core CPU
  (``benchmarks/crf.py``; 5 iterations, 6 labels, lattice build included): 64 x 64, 0.11 s against
  0.50 s for the brute force; 128 x 128 (the brute force's 16384^2 kernel is 1 GiB), 0.33 s.
* Brute force (``method="brute_force"``): both kernels as dense ``N x N`` matrices, ``O(N^2 C)``
  time and ``O(N^2)`` memory: the exact reference, for small images (``N`` up to a few thousand).

``image`` is RGB in ``[0, 255]`` (as in the paper and its code: ``theta_beta = 13`` means 13 grey
levels); values are clipped to ``[0, 255]`` (the lattice's key packing relies on that bound). A network
input normalised with ``(x / 255 - mean) / std`` maps back with ``to_rgb255(x, mean, std)``. Positions
are in pixels (``theta_alpha``, ``theta_gamma`` in pixels).

Everything is jit-able and works on one image; ``jax.vmap`` over a batch. Gradients flow to
``logits``, ``w_appearance``, ``w_smoothness`` and ``compatibility`` (CRF-as-RNN learns them); the
lattice (a function of the image only) is treated as a constant.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.ops._checks import check_array, check_positive_int

__all__ = [
    "dense_crf", "mean_field_logits", "potts_compatibility", "to_rgb255",
    "bilateral_features", "spatial_gaussian_filter", "brute_force_gaussian_filter",
    "PermutohedralLattice", "permutohedral_lattice", "permutohedral_filter",
]

METHODS = ("permutohedral", "brute_force")
_MAX_WORD_BITS = 30  # bits per int32 sort word (the fill value 2**31 - 1 stays above every key)


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------


def _check_sigma(v: Any, name: str) -> float:
  if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
    raise TypeError(f"{name} must be a Python number (a static kernel width), got {v!r}.")
  if not v > 0 or not math.isfinite(v):
    raise ValueError(f"{name} must be a finite number > 0, got {v!r}.")
  return float(v)


def potts_compatibility(num_classes: int, dtype=jnp.float32) -> jax.Array:
  """The Potts label compatibility ``mu(l, l') = [l != l']``, ``[C, C]``."""
  num_classes = check_positive_int(num_classes, "num_classes")
  return (1.0 - jnp.eye(num_classes)).astype(dtype)


def to_rgb255(image, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Undoes ``transforms.normalize_image``: ``(x * std + mean) * 255``, for the appearance kernel."""
  image = check_array(image, "image", kind="float")
  mean = jnp.asarray(mean, image.dtype).reshape(-1)
  std = jnp.asarray(std, image.dtype).reshape(-1)
  return (image * std + mean) * 255.0


def bilateral_features(image, *, sigma_alpha: float, sigma_beta: float) -> jax.Array:
  """``[H*W, 5]`` features ``(row / sigma_alpha, col / sigma_alpha, rgb / sigma_beta)``.

  ``image`` ``[H, W, 3]`` in ``[0, 255]`` (clipped to it).
  """
  image = check_array(image, "image", ndim=3, last_dim=3, kind="numeric")
  sigma_alpha = _check_sigma(sigma_alpha, "sigma_alpha")
  sigma_beta = _check_sigma(sigma_beta, "sigma_beta")
  h, w, _ = image.shape
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                            indexing="ij")
  pos = jnp.stack([rows, cols], -1) / sigma_alpha  # (H, W, 2)
  rgb = jnp.clip(image.astype(jnp.float32), 0.0, 255.0) / sigma_beta  # (H, W, 3)
  return jnp.concatenate([pos, rgb], -1).reshape(h * w, 5)


def _gaussian_matrix(n: int, sigma: float) -> jax.Array:
  """``[n, n]`` with ``exp(-(a - b)^2 / (2 sigma^2))``: the exact 1-D kernel, no truncation."""
  idx = np.arange(n, dtype=np.float64)
  return jnp.asarray(np.exp(-((idx[:, None] - idx[None, :]) ** 2) / (2.0 * sigma**2)), jnp.float32)


def spatial_gaussian_filter(values, *, sigma: float) -> jax.Array:
  r"""``out_i = sum_j exp(-|p_i - p_j|^2 / (2 sigma^2)) values_j`` over all pixels ``j`` (``i`` included).

  Exact and separable: the 2-D Gaussian of the position is the product of a row and a column
  Gaussian, so the sum is ``K_rows @ values @ K_cols`` per channel, with the dense ``[H, H]`` and
  ``[W, W]`` 1-D kernels (``O(H W (H + W) C)``; no truncation, so it equals the brute force).

  Args:
    values: ``[H, W, C]``.
    sigma: the kernel width in pixels.
  """
  values = check_array(values, "values", ndim=3, kind="float")
  sigma = _check_sigma(sigma, "sigma")
  h, w, _ = values.shape
  ky = _gaussian_matrix(h, sigma).astype(values.dtype)
  kx = _gaussian_matrix(w, sigma).astype(values.dtype)
  out = jnp.einsum("ab,bwc->awc", ky, values, precision=jax.lax.Precision.HIGHEST)  # (H, W, C)
  return jnp.einsum("vw,hwc->hvc", kx, out, precision=jax.lax.Precision.HIGHEST)  # (H, W, C)


def brute_force_gaussian_filter(features, values) -> jax.Array:
  r"""``out_i = sum_j exp(-|f_i - f_j|^2 / 2) values_j`` with the dense ``[N, N]`` kernel, O(N^2).

  Args:
    features: ``[N, d]``, already divided by the kernel widths.
    values: ``[N, C]``.
  """
  features = check_array(features, "features", ndim=2, kind="float")
  values = check_array(values, "values", ndim=2, kind="float")
  if values.shape[0] != features.shape[0]:
    raise ValueError(f"values must be [N, C] with N = {features.shape[0]} (features' N), got "
                     f"shape {values.shape}.")
  sq = jnp.sum(features**2, -1)
  d2 = sq[:, None] + sq[None, :] - 2.0 * jnp.matmul(features, features.T,
                                                     precision=jax.lax.Precision.HIGHEST)
  kernel = jnp.exp(-0.5 * jnp.maximum(d2, 0.0))  # (N, N)
  return jnp.matmul(kernel, values, precision=jax.lax.Precision.HIGHEST)


# ------------------------------------------------------------------------------------------------
# Permutohedral lattice
# ------------------------------------------------------------------------------------------------


class PermutohedralLattice(NamedTuple):
  """The lattice of one image (built once, used by every filtering of that image).

  ``M = N (d + 1)`` bounds the number of lattice vertices; vertex ids are ``0..U-1`` (``U <= M``
  the actual number), id ``M`` is a dummy vertex that always holds 0.

  Attributes:
    vertex: int32 ``[N, d + 1]``, the id of each of pixel ``i``'s simplex vertices.
    weight: float32 ``[N, d + 1]``, the barycentric weights (non-negative, sum 1 per pixel).
    plus, minus: int32 ``[M + 1, d + 1]``, the neighbour ``v + e_j`` / ``v - e_j`` of vertex ``v``
      along lattice axis ``j`` (``M`` where that vertex does not exist).
    num_vertices: int32 scalar ``U``.
  """
  vertex: jax.Array
  weight: jax.Array
  plus: jax.Array
  minus: jax.Array
  num_vertices: jax.Array


def _elevation(d: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-feature scale and the ``[d + 1, d]`` matrix onto the hyperplane ``sum = 0`` (Adams et al.).

  The scale ``sqrt(2/3) (d + 1) / sqrt((k + 1)(k + 2))`` makes the blur (``[1/2, 1, 1/2]`` along each
  lattice axis) approximate a Gaussian of unit standard deviation in the feature space.
  """
  k = np.arange(d, dtype=np.float64)
  scale = np.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt((k + 1.0) * (k + 2.0))
  elev = np.zeros((d + 1, d))
  for j in range(d + 1):
    elev[j, j:] = 1.0
    if j > 0:
      elev[j, j - 1] = -float(j)
  return scale, elev


def _key_packing(lo: np.ndarray, hi: np.ndarray, d: int) -> list[list[tuple[int, int, int]]]:
  """Packs a lattice key into int32 words from static feature bounds.

  A lattice vertex (``d + 1`` integer coordinates summing to 0) has all coordinates congruent to a
  common remainder ``r`` modulo ``d + 1``; it is stored as ``r`` and ``z_c = (k_c - r) / (d + 1)``
  for its first ``d`` coordinates. Bounds of ``z_c`` follow from the feature bounds (``lo``/``hi``
  per feature, in kernel-width units) through the elevation, with a margin covering the rounding,
  the simplex offsets and the neighbour queries. Returns, per word, ``(coordinate, offset, radix)``
  triples (coordinate ``-1`` is ``r``).
  """
  scale, elev = _elevation(d)
  a = elev * scale[None, :]  # (d + 1, d): elevated = a @ f
  el_lo = np.sum(np.minimum(a * lo[None], a * hi[None]), 1)
  el_hi = np.sum(np.maximum(a * lo[None], a * hi[None]), 1)
  margin = 4 * (d + 1)
  fields = [(-1, 0, d + 1)]
  for c in range(d):
    z_lo = int(np.floor((el_lo[c] - margin) / (d + 1))) - 1
    z_hi = int(np.ceil((el_hi[c] + margin) / (d + 1))) + 1
    fields.append((c, z_lo, z_hi - z_lo + 1))
  words, current, bits = [], [], 0.0
  for field in fields:
    b = math.log2(field[2])
    if b > _MAX_WORD_BITS:
      raise ValueError(f"the permutohedral lattice's key coordinate {field[0]} spans {field[2]} "
                       "values, too many for an int32 word: the kernel widths are too small for "
                       "the image (use larger sigma_alpha / sigma_beta).")
    if current and bits + b > _MAX_WORD_BITS:
      words.append(current)
      current, bits = [], 0.0
    current.append(field)
    bits += b
  words.append(current)
  return words


def _pack(keys: jax.Array, words) -> list[jax.Array]:
  """``keys`` int32 ``[..., d + 1]`` (lattice coordinates) -> list of int32 ``[...]`` sort words."""
  d1 = keys.shape[-1]
  rem = jnp.mod(keys[..., 0], d1)
  out = []
  for word in words:
    acc = jnp.zeros(keys.shape[:-1], jnp.int32)
    for coord, offset, radix in reversed(word):
      field = rem if coord < 0 else (keys[..., coord] - rem) // d1 - offset
      acc = acc * radix + field
    out.append(acc)
  return out


def _lex_less(a: Sequence[jax.Array], b: Sequence[jax.Array]) -> jax.Array:
  less = jnp.zeros(a[0].shape, bool)
  equal = jnp.ones(a[0].shape, bool)
  for x, y in zip(a, b):
    less = less | (equal & (x < y))
    equal = equal & (x == y)
  return less


def _lower_bound(sorted_words: Sequence[jax.Array], queries: Sequence[jax.Array]) -> jax.Array:
  """First position ``p`` with ``sorted[p] >= query`` (lexicographic), vectorised binary search."""
  n = sorted_words[0].shape[0]
  if len(sorted_words) == 1:  # one word: jnp's binary search (~2x faster on CPU than the loop)
    return jnp.searchsorted(sorted_words[0], queries[0], side="left").astype(jnp.int32)
  lo = jnp.zeros(queries[0].shape, jnp.int32)
  hi = jnp.full(queries[0].shape, n, jnp.int32)

  def body(_, carry):
    lo, hi = carry
    mid = (lo + hi) // 2
    probe = [w[jnp.minimum(mid, n - 1)] for w in sorted_words]
    less = _lex_less(probe, queries) & (lo < hi)
    return jnp.where(less, mid + 1, lo), jnp.where(less | (lo >= hi), hi, mid)

  lo, _ = jax.lax.fori_loop(0, int(math.ceil(math.log2(n + 1))) + 1, body, (lo, hi))
  return lo


def permutohedral_lattice(features, *, feature_low: Sequence[float],
                          feature_high: Sequence[float]) -> PermutohedralLattice:
  """Builds the permutohedral lattice of ``features`` ``[N, d]`` (already divided by the widths).

  ``feature_low``/``feature_high`` are static bounds of each feature (``d`` floats each; e.g. 0 and
  ``(H - 1) / sigma_alpha`` for the row): they size the int32 key packing. Features outside them
  give wrong results, so clip first (``bilateral_features`` does).

  Steps (Adams et al. 2010, Sec. 3, and Krähenbühl's implementation): scale and elevate each
  feature onto the hyperplane ``sum = 0`` of ``R^{d+1}``; find the nearest "remainder-0" lattice
  point and the ranking of the residual's coordinates, which give the enclosing simplex, its
  ``d + 1`` vertices and the barycentric weights; sort the ``N (d + 1)`` vertex keys to give the
  distinct vertices ids; find each vertex's neighbours ``v +- (1, .., 1, -d, 1, .., 1)`` by binary
  search in the sorted keys.
  """
  features = check_array(features, "features", ndim=2, kind="float")
  n, d = features.shape
  lo = np.asarray(feature_low, np.float64).reshape(-1)
  hi = np.asarray(feature_high, np.float64).reshape(-1)
  if lo.shape != (d,) or hi.shape != (d,) or np.any(hi < lo):
    raise ValueError(f"feature_low and feature_high must be {d} floats each with low <= high "
                     f"(features have d = {d}), got {feature_low!r} and {feature_high!r}.")
  d1 = d + 1
  m = n * d1
  scale, elev = _elevation(d)
  f = jax.lax.stop_gradient(features).astype(jnp.float32)
  elevated = jnp.matmul(f * jnp.asarray(scale, jnp.float32), jnp.asarray(elev.T, jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)  # (N, d + 1)

  # Nearest remainder-0 point (all coordinates multiples of d + 1), then fix its coordinate sum.
  v = elevated / d1
  up, down = jnp.ceil(v) * d1, jnp.floor(v) * d1
  rem0 = jnp.where(up - elevated < elevated - down, up, down)  # (N, d + 1)
  total = jnp.round(jnp.sum(rem0, -1) / d1).astype(jnp.int32)[:, None]  # (N, 1)
  diff = elevated - rem0
  idx = np.arange(d1)
  later = idx[None, :] > idx[:, None]  # [i, j]: j > i
  bigger = jnp.where(later[None], diff[:, None, :] > diff[:, :, None],
                     diff[:, None, :] >= diff[:, :, None])  # [n, i, j]: j ranks above i
  rank = jnp.sum(bigger & ~np.eye(d1, dtype=bool)[None], -1).astype(jnp.int32)  # (N, d + 1)
  over = rank >= d1 - total  # sum > 0: the coordinates with the smallest residual go down
  under = rank < -total  # sum < 0: the largest go up
  rem0 = jnp.where(total > 0, jnp.where(over, rem0 - d1, rem0),
                   jnp.where(total < 0, jnp.where(under, rem0 + d1, rem0), rem0))
  rank = jnp.where(total > 0, jnp.where(over, rank + total - d1, rank + total),
                   jnp.where(total < 0, jnp.where(under, rank + d1 + total, rank + total), rank))

  # Barycentric weights of the d + 1 simplex vertices.
  residual = (elevated - rem0) / d1  # (N, d + 1)
  onehot_a = jax.nn.one_hot(d - rank, d + 2, dtype=jnp.float32)
  onehot_b = jax.nn.one_hot(d - rank + 1, d + 2, dtype=jnp.float32)
  bary = jnp.einsum("ni,nik->nk", residual, onehot_a - onehot_b,
                    precision=jax.lax.Precision.HIGHEST)  # (N, d + 2)
  weight = bary.at[:, 0].add(1.0 + bary[:, d + 1])[:, :d1]  # (N, d + 1)

  # Vertex r of the simplex: rem0 + canonical simplex offset (r, or r - (d + 1) for high ranks).
  r = np.arange(d1)
  offset = jnp.where(rank[:, None, :] > (d - r)[None, :, None], (r - d1)[None, :, None],
                     r[None, :, None])  # (N, r, coord)
  keys = rem0.astype(jnp.int32)[:, None, :] + offset.astype(jnp.int32)  # (N, d + 1, d + 1)
  words = _key_packing(lo, hi, d)
  slot_words = [w.reshape(m) for w in _pack(keys, words)]  # each (M,)

  # Distinct vertices: sort the N (d + 1) keys; a new id starts where the key changes.
  sorted_all = jax.lax.sort(tuple(slot_words) + (jnp.arange(m, dtype=jnp.int32),),
                            num_keys=len(words))
  sorted_words, order = list(sorted_all[:-1]), sorted_all[-1]
  changed = jnp.zeros((m - 1,), bool)
  for w in sorted_words:
    changed = changed | (w[1:] != w[:-1])
  gid = jnp.cumsum(jnp.concatenate([jnp.zeros((1,), jnp.int32), changed.astype(jnp.int32)]))
  vertex = jnp.zeros((m,), jnp.int32).at[order].set(gid)  # (M,) slot -> vertex id

  # Neighbours along each lattice axis j: key + (1, .., 1) - (d + 1) e_j, found by binary search.
  step = np.ones((d1, d1), np.int32) - d1 * np.eye(d1, dtype=np.int32)  # row j: +e_j
  query = keys.reshape(m, 1, d1) + step[None]  # (M, d + 1 axes, d + 1 coords)
  qwords = _pack(query, words)  # each (M, d + 1)
  pos = _lower_bound(sorted_words, qwords)  # (M, d + 1)
  posc = jnp.minimum(pos, m - 1)
  found = (pos < m)
  for w, q in zip(sorted_words, qwords):
    found = found & (w[posc] == q)
  neighbour = jnp.where(found, gid[posc], m)  # (M, d + 1)
  plus = jnp.full((m + 1, d1), m, jnp.int32).at[vertex].set(neighbour)  # duplicates agree
  axes = jnp.broadcast_to(jnp.arange(d1, dtype=jnp.int32)[None], (m + 1, d1))
  source = jnp.broadcast_to(jnp.arange(m + 1, dtype=jnp.int32)[:, None], (m + 1, d1))
  minus = jnp.full((m + 1, d1), m, jnp.int32).at[plus, axes].set(source)  # v - e_j: inverse
  minus = minus.at[m].set(m)
  return PermutohedralLattice(vertex=vertex.reshape(n, d1), weight=weight, plus=plus,
                              minus=minus, num_vertices=gid[-1] + 1)


def permutohedral_filter(lattice: PermutohedralLattice, values) -> jax.Array:
  r"""Splat-blur-slice: ``out_i ~ c * sum_j exp(-|f_i - f_j|^2 / 2) values_j`` (``j = i`` included).

  The scale ``c`` is not exactly constant (see the module docstring), so use the output normalised
  (divide by the filtered ones), as ``dense_crf`` does. It is linear in ``values``; it is only
  approximately symmetric (each axis's blur is symmetric, but on a sparse lattice the blurs along
  different axes do not commute exactly).

  Args:
    lattice: from ``permutohedral_lattice``.
    values: ``[N, C]``.
  """
  values = check_array(values, "values", ndim=2, kind="float")
  n, d1 = lattice.vertex.shape
  if values.shape[0] != n:
    raise ValueError(f"values must be [N, C] with N = {n} (the lattice's pixels), got shape "
                     f"{values.shape}.")
  m = n * d1
  c = values.shape[1]
  splat = (lattice.weight[:, :, None] * values[:, None, :]).reshape(m, c)  # (M, C)
  grid = jnp.zeros((m + 1, c), values.dtype).at[lattice.vertex.reshape(m)].add(splat)
  for j in range(d1):
    grid = grid + 0.5 * (grid[lattice.plus[:, j]] + grid[lattice.minus[:, j]])
    grid = grid.at[m].set(0.0)  # the dummy vertex stays empty
  alpha = 1.0 / (1.0 + 2.0 ** (-(d1 - 1)))  # Adams et al.'s output scale
  return alpha * jnp.einsum("nr,nrc->nc", lattice.weight, grid[lattice.vertex])  # (N, C)


def _appearance_lattice(image, sigma_alpha, sigma_beta) -> tuple[jax.Array, PermutohedralLattice]:
  h, w, _ = image.shape
  feats = bilateral_features(image, sigma_alpha=sigma_alpha, sigma_beta=sigma_beta)
  lo = [0.0] * 5
  hi = [(h - 1) / sigma_alpha, (w - 1) / sigma_alpha] + [255.0 / sigma_beta] * 3
  return feats, permutohedral_lattice(feats, feature_low=lo, feature_high=hi)


# ------------------------------------------------------------------------------------------------
# Mean field
# ------------------------------------------------------------------------------------------------


def _kernel_weight(w, name: str, c: int, dtype) -> jax.Array:
  if isinstance(w, (int, float, np.integer, np.floating)) and not isinstance(w, bool):
    return jnp.full((c,), w, dtype)
  w = check_array(w, name, ndim=(0, 1), kind="float")
  if w.ndim == 1 and w.shape[0] != c:
    raise ValueError(f"{name} must be a scalar or [C] = [{c}] (one weight per label), got shape "
                     f"{w.shape}.")
  return jnp.broadcast_to(w.astype(dtype), (c,))


def mean_field_logits(logits, image, *, num_iters: int = 5, sigma_alpha: float = 80.0,
                      sigma_beta: float = 13.0, sigma_gamma: float = 3.0,
                      w_appearance: Any = 10.0, w_smoothness: Any = 3.0, compatibility=None,
                      normalize: bool = True, method: str = "permutohedral") -> jax.Array:
  """``dense_crf`` before its final softmax: ``log softmax(logits) - pairwise`` ``[H, W, C]``.

  ``softmax`` of the result is ``dense_crf``'s ``Q``; its argmax is the MAP labelling estimate.
  CRF-as-RNN trains on these logits (their softmax cross-entropy is ``-log Q``). Same arguments as
  ``dense_crf``; ``w_appearance``, ``w_smoothness`` and ``compatibility`` may be traced (learned).
  """
  logits = check_array(logits, "logits", ndim=3, kind="float")
  image = check_array(image, "image", ndim=3, last_dim=3, kind="numeric")
  h, w, c = logits.shape
  if image.shape[:2] != (h, w):
    raise ValueError(f"image must be [H, W, 3] with (H, W) = {(h, w)} (logits' size), got shape "
                     f"{image.shape}.")
  num_iters = check_positive_int(num_iters, "num_iters", allow_zero=True)
  sigma_alpha = _check_sigma(sigma_alpha, "sigma_alpha")
  sigma_beta = _check_sigma(sigma_beta, "sigma_beta")
  sigma_gamma = _check_sigma(sigma_gamma, "sigma_gamma")
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  if not normalize and method != "brute_force":
    raise ValueError("normalize=False (the paper's unnormalised kernels) needs "
                     "method='brute_force': the permutohedral lattice approximates the Gaussian "
                     "only up to a spatially varying scale, which normalisation cancels.")
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  w_app = _kernel_weight(w_appearance, "w_appearance", c, dtype)
  w_smooth = _kernel_weight(w_smoothness, "w_smoothness", c, dtype)
  if compatibility is None:
    compat = potts_compatibility(c, dtype)
  else:
    compat = check_array(compatibility, "compatibility", shape=(c, c), kind="float").astype(dtype)

  unary = jax.nn.log_softmax(logits.astype(dtype), axis=-1).reshape(h * w, c)  # -psi_u, (N, C)
  n = h * w
  if method == "brute_force":
    feats = bilateral_features(image, sigma_alpha=sigma_alpha, sigma_beta=sigma_beta)
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                              indexing="ij")
    pos = jnp.stack([rows, cols], -1).reshape(n, 2) / sigma_gamma

    def appearance(q):
      return brute_force_gaussian_filter(feats, q)

    def smoothness(q):
      return brute_force_gaussian_filter(pos, q)
  else:
    _, lattice = _appearance_lattice(image, sigma_alpha, sigma_beta)

    def appearance(q):
      return permutohedral_filter(lattice, q)

    def smoothness(q):
      return spatial_gaussian_filter(q.reshape(h, w, -1), sigma=sigma_gamma).reshape(n, -1)

  if normalize:
    ones = jnp.ones((n, 1), dtype)
    norm_app = 1.0 / jnp.maximum(appearance(ones), 1e-20)  # (N, 1)
    norm_smooth = 1.0 / jnp.maximum(smoothness(ones), 1e-20)

    def message(q):
      return (w_app * norm_app * appearance(q) + w_smooth * norm_smooth * smoothness(q))
  else:

    def message(q):  # j != i: remove the self term k(f_i, f_i) Q_i = Q_i
      return w_app * (appearance(q) - q) + w_smooth * (smoothness(q) - q)

  def iteration(out_logits, _):
    q = jax.nn.softmax(out_logits, axis=-1)  # (N, C)
    pairwise = jnp.matmul(message(q), compat.T, precision=jax.lax.Precision.HIGHEST)  # (N, C)
    return unary - pairwise, None

  out, _ = jax.lax.scan(iteration, unary, None, length=num_iters)
  return out.reshape(h, w, c)


def dense_crf(logits, image, *, num_iters: int = 5, sigma_alpha: float = 80.0,
              sigma_beta: float = 13.0, sigma_gamma: float = 3.0, w_appearance: Any = 10.0,
              w_smoothness: Any = 3.0, compatibility=None, normalize: bool = True,
              method: str = "permutohedral") -> jax.Array:
  r"""Mean-field inference in the fully connected CRF (module docstring): ``Q`` ``[H, W, C]``.

  Args:
    logits: float ``[H, W, C]`` unary scores (the unary potential is ``-log softmax(logits)``).
    image: ``[H, W, 3]`` RGB in ``[0, 255]`` (clipped; use ``to_rgb255`` on a normalised image).
    num_iters: mean-field iterations ``T >= 0`` (0 returns ``softmax(logits)``).
    sigma_alpha, sigma_beta: appearance kernel widths: position (pixels) and colour (0..255 units).
    sigma_gamma: smoothness kernel width (pixels).
    w_appearance, w_smoothness: kernel weights, scalars or ``[C]`` (per label ``l'`` of the
      message, as in CRF-as-RNN); may be traced.
    compatibility: ``[C, C]`` ``mu(l, l')`` (default Potts ``1 - I``); may be traced.
    normalize: normalised kernels (densecrf's and CRF-as-RNN's practice, default) or the paper's
      unnormalised ones without the ``j = i`` term (``method="brute_force"`` only).
    method: ``"permutohedral"`` (lattice for the appearance kernel, exact separable smoothness
      kernel; ``O(N)`` per iteration) or ``"brute_force"`` (dense ``N x N`` kernels, exact, ``O(N^2)``).

  Returns:
    float32 ``[H, W, C]`` marginals ``Q``, each pixel's row summing to 1. ``jax.vmap`` for a batch.

  Raises:
    ValueError/TypeError: bad shapes, dtypes or hyper-parameters (the message names the argument).

  Defaults are the values of Krähenbühl's released examples for ~500 px images (``theta_alpha = 80,
  theta_beta = 13, theta_gamma = 3, w = 10, 3``); for small images use a smaller ``sigma_alpha``.
  """
  out = mean_field_logits(logits, image, num_iters=num_iters, sigma_alpha=sigma_alpha,
                          sigma_beta=sigma_beta, sigma_gamma=sigma_gamma,
                          w_appearance=w_appearance, w_smoothness=w_smoothness,
                          compatibility=compatibility, normalize=normalize, method=method)
  return jax.nn.softmax(out, axis=-1)
