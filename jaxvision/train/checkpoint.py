"""Checkpoints in the workdir with orbax: the latest few for resuming, and the best by a metric.

Layout::

  workdir/checkpoints/<step>/   latest ``keep`` checkpoints (periodic, at the end, and on SIGTERM)
  workdir/best/<step>/          the single best checkpoint by ``best_metric`` (when configured)

``restore_latest`` tries the newest checkpoint first; if it cannot be read (a run killed while
writing, a truncated file) it says so with a warning and falls back to the previous one, so a crash
never loses more than one save interval. Saving is synchronous: when ``save`` returns the checkpoint
is complete on disk, which is what makes resuming after SIGKILL safe.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  """Saves and restores a host pytree (e.g. ``{"params", "batch_stats", "opt_state", "step"}``).

  Args:
    workdir: the run's directory.
    keep: how many of the latest checkpoints to keep.
    best_metric: name of an evaluation metric to keep the best checkpoint by (None: no best).
    best_mode: ``"max"`` (e.g. mIoU, mAP) or ``"min"`` (e.g. loss).
  """

  def __init__(self, workdir: str, *, keep: int = 2, best_metric: str | None = None,
               best_mode: str = "max"):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._latest = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                             enable_async_checkpointing=False))
    self.best_metric = best_metric
    self._best = None
    if best_metric:
      self._best = ocp.CheckpointManager(
          os.path.join(os.path.abspath(workdir), "best"),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, create=True, enable_async_checkpointing=False,
              best_fn=lambda metrics: metrics[best_metric], best_mode=best_mode))

  def all_steps(self) -> list[int]:
    return list(self._latest.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Saves ``state`` as checkpoint ``step`` (overwriting nothing: a step saved twice is skipped)."""
    if step in self._latest.all_steps():
      return
    self._latest.save(step, args=ocp.args.StandardSave(state), force=True)
    self._latest.wait_until_finished()

  def save_best(self, step: int, state: Any, metrics: dict[str, float]) -> None:
    """Offers ``state`` to the best-by-metric manager (kept only if it is the best so far)."""
    if self._best is None or self.best_metric not in metrics or step in self._best.all_steps():
      return
    self._best.save(step, args=ocp.args.StandardSave(state), metrics={k: float(v) for k, v in
                                                                     metrics.items()}, force=True)
    self._best.wait_until_finished()

  def restore_latest(self, template: Any) -> tuple[Any, int] | None:
    """Restores the newest readable checkpoint into the structure of ``template``.

    Returns:
      ``(state, step)``, or None when there is no checkpoint yet.

    Raises:
      RuntimeError: checkpoints exist but none can be read (each failure is listed).
    """
    steps = sorted(self._latest.all_steps(), reverse=True)
    failures = []
    for step in steps:
      try:
        state = self._latest.restore(step, args=ocp.args.StandardRestore(template))
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back to the previous
        failures.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
        log.warning("checkpoint %s/%d is unreadable (%s); trying the previous one.", self.directory,
                    step, e)
        continue
      if failures:
        log.warning("resumed from checkpoint %d after skipping unreadable ones: %s", step, failures)
      return state, step
    if failures:
      raise RuntimeError(f"no checkpoint in {self.directory} could be read:\n  " + "\n  ".join(
          failures) + "\nDelete the directory to start over, or point --workdir elsewhere.")
    return None

  def restore_best(self, template: Any) -> tuple[Any, int] | None:
    if self._best is None or self._best.best_step() is None:
      return None
    step = self._best.best_step()
    return self._best.restore(step, args=ocp.args.StandardRestore(template)), step

  def close(self) -> None:
    self._latest.close()
    if self._best is not None:
      self._best.close()
