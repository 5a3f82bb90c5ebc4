"""Strips outputs, execution counts and run-time metadata from notebooks, in place.

  python colab/strip_outputs.py                 # every colab/*.ipynb
  python colab/strip_outputs.py colab/02_train.ipynb
  python colab/strip_outputs.py --check         # exit 1 (and name them) if any is not stripped

Keeps the sources, cell ids and the notebook's kernelspec/Colab metadata, so a stripped
notebook opens in Colab ready to run. `tests/test_notebooks.py` checks the committed ones.
"""

import argparse
import pathlib
import sys

import nbformat

COLAB = pathlib.Path(__file__).resolve().parent
# Cell metadata written while running (Colab, Jupyter); the rest (e.g. "cellView") is kept.
RUNTIME_CELL_METADATA = ("execution", "outputId", "executionInfo", "collapsed", "scrolled")
KEPT_NOTEBOOK_METADATA = ("kernelspec", "language_info", "colab", "accelerator")


def strip(notebook: nbformat.NotebookNode) -> bool:
  """Strips `notebook` in place; returns whether anything changed."""
  before = nbformat.writes(notebook)
  for cell in notebook.cells:
    for key in RUNTIME_CELL_METADATA:
      cell.metadata.pop(key, None)
    if cell.cell_type == "code":
      cell.outputs = []
      cell.execution_count = None
  for key in list(notebook.metadata):
    if key not in KEPT_NOTEBOOK_METADATA:
      del notebook.metadata[key]
  if "language_info" in notebook.metadata:  # what the kernel adds (version, lexer, ...) goes
    notebook.metadata.language_info = {"name": notebook.metadata.language_info.get("name",
                                                                                   "python")}
  return nbformat.writes(notebook) != before


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("paths", nargs="*", type=pathlib.Path,
                      help="notebooks (default: colab/*.ipynb)")
  parser.add_argument("--check", action="store_true", help="only report; change nothing")
  args = parser.parse_args(argv)
  paths = args.paths or sorted(COLAB.glob("*.ipynb"))
  dirty = []
  for path in paths:
    notebook = nbformat.read(str(path), as_version=4)
    if strip(notebook):
      dirty.append(path)
      if not args.check:
        nbformat.validate(notebook)
        nbformat.write(notebook, str(path))
  for path in dirty:
    print(f"{path}: {'not stripped' if args.check else 'stripped'}")
  return 1 if args.check and dirty else 0


if __name__ == "__main__":
  sys.exit(main())
