"""Sphinx configuration for the multifd_zero documentation.

The documentation is built against the *installed* package (``pip install
'.[docs]'`` first): nothing here puts the source tree on ``sys.path``, because
the compiled kernels only exist in an installed build.

CI builds with ``sphinx-build -W --keep-going -n`` (warnings are errors, every
cross-reference must resolve) and runs every example with ``-b doctest``. The
build needs no network: intersphinx is off unless the environment variable
``MULTIFD_ZERO_DOCS_INTERSPHINX=1`` asks for it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from docutils import nodes
from docutils.nodes import Element
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

import multifd_zero
from multifd_zero import cli

logger = logging.getLogger(__name__)

project = "multifd_zero"
author = "multifd_zero developers"
copyright = "2026, multifd_zero developers"
release = multifd_zero.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext"}
# Literal blocks (``::``) are text diagrams and output, not Python: Python
# examples say so (doctest blocks and ``code-block:: python``).
highlight_language = "text"
root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []

# -- autodoc and napoleon (numpy-style docstrings) ---------------------------
autodoc_member_order = "bysource"
# The numpy-style docstrings carry the types; the annotations are for type checkers.
autodoc_typehints = "none"
autodoc_docstring_signature = True
autodoc_default_options = {"members": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_preprocess_types = True
napoleon_attr_annotations = True
# Words the docstrings use as types that are not Python objects.
napoleon_type_aliases = {
    "buffer": ":term:`buffer`",
    "writable buffer": ":term:`writable buffer <buffer>`",
    "NOCOMP": "``NOCOMP``",
    "ByteSource": ":class:`~multifd_zero.wire.ByteSource`",
}

# -- doctest ------------------------------------------------------------------
# Docstring examples name the public API without importing it.
# The submodules' examples are written in their own namespaces (as pytest's
# --doctest-modules runs them); their public names are all in reach here.
doctest_global_setup = """
import os
import numpy as np
from multifd_zero import *
from multifd_zero.wire import *
from multifd_zero.wire.savevm import *
from multifd_zero.migration.transport import *
from multifd_zero.migration.source import *
from multifd_zero.migration.destination import *
from multifd_zero.migration.shm import *
from multifd_zero.snapshot import *
from multifd_zero.tools.scan import *
from multifd_zero.tools.formats import *
from multifd_zero.tools.sparsify import *
from multifd_zero.wire.savevm import *
"""
doctest_test_doctest_blocks = "default"

# -- cross-references -----------------------------------------------------------
nitpicky = True
# Without intersphinx, references into numpy and the standard library's
# typing aliases cannot resolve; they are rendered as plain text.
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|npt)(\..*)?"),
    (r"py:.*", r"(numpy\.typing|numpy\._typing)\..*"),
    (r"py:class", r"(collections\.abc\.)?Callable"),
    (r"py:class", r"(typing\.)?Any"),
    (r"py:class", r"mmap(\.mmap)?"),
    (r"py:class", r"ssl\.SSL(Context|Socket)"),
    (r"py:class", r"(multifd_zero\.)?(_offsets\.)?OffsetArray"),
    (r"py:class", r"(multifd_zero\.)?(ramblock\.)?ReleaseCallback"),
    # numpydoc type phrases napoleon splits into words.
    (r"py:class", r"callable|sequence|numpy integer array|tuple of numpy\.ndarray"),
    (r"py:class", r"iterable|array-like|mapping|file-like|path-like"),
    # The standard library, without intersphinx.
    (r"py:(class|exc|func|meth|mod|data|attr)", r"(socket|threading|subprocess|os|io)(\..*)?"),
    (r"py:obj", r"True|False"),
    (r"py:class", r"\(normal, zero\)"),
]

if os.environ.get("MULTIFD_ZERO_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
    }

# -- output -----------------------------------------------------------------------
html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"multifd_zero {release}"
myst_heading_anchors = 3


# -- local directives -------------------------------------------------------------
def _help_texts() -> list[tuple[str, str]]:
    """``[("", main help), (command, its help), ...]`` from the real argument parser."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal width
    try:
        parser = cli.build_parser()
        texts = [("", parser.format_help())]
        for action in parser._actions:  # argparse keeps the sub-commands here
            if isinstance(getattr(action, "choices", None), dict):
                texts += [(name, sub.format_help()) for name, sub in action.choices.items()]
        return texts
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _literal(text: str) -> nodes.literal_block:
    block = nodes.literal_block(text, text)
    block["language"] = "text"
    return block


def _pictures() -> object:
    """``docs/zero_page_pictures.py``, loaded by path (the docs folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "zero_page_pictures", Path(__file__).with_name("zero_page_pictures.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ZeroPagePicture(SphinxDirective):
    """``.. zero-page-picture:: source`` (or ``destination``): an SVG drawn at build time.

    ``zero_page_pictures.py`` runs the library on a small block and draws what
    came out, so the picture shows what the code does; the SVG goes inline into
    the HTML (builders other than HTML leave it out).
    """

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        drawings: dict[str, object] = _pictures().PICTURES  # type: ignore[attr-defined]
        name = self.arguments[0]
        if name not in drawings:
            raise self.error(f"zero-page-picture: {name!r} is not one of {sorted(drawings)}")
        svg = drawings[name]()  # type: ignore[operator]
        html = f'<figure class="zero-page-picture">{svg}</figure>'
        return [nodes.raw("", html, format="html")]


class CliHelp(SphinxDirective):
    """``.. cli-help::`` the main ``--help`` text; ``.. cli-help:: all`` every command's.

    Generated from :func:`multifd_zero.cli.build_parser` at build time, so the
    reference cannot drift from the code, and a new command appears by itself.
    """

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        texts = _help_texts()
        if not self.arguments:
            return [_literal(texts[0][1])]
        out: list[nodes.Node] = []
        for name, text in texts[1:]:
            title = f"multifd-zero {name}"
            out.append(nodes.rubric("", "", nodes.literal(title, title)))
            out.append(_literal(text))
        return out


def _check_api_complete(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn (an error under ``-W``) for any public name the API page does not document."""
    documented = set(env.get_domain("py").objects)  # type: ignore[attr-defined]
    for name in multifd_zero.__all__:
        if name != "__version__" and f"multifd_zero.{name}" not in documented:
            logger.warning("multifd_zero.%s is public but not documented in api.rst", name)


def _keep_property_first_line(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Stop napoleon from reading "Text: more text" in a property docstring as "type: text".

    Napoleon treats the first line of an attribute or property docstring as
    ``type: description`` when it has a colon. The docstrings here never use
    that form; an empty type in front keeps the line as written. Runs before
    napoleon (lower priority number).
    """
    if what in {"attribute", "property", "data"} and lines and ":" in lines[0]:
        lines[0] = ": " + lines[0]


def _resolve_short_names(
    app: Sphinx, env: BuildEnvironment, node: Element, contnode: Element
) -> Element | None:
    """Resolve a Python reference the domain missed to the one documented object it names.

    Docstrings inside a submodule say ``RAMBlock`` or ``Channel`` (names of their
    own module's namespace) and ``multifd_zero.migration.engine.migrate`` (where a name is
    defined, not where it is documented). A reference that finds nothing is
    retried with the documented ``multifd_zero.NAME`` if there is one, else with
    the only documented object whose name ends in ``.NAME``. A name that is
    documented nowhere, or twice, still warns.
    """
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    target = node["reftarget"].lstrip("~.")
    short = target.rsplit(".", 1)[-1]
    if target != short and not target.startswith("multifd_zero."):
        return None
    objects = domain.objects  # type: ignore[attr-defined]
    if f"multifd_zero.{short}" in objects:
        full = f"multifd_zero.{short}"
    else:
        found = [name for name in objects if name.endswith(f".{short}")]
        if len(found) != 1:
            return None
        full = found[0]
    return domain.resolve_xref(  # type: ignore[no-any-return]
        env, node["refdoc"], app.builder, node["reftype"], full, node, contnode
    )


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("cli-help", CliHelp)
    app.add_directive("zero-page-picture", ZeroPagePicture)
    app.connect("autodoc-process-docstring", _keep_property_first_line, priority=400)
    app.connect("env-check-consistency", _check_api_complete)
    app.connect("missing-reference", _resolve_short_names)
    return {"parallel_read_safe": True}


logger.info("multifd_zero %s from %s", release, Path(multifd_zero.__file__).parent)
