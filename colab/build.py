"""Builds the Colab notebooks ``colab/<name>.ipynb`` from their plain-Python sources ``colab/src/<name>.py``.

The sources are what people edit and review; the ``.ipynb`` files are generated (outputs empty) and
committed so that Colab can open them, and ``tests/test_notebooks.py`` checks that they match.

Source format (the "percent" format that VS Code, PyCharm, Spyder and jupytext also read)::

    # Anything before the first cell marker is a header for the source file only (not in the notebook).

    # %% [markdown]
    # # A title
    # Markdown text, each line a comment ("# " is stripped).

    # %%
    print("a code cell")

    # %% [include _setup.py]
    # (a code cell whose text is colab/src/_setup.py, shared by every notebook)

Leading and trailing blank lines of a cell are dropped. Files in ``colab/src`` whose names start
with ``_`` are includes, not notebooks.

Usage::

    python colab/build.py            # (re)writes every colab/<name>.ipynb
    python colab/build.py --check    # exits 1 and names the notebooks that differ from their sources
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import nbformat

COLAB_DIR = os.path.dirname(os.path.abspath(__file__))
SRC_DIR = os.path.join(COLAB_DIR, "src")

_MARKER = re.compile(r"^# %%(?:\s*\[(?P<kind>[^\]]*)\])?\s*$")


def sources() -> list[str]:
  """The notebook names (``colab/src/<name>.py``, includes excluded), sorted."""
  return sorted(f[:-3] for f in os.listdir(SRC_DIR) if f.endswith(".py") and not f.startswith("_"))


def _strip_blank(lines: list[str]) -> list[str]:
  while lines and not lines[0].strip():
    lines = lines[1:]
  while lines and not lines[-1].strip():
    lines = lines[:-1]
  return lines


def _markdown_line(line: str, where: str) -> str:
  if line.startswith("# "):
    return line[2:]
  if line.rstrip() == "#":
    return ""
  raise ValueError(f"{where}: a markdown cell's lines must be comments ('# text' or '#'), got "
                   f"{line!r}.")


def parse(text: str, *, name: str = "<source>") -> list[tuple[str, str]]:
  """``[(cell_type, source)]`` of a percent-format source (see the module docstring)."""
  cells: list[tuple[str, list[str], int]] = []
  current = None
  for lineno, line in enumerate(text.splitlines(), 1):
    m = _MARKER.match(line)
    if m:
      kind = (m.group("kind") or "").strip()
      if kind == "markdown":
        current = ("markdown", [], lineno)
      elif kind.startswith("include "):
        include = kind[len("include "):].strip()
        path = os.path.join(SRC_DIR, include)
        if not include.startswith("_") or not os.path.exists(path):
          raise ValueError(f"{name}:{lineno}: include {include!r} must name an existing "
                           f"colab/src/_*.py file.")
        with open(path) as f:
          cells.append(("code", f.read().splitlines(), lineno))
        current = ("include-body", [], lineno)  # only blank lines may follow until the next marker
      elif kind == "":
        current = ("code", [], lineno)
      else:
        raise ValueError(f"{name}:{lineno}: unknown cell marker {line!r} (use '# %%', "
                         "'# %% [markdown]' or '# %% [include _file.py]').")
      cells.append(current)
      continue
    if current is not None:
      current[1].append(line)
  out = []
  for kind, lines, lineno in cells:
    lines = _strip_blank(lines)
    if kind == "include-body":
      if lines:
        raise ValueError(f"{name}:{lineno}: an include cell cannot have a body.")
      continue
    if kind == "markdown":
      lines = [_markdown_line(l, f"{name}:{lineno}") for l in lines]
    if not lines:
      raise ValueError(f"{name}:{lineno}: empty cell.")
    out.append((kind, "\n".join(lines)))
  if not out:
    raise ValueError(f"{name}: no cells (cells start with '# %%').")
  return out


def build(name: str) -> nbformat.NotebookNode:
  """The notebook of ``colab/src/<name>.py``: cells with stable ids, no outputs, Colab metadata."""
  with open(os.path.join(SRC_DIR, f"{name}.py")) as f:
    cells = parse(f.read(), name=f"colab/src/{name}.py")
  nb = nbformat.v4.new_notebook()
  nb.metadata = {
      "colab": {"name": f"{name}.ipynb", "provenance": [], "toc_visible": True},
      "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
      "language_info": {"name": "python"},
  }
  for i, (kind, source) in enumerate(cells):
    cell = (nbformat.v4.new_markdown_cell(source) if kind == "markdown"
            else nbformat.v4.new_code_cell(source))
    cell.id = f"{name[:40]}-{i:03d}"  # stable (nbformat would draw random ids)
    nb.cells.append(cell)
  nbformat.validate(nb)
  return nb


def render(name: str) -> str:
  """The exact text of ``colab/<name>.ipynb`` as committed."""
  text = nbformat.writes(build(name))
  return text if text.endswith("\n") else text + "\n"


def notebook_path(name: str) -> str:
  return os.path.join(COLAB_DIR, f"{name}.ipynb")


def stale() -> list[str]:
  """Notebooks whose committed ``.ipynb`` differs from (or lacks) its source, and orphan ``.ipynb``."""
  out = []
  for name in sources():
    path = notebook_path(name)
    if not os.path.exists(path):
      out.append(f"{name}.ipynb (missing)")
      continue
    with open(path, encoding="utf-8") as f:
      if f.read() != render(name):
        out.append(f"{name}.ipynb (differs from colab/src/{name}.py)")
  known = set(sources())
  out += [f"{f} (no colab/src/{f[:-6]}.py)" for f in sorted(os.listdir(COLAB_DIR))
          if f.endswith(".ipynb") and f[:-6] not in known]
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 if a notebook differs from its source")
  parser.add_argument("names", nargs="*", help="notebooks to build (default: all)")
  args = parser.parse_args(argv)
  if args.check:
    bad = stale()
    for b in bad:
      print(f"out of date: colab/{b}; run `python colab/build.py`", file=sys.stderr)
    return 1 if bad else 0
  for name in args.names or sources():
    with open(notebook_path(name), "w", encoding="utf-8", newline="\n") as f:
      f.write(render(name))
    print(f"wrote colab/{name}.ipynb")
  return 0


if __name__ == "__main__":
  sys.exit(main())
