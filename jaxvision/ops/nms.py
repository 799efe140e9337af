"""Non-maximum suppression at static shapes: greedy ``nms``, class-aware ``batched_nms``, ``soft_nms``.

Greedy NMS (``nms``, ``batched_nms``) gives exactly ``torchvision.ops.nms`` / ``batched_nms``'s keep
list (CPU kernel), truncated to ``max_output_size`` and padded with ``-1``, without ever building the
``N x N`` IoU matrix. The boxes are visited in tiles of ``T`` in score order, and every tile is
compared only with the boxes *kept so far* (a buffer of at most ``max_output_size + T`` boxes), never
with the suppressed ones::

    order      = stable sort of the boxes by descending score   # ties: lower index first
    candidate  = score is not NaN and score > score_threshold    # the others never take part
    kept       = []                                             # buffer, NaN-filled past its end
    for each tile of T boxes in order, while len(kept) < max_output_size and candidates remain:
      # 1. cross suppression: IoU of the tile against the kept buffer, C kept boxes per step
      alive = candidate[tile] and not any(IoU(k, b) > iou_threshold for k in kept)
      # 2. self suppression inside the tile: greedy NMS on the tile's [T, T] IoU matrix,
      #    solved as a fixed point (iterate until nothing changes; at most T rounds)
      M[i, j] = IoU(tile[i], tile[j]) > iou_threshold and i < j
      keep = alive
      repeat: keep = alive and not any_i(keep[i] and M[i, :])   until keep is unchanged
      kept += tile[keep]                                        # in score order
    indices = kept[:max_output_size] padded with -1, valid = indices >= 0

Why step 2 gives greedy NMS: greedy's decision for a box depends only on the decisions for the
boxes before it, so the greedy keep vector is the unique fixed point of the update, and after round
``r`` the first ``r`` decisions are final. Typical tiles converge in 1 - 4 rounds.

Cost: one sort plus ``O(P * K)`` IoU evaluations, ``P`` the boxes visited and ``K`` those kept, in
``P / T`` loop steps (never one step per box); torchvision's CPU kernel does ``O(N * K)`` scalar IoUs
and always visits all ``N`` boxes, while this loop stops once ``max_output_size`` boxes are kept
(for detectors, 100 - 1000, usually long before the last tile). ``T = 64`` and ``C = 32`` were the
fastest on a 2-core CPU from 1k to 20k boxes (``benchmarks/bench_nms.py``); small blocks waste
fewer IoUs on the partly filled last chunk and stay in L1. The sort is the single-operand int32
sort trick of ``_descending_order`` (XLA:CPU's generic key/value sort is 3-5x slower).

Exactness (parity with torchvision's CPU kernel, bit for bit; computed in float32):

* IoU is evaluated with torchvision's arithmetic, ``inter / ((area_kept + area_other) - inter)`` in
  float32 with ``area = (x2 - x1) * (y2 - y1)`` (no ``+1``), and a box is suppressed only when that
  value is *strictly greater* than ``iou_threshold``. torchvision's CPU kernel compares the float32
  IoU with a float64 threshold; a Python-float threshold is therefore replaced by the largest
  float32 that is ``<=`` it, which makes ``iou > t`` decide exactly as in float64
  (``float32(0.2) > 0.2``, so a naive float32 compare would differ on IoUs that round to
  ``float32(0.2)``; torchvision's CUDA kernel does compare with ``float32(t)`` and so differs from
  its CPU kernel there). A traced threshold is used as float32. float64 boxes are rounded to
  float32 first.
* Zero-area boxes: their IoU with a positive-area box is ``0``, and between two zero-area boxes it is
  ``0 / 0 = NaN``; ``NaN > t`` is false, so such pairs never suppress each other -- exactly what
  torchvision does (``box_iou`` in ``boxes.py`` maps ``0 / 0`` to 0 instead, which would agree for
  ``t >= 0`` but not for a negative threshold, so it is not used here). Boxes with NaN coordinates
  likewise never suppress and are never suppressed.
* Boxes at or left/above the origin (zero or negative coordinates) are ordinary boxes: validity is an
  explicit mask, never a ``box > 0`` test, and padding is NaN (whose IoU with anything is NaN).
* NaN scores are never selected; with ``score_threshold`` a box needs ``score > score_threshold``
  (strictly, as in ``tf.image.non_max_suppression`` and torchvision's detectors). ``+-inf`` scores
  are ordinary scores; ``-0.0`` and ``0.0`` tie.

``batched_nms`` carries the class with each box and adds ``class_a == class_b`` to the suppression
test instead of offsetting coordinates per class, so it is exact for any coordinates (torchvision's
offset ``class * (max_coordinate + 1)``, which it uses up to 1,000 boxes on CPU, lets classes
overlap when coordinates are negative, and rounds large offset coordinates). It equals
torchvision's per-class result merged in descending score order. With many classes and a large
``max_output_size`` it visits the boxes class by class instead (``class_major``, see
``_greedy_nms``), so a tile is compared only with kept boxes of its own classes.

``soft_nms`` (Bodla et al. 2017) rescores instead of discarding. Its selection order depends on the
decayed scores, so it is sequential in the number of *selected* boxes (at most ``max_output_size``
rounds, each one vectorized over all ``N`` boxes)::

    s = scores; alive = s is not NaN and s > score_threshold
    repeat max_output_size times, while any(alive):
      m = argmax(s over alive)                    # ties: lower index first
      output (m, s[m]); alive[m] = False
      w = exp(-IoU(m, .)^2 / sigma)               # 'gaussian'
        | where(IoU(m, .) > iou_threshold, 1 - IoU(m, .), 1)   # 'linear'
      s[alive] *= w[alive]; alive &= s > score_threshold

Everything works on one image; ``jax.vmap`` the functions for a batch. Each public function checks
its arguments at trace time and then calls a jitted core whose thresholds are traced scalars, so
eager calls compile once per shape and output size, not once per threshold value.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvision.ops._checks import check_array, check_positive_int

__all__ = ["nms", "batched_nms", "soft_nms"]

# Tile of boxes visited per loop step (T) and chunk of the kept buffer compared per inner step (C).
# Performance knobs only: any positive sizes give the same result (tests use tiny ones).
_TILE = 64
_CHUNK = 32


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _f32_threshold(value, name: str):
  """``value`` as a float32 scalar ``t32`` with ``x > t32 <=> x > value`` for every float32 ``x``.

  For a Python/NumPy number this is the largest float32 ``<= value`` (so the float32 compare decides
  like torchvision's float64 one). A JAX array is used as float32 (it may be traced).
  """
  if isinstance(value, bool):
    raise TypeError(f"{name} must be a real number, got bool {value!r}.")
  if isinstance(value, numbers.Real) or (isinstance(value, np.ndarray) and value.ndim == 0):
    v = float(value)
    if math.isnan(v):
      raise ValueError(f"{name} must not be NaN.")
    t = np.float32(v)
    if float(t) > v:  # float32 rounded up: step down to the largest float32 below the value.
      t = np.nextafter(t, np.float32(-np.inf))
    return jnp.float32(t)
  arr = check_array(value, name, ndim=0, kind="numeric")
  return arr.astype(jnp.float32)


def _check_boxes_scores(boxes, scores):
  boxes = check_array(boxes, "boxes", ndim=2, last_dim=4, kind="numeric")
  scores = check_array(scores, "scores", ndim=1, kind="numeric")
  if scores.shape[0] != boxes.shape[0]:
    raise ValueError(f"scores must have shape [{boxes.shape[0]}] (one per box of boxes "
                     f"{tuple(boxes.shape)}), got shape {tuple(scores.shape)}.")
  return boxes.astype(jnp.float32), scores.astype(jnp.float32)


def _suppresses(a, b, thr, class_aware: bool):
  """``[P, Q]`` bool: box ``p`` of ``a`` suppresses box ``q`` of ``b`` (torchvision's arithmetic).

  ``a``/``b`` are ``[R, P]``/``[R, Q]`` rows (x1, y1, x2, y2, area[, class]). NaN (padding, or 0/0
  for two zero-area boxes) compares false.
  """
  xx1 = jnp.maximum(a[0][:, None], b[0][None, :])
  yy1 = jnp.maximum(a[1][:, None], b[1][None, :])
  xx2 = jnp.minimum(a[2][:, None], b[2][None, :])
  yy2 = jnp.minimum(a[3][:, None], b[3][None, :])
  inter = jnp.maximum(xx2 - xx1, 0.0) * jnp.maximum(yy2 - yy1, 0.0)
  # Same operation order as torchvision: (area_i + area_j) - inter, then one division.
  ovr = inter / ((a[4][:, None] + b[4][None, :]) - inter)
  hit = ovr > thr
  if class_aware:
    hit = hit & (a[5][:, None] == b[5][None, :])
  return hit


def _area(b):
  return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


# ------------------------------------------------------------------------------------------------
# Greedy NMS core
# ------------------------------------------------------------------------------------------------

# Largest N for which ``rank * N + index`` fits in int32 (see ``_descending_order``).
_FAST_SORT_MAX_N = 46340


def _descending_order(scores, candidate):
  """Permutation sorting candidates by descending score (ties: lower index first), others last.

  XLA:CPU sorts a single int32 operand several times faster than a (key, index) pair, so for
  ``N <= 46340`` the stable argsort is built from single-operand sorts::

      key   = order-preserving int32 image of -score; non-candidates get distinct keys above all
              scores, increasing with the index
      rank  = searchsorted(sort(key), key)        # number of strictly smaller keys
      order = inverse permutation of rank          if all keys differ (the usual case)
            = sort(rank * N + index) mod N         otherwise: unique keys, ties broken by index

  Larger inputs use ``lax.sort`` on (key, index) with ``is_stable=True``.
  """
  n = scores.shape[0]
  # -0.0 and 0.0 are the same score (torchvision compares with <), so canonicalize zeros.
  neg = jnp.where(scores == 0, 0.0, -scores)
  if n > _FAST_SORT_MAX_N:
    key = jnp.where(candidate, neg, jnp.nan)  # lax.sort puts NaN after +inf.
    return lax.sort((key, lax.iota(jnp.int32, n)), num_keys=1, is_stable=True)[1]
  bits = lax.bitcast_convert_type(neg, jnp.int32)
  # Flip the magnitude bits of negative floats so that int32 order equals float order. Scores map
  # to at most 0x7F800000 (-score = +inf); non-candidates take the NaN range above it.
  key = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
  iota = lax.iota(jnp.int32, n)
  key = jnp.where(candidate, key, jnp.int32(0x7F800001) + iota)
  sorted_key = lax.sort(key)
  rank = jnp.searchsorted(sorted_key, key, side="left", method="scan").astype(jnp.int32)
  return lax.cond(jnp.any(sorted_key[1:] == sorted_key[:-1]),
                  lambda: lax.sort(rank * n + iota) % n,
                  lambda: jnp.zeros((n,), jnp.int32).at[rank].set(iota, unique_indices=True))


def _inverse_permutation(perm):
  return jnp.zeros_like(perm).at[perm].set(lax.iota(perm.dtype, perm.shape[0]), unique_indices=True)


def _class_major_order(order, dense_cls, candidate):
  """Reorders ``order`` (descending score) by class first, stably; non-candidates last.

  ``dense_cls`` are class ranks in ``[0, N)``. Uses the same single-operand int32 sort trick as
  ``_descending_order``: ``sort(class_key * N + score_position) mod N``, unique and in range for
  ``N <= 46340``.
  """
  n = order.shape[0]
  score_pos = _inverse_permutation(order)  # position of each box in the score order
  ckey = jnp.where(candidate, dense_cls, n)  # in [0, N]
  if n > _FAST_SORT_MAX_N:
    return order[lax.sort((ckey, score_pos), num_keys=2, is_stable=True)[1]]
  return order[lax.sort(ckey * n + score_pos) % n]


@functools.partial(jax.jit, static_argnames=("max_output_size", "tile", "chunk", "class_major"))
def _greedy_nms(boxes, scores, classes, thr, score_thr, *, max_output_size: int, tile: int,
                chunk: int, class_major: bool = False):
  """Core of ``nms``/``batched_nms`` on checked float32 inputs; ``classes`` may be ``None``.

  Jitted on its own (inlined when the caller is jitted), with the thresholds as traced scalars, so
  eager calls compile once per shape, not once per threshold value.

  Layout: boxes live as ``[R, n]`` float32 rows (x1, y1, x2, y2, area, and for class-aware NMS the
  class as a dense rank in ``[0, N)``, exact in float32), so that the pairwise kernels read
  contiguous vectors. Every tile and kept-buffer chunk a loop step works on is sliced one step
  *ahead* and carried in the loop state: XLA:CPU would otherwise fuse the ``dynamic_slice`` into
  the pairwise IoU kernel, which then runs about 10x slower (no vectorization).

  ``class_major`` (class-aware only) visits the boxes class by class (by descending score within a
  class) instead of by global score. The kept buffer is then grouped by class, so a tile only scans
  the kept boxes of its own classes (a suffix of the buffer), which makes "keep nearly everything"
  inputs with many classes cheap; but it cannot stop after ``max_output_size`` kept boxes, so for
  small outputs the score-major order (with early exit) is used.
  """
  n = boxes.shape[0]
  if n == 0 or max_output_size == 0:
    return (jnp.full((max_output_size,), -1, jnp.int32), jnp.zeros((max_output_size,), bool))
  class_aware = classes is not None
  class_major = class_major and class_aware

  candidate = ~jnp.isnan(scores)
  if score_thr is not None:
    candidate = candidate & (scores > score_thr)
  order = _descending_order(scores, candidate)  # the output order
  num_candidates = jnp.sum(candidate, dtype=jnp.int32)
  if class_aware:
    # Dense class ranks: equal classes share the rank (number of smaller class ids) < N.
    dense_cls = jnp.searchsorted(lax.sort(classes), classes, side="left",
                                 method="scan").astype(jnp.int32)
  visit = _class_major_order(order, dense_cls, candidate) if class_major else order

  # Tiles of `t` boxes; small inputs use one tile of the input size rounded up to 8.
  t = min(tile, _round_up(n, 8))
  n_pad = _round_up(n, t) + t  # one extra tile so that the one-ahead slice stays in bounds
  num_tiles_needed = (num_candidates + t - 1) // t
  sb = boxes[visit]
  rows = [sb[:, 0], sb[:, 1], sb[:, 2], sb[:, 3], _area(sb)]
  if class_aware:
    rows.append(dense_cls[visit].astype(jnp.float32))
  # NaN padding: IoU with a NaN box is NaN and NaN > thr is false, for any threshold.
  rows = jnp.pad(jnp.stack(rows), ((0, 0), (0, n_pad - n)), constant_values=jnp.nan)
  r = rows.shape[0]

  # Kept buffer: room for every box that can be kept before the loop stops plus one full tile, in
  # whole chunks, plus one chunk for the one-ahead slice. Unused slots are NaN boxes, which never
  # suppress anything, so chunks need no validity mask.
  k_eff = n if class_major else min(max_output_size, n)
  c = min(chunk, _round_up(k_eff + t, 8))
  cap = _round_up(k_eff + t, c) + c
  kept_rows = jnp.full((r, cap), jnp.nan, jnp.float32)
  kept_mask = jnp.zeros((n_pad,), bool)  # keep decision per visiting position
  lane = lax.iota(jnp.int32, t)
  upper = lane[:, None] < lane[None, :]  # box i is visited before box j
  # Inclusive prefix sum as a [t] x [t, t] product: a single small kernel on CPU (jnp.cumsum
  # lowers to a chain of reduce-windows), exact for counts < 2^24.
  prefix = (lane[:, None] <= lane[None, :]).astype(jnp.float32)

  def pairwise(a, b):
    return _suppresses(a, b, thr, class_aware)

  def tile_step(state):
    i, n_kept, kept_rows, kept_mask, tr = state
    alive = (lane + i * t) < num_candidates

    # 1. Cross suppression against the kept buffer, one chunk of `c` kept boxes per step, only
    # over chunks that can hold suppressors. (Stopping once the whole tile is suppressed was
    # measured: the extra reduction per step costs more than it saves.)
    # Class-major: kept boxes of classes below the tile's first class cannot suppress it; they
    # form a prefix of the buffer, which is skipped.
    num_chunks = (n_kept + c - 1) // c
    if class_major:
      first = jnp.sum(kept_rows[5] < tr[5, 0], dtype=jnp.int32) // c
    else:
      first = jnp.int32(0)

    def cross_body(s):
      j, sup, kr = s
      sup = sup | jnp.any(pairwise(kr, tr), axis=0)
      kr = lax.dynamic_slice_in_dim(kept_rows, (j + 1) * c, c, axis=1)  # one ahead
      return j + 1, sup, kr

    kr0 = lax.dynamic_slice_in_dim(kept_rows, first * c, c, axis=1)
    _, sup, _ = lax.while_loop(lambda s: s[0] < num_chunks, cross_body,
                               (first, jnp.zeros((t,), bool), kr0))
    alive = alive & ~sup

    # 2. Self suppression: greedy inside the tile as the fixed point of keep = alive & ~(keep @ M).
    m = pairwise(tr, tr) & upper

    def fp_body(s):
      keep, _ = s
      new = alive & ~jnp.any(m & keep[:, None], axis=0)
      return new, jnp.any(new != keep)

    keep, _ = lax.while_loop(lambda s: s[1], fp_body, (alive, jnp.any(alive)))

    # 3. Append the tile's kept boxes (already in visiting order) to the buffer.
    csum = jnp.dot(keep.astype(jnp.float32), prefix).astype(jnp.int32)
    pos = jnp.where(keep, n_kept + csum - 1, cap)
    kept_rows = kept_rows.at[:, pos].set(tr, mode="drop", unique_indices=True)
    kept_mask = lax.dynamic_update_slice_in_dim(kept_mask, keep, i * t, axis=0)
    n_kept = n_kept + csum[-1]
    tr = lax.dynamic_slice_in_dim(rows, (i + 1) * t, t, axis=1)  # one ahead
    return i + 1, n_kept, kept_rows, kept_mask, tr

  def tile_cond(state):
    i, n_kept = state[0], state[1]
    more = i < num_tiles_needed
    return more if class_major else more & (n_kept < max_output_size)

  state = (jnp.int32(0), jnp.int32(0), kept_rows, kept_mask, rows[:, :t])
  kept_mask = lax.while_loop(tile_cond, tile_step, state)[3][:n]

  # Kept flags in output (descending score) order, then compaction into max_output_size slots.
  if class_major:
    kept_mask = kept_mask[_inverse_permutation(visit)][order]
  slot = jnp.cumsum(kept_mask, dtype=jnp.int32) - 1
  slot = jnp.where(kept_mask & (slot < max_output_size), slot, max_output_size)
  indices = jnp.full((max_output_size,), -1, jnp.int32).at[slot].set(order, mode="drop")
  return indices, indices >= 0


def nms(boxes, scores, *, iou_threshold, max_output_size: int, score_threshold=None,
        _tile: int = _TILE, _chunk: int = _CHUNK):
  """Greedy non-maximum suppression, identical to ``torchvision.ops.nms`` at a static output size.

  Args:
    boxes: ``[N, 4]`` xyxy boxes (float; any coordinates, zero-area allowed). ``N`` may be 0.
    scores: ``[N]`` scores. NaN scores are never selected.
    iou_threshold: a box is discarded when its IoU with a kept, higher-scoring box is *strictly
      greater* than this (Python float, or a float scalar array that may be traced).
    max_output_size: static number of output slots (Python int >= 0), may exceed ``N``.
    score_threshold: optional; only boxes with ``score > score_threshold`` take part.

  Returns:
    ``(indices, valid)``: ``indices`` int32 ``[max_output_size]``, indices into ``boxes`` of the kept
    boxes in descending score order (ties: lower index first), padded with ``-1``; ``valid`` bool
    ``[max_output_size]``, ``indices >= 0``. ``indices[valid]`` equals
    ``torchvision.ops.nms(boxes, scores, iou_threshold)[:max_output_size]`` for finite scores.

  Raises:
    TypeError, ValueError: bad ranks, shapes or dtypes (naming the argument), a non-int or negative
      ``max_output_size``, a NaN threshold.

  ``_tile`` / ``_chunk`` are private performance knobs (tests, benchmarks): any positive sizes give
  the same result.
  """
  boxes, scores = _check_boxes_scores(boxes, scores)
  max_output_size = check_positive_int(max_output_size, "max_output_size", allow_zero=True)
  thr = _f32_threshold(iou_threshold, "iou_threshold")
  score_thr = (None if score_threshold is None else
               _f32_threshold(score_threshold, "score_threshold"))
  return _greedy_nms(boxes, scores, None, thr, score_thr, max_output_size=max_output_size,
                     tile=_tile, chunk=_chunk)


def batched_nms(boxes, scores, classes, *, iou_threshold, max_output_size: int,
                score_threshold=None, _tile: int = _TILE, _chunk: int = _CHUNK,
                _class_major: bool | None = None):
  """Class-aware greedy NMS: boxes of different classes never suppress each other.

  Equal to ``torchvision.ops.batched_nms(boxes, scores, classes, iou_threshold)[:max_output_size]``
  (its per-class result merged in descending score order). The class test is part of the
  suppression rule, so no coordinate offset is used and any coordinates work.

  Args:
    boxes: ``[N, 4]`` xyxy boxes.
    scores: ``[N]`` scores; NaN never selected.
    classes: ``[N]`` integer class ids (any values).
    iou_threshold: suppression when IoU is strictly greater than this, within a class.
    max_output_size: static total number of output slots over all classes.
    score_threshold: optional; only boxes with ``score > score_threshold`` take part.

  Returns:
    ``(indices int32 [max_output_size], valid bool [max_output_size])`` as in ``nms``.

  Raises:
    TypeError, ValueError: as ``nms``; also non-integer or mismatched ``classes``, ``N >= 2**24``.

  ``_class_major`` (private) forces the visiting order (``None``: chosen from ``max_output_size``
  and ``N``); both orders give the same result.
  """
  boxes, scores = _check_boxes_scores(boxes, scores)
  classes = check_array(classes, "classes", ndim=1, kind="int")
  if classes.shape[0] != boxes.shape[0]:
    raise ValueError(f"classes must have shape [{boxes.shape[0]}] (one per box of boxes "
                     f"{tuple(boxes.shape)}), got shape {tuple(classes.shape)}.")
  max_output_size = check_positive_int(max_output_size, "max_output_size", allow_zero=True)
  thr = _f32_threshold(iou_threshold, "iou_threshold")
  score_thr = (None if score_threshold is None else
               _f32_threshold(score_threshold, "score_threshold"))
  n = boxes.shape[0]
  if n >= 2**24:
    raise ValueError(f"batched_nms supports fewer than 2**24 boxes, got {n}.")
  if _class_major is None:
    # Score order stops after max_output_size kept boxes but compares each tile with every kept
    # box (~K^2 / 2 pairs); class order visits all boxes (~N * tile pairs) but only compares
    # boxes of the same classes. See benchmarks/bench_nms.py.
    # Measured crossover (80 classes, 5k boxes, 2 CPU cores): max_output_size ~ 1,500 - 2,000.
    _class_major = max_output_size * max_output_size > 8 * n * _tile
  return _greedy_nms(boxes, scores, classes.astype(jnp.int32), thr, score_thr,
                     max_output_size=max_output_size, tile=_tile, chunk=_chunk,
                     class_major=_class_major)


# ------------------------------------------------------------------------------------------------
# Soft-NMS
# ------------------------------------------------------------------------------------------------


def soft_nms(boxes, scores, *, max_output_size: int, sigma: float = 0.5,
             score_threshold: float | None = 0.001, method: str = "gaussian",
             iou_threshold: float = 0.3):
  """Soft-NMS (Bodla et al., "Soft-NMS -- Improving Object Detection With One Line of Code", 2017).

  Instead of discarding the boxes that overlap a selected box, their scores are decayed:
  ``s *= exp(-iou^2 / sigma)`` (``method='gaussian'``) or ``s *= 1 - iou`` where
  ``iou > iou_threshold`` (``method='linear'``). Boxes whose decayed score is no longer
  ``> score_threshold`` drop out. IoU has no ``+1`` and is 0 where the union is not positive.

  Args:
    boxes: ``[N, 4]`` xyxy boxes.
    scores: ``[N]`` scores; NaN never selected.
    max_output_size: static number of output slots (rounds of selection).
    sigma: Gaussian width (> 0), used by ``'gaussian'``.
    score_threshold: boxes need a (decayed) score ``> score_threshold`` to be selected (the
      paper's code uses 0.001); ``None``: no threshold (every non-NaN, non-``-inf`` box is
      eventually selected, up to ``max_output_size``).
    method: ``'gaussian'`` or ``'linear'``.
    iou_threshold: overlap above which ``'linear'`` decays (the paper's ``N_t``); unused by
      ``'gaussian'``.

  Returns:
    ``(indices, scores_decayed, valid)``: ``indices`` int32 ``[max_output_size]`` in selection
    order (non-increasing decayed score) padded with ``-1``; ``scores_decayed`` float32
    ``[max_output_size]``, each selected box's score at the time it was selected (0 where padded);
    ``valid`` bool ``[max_output_size]``.

  Raises:
    TypeError, ValueError: as ``nms``; also an unknown ``method`` or ``sigma <= 0``.
  """
  boxes, scores = _check_boxes_scores(boxes, scores)
  max_output_size = check_positive_int(max_output_size, "max_output_size", allow_zero=True)
  if method not in ("gaussian", "linear"):
    raise ValueError(f"method must be 'gaussian' or 'linear', got {method!r}.")
  if isinstance(sigma, numbers.Real) and not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma!r}.")
  if isinstance(sigma, numbers.Real):
    sigma = jnp.float32(sigma)
  sigma = check_array(sigma, "sigma", ndim=0, kind="numeric").astype(jnp.float32)
  score_thr = (jnp.float32(-jnp.inf) if score_threshold is None else
               _f32_threshold(score_threshold, "score_threshold"))
  iou_thr = _f32_threshold(iou_threshold, "iou_threshold")
  return _soft_nms(boxes, scores, sigma, score_thr, iou_thr, max_output_size=max_output_size,
                   method=method)


@functools.partial(jax.jit, static_argnames=("max_output_size", "method"))
def _soft_nms(boxes, scores, sigma, score_thr, iou_thr, *, max_output_size: int, method: str):
  """Core of ``soft_nms`` on checked inputs (jitted once per shape, like ``_greedy_nms``)."""
  n = boxes.shape[0]
  indices = jnp.full((max_output_size,), -1, jnp.int32)
  out_scores = jnp.zeros((max_output_size,), jnp.float32)
  if n == 0 or max_output_size == 0:
    return indices, out_scores, jnp.zeros((max_output_size,), bool)

  area = _area(boxes)
  alive = ~jnp.isnan(scores) & (scores > score_thr)

  def cond(state):
    k, _, alive, _, _ = state
    return (k < max_output_size) & jnp.any(alive)

  def body(state):
    k, s, alive, indices, out_scores = state
    # argmax returns the first maximum, so ties go to the lower index.
    m = jnp.argmax(jnp.where(alive, s, -jnp.inf)).astype(jnp.int32)
    indices = indices.at[k].set(m)
    out_scores = out_scores.at[k].set(s[m])
    alive = alive.at[m].set(False)
    bm = boxes[m]
    w = jnp.maximum(jnp.minimum(bm[2], boxes[:, 2]) - jnp.maximum(bm[0], boxes[:, 0]), 0.0)
    h = jnp.maximum(jnp.minimum(bm[3], boxes[:, 3]) - jnp.maximum(bm[1], boxes[:, 1]), 0.0)
    inter = w * h
    union = (area[m] + area) - inter
    iou = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
    if method == "gaussian":
      decay = jnp.exp(-(iou * iou) / sigma)
    else:
      decay = jnp.where(iou > iou_thr, 1.0 - iou, 1.0)
    s = jnp.where(alive, s * decay, s)
    alive = alive & (s > score_thr)
    return k + 1, s, alive, indices, out_scores

  state = (jnp.int32(0), scores, alive, indices, out_scores)
  k, _, _, indices, out_scores = lax.while_loop(cond, body, state)
  valid = lax.iota(jnp.int32, max_output_size) < k
  return indices, jnp.where(valid, out_scores, 0.0), valid
