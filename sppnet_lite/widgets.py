"""Callbacks behind the chapters' ipywidgets, as plain functions that tests call.

A widget cell in a notebook only wires sliders to one of these functions
(``ipywidgets.interact(fn, ...)``); everything that computes or draws lives
here, so pytest exercises it without a browser.
"""

from __future__ import annotations
