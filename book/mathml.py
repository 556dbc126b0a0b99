"""A Sphinx math renderer for the HTML book: LaTeX to MathML at build time.

Browsers draw MathML natively, so pages show their equations offline with no
MathJax script (which Sphinx would otherwise load from a CDN on every page).
"""

from docutils import nodes
from latex2mathml.converter import convert


def visit_inline(translator, node):
    """``$...$`` → inline ``<math>``."""
    translator.body.append(convert(node.astext()))
    raise nodes.SkipNode


def visit_block(translator, node):
    """``$$...$$`` → a display ``<math>`` in its own block."""
    translator.body.append(f'<div class="math">{convert(node.astext(), display="block")}</div>')
    raise nodes.SkipNode


def setup(app):
    """Register the renderer as ``html_math_renderer = "mathml"``."""
    app.add_html_math_renderer("mathml", (visit_inline, None), (visit_block, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
