"""Build graphcore's API reference (HTML, from the docstrings) with pdoc.

    python -m graphcore_tools.build_docs [-o docs/api]

Writes one page per module: graphcore.html (the public API, `graphcore.__all__`), then each
submodule (graphcore/ops/reduce.html, ...), index.html and a search index. pdoc follows a package's
`__all__`, which leaves out the submodules, so they are named here one by one. Needs the `docs`
(or `test`) extra: pip install -e '.[docs]'.
"""
from __future__ import annotations

import argparse
import importlib.util
import pkgutil
import sys
from pathlib import Path

import graphcore
from graphcore.cli_support import CliError, add_common_arguments, check_output_folder, setup_logging


def modules() -> list[str]:
    """graphcore and its direct submodules, in name order (pdoc walks the subpackages itself);
    graphcore.distributed only where its optional mpi4py is installed."""
    names = sorted(m.name for m in pkgutil.iter_modules(graphcore.__path__, "graphcore."))
    if importlib.util.find_spec("mpi4py") is None:
        names.remove("graphcore.distributed")
    return ["graphcore"] + names


def build(out: Path) -> Path:
    """Render the reference into `out`; returns the path of graphcore.html."""
    try:
        import pdoc
        import pdoc.render
    except ImportError:
        raise CliError("pdoc is not installed: pip install -e '.[docs]'") from None
    pdoc.render.configure(docformat="markdown", footer_text=f"graphcore {graphcore.__version__}")
    out.mkdir(exist_ok=True)
    pdoc.pdoc(*modules(), output_directory=out)
    return out / "graphcore.html"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="build_docs", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", "-o", metavar="FOLDER", default="docs/api",
                   help="where the HTML goes (default docs/api, not committed)")
    add_common_arguments(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    try:
        check_output_folder(args.output, "--output")
        page = build(Path(args.output))
    except CliError as e:
        print(f"build_docs: {e}", file=sys.stderr)
        return 1
    print(f"API reference written to {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
