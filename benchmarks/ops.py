"""Side-by-side benchmark of jaxvision's ops against torchvision on the same inputs.

Prints one JSON line per result (median times of both and the ratio torchvision / jaxvision, so > 1
means jaxvision is faster), with library versions and the device. Needs an environment with jax,
jaxvision, torch and torchvision (torch is never a dependency of jaxvision itself):

    python benchmarks/ops.py                 # NMS, RoIAlign, anchor matching
    python benchmarks/ops.py --only nms      # one area: nms, roi, matching

Results are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

AREAS = ("nms", "roi", "matching")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default=",".join(AREAS), help=f"comma-separated subset of {AREAS}")
  args = parser.parse_args()
  for area in args.only.split(","):
    if area not in AREAS:
      parser.error(f"--only: unknown area {area!r}; choose from {AREAS}")
    module = __import__(f"bench_{area}")
    for result in module.run():
      emit(result)


if __name__ == "__main__":
  main()
