"""sppnet-lite: a runnable textbook of SPP-net (He et al., ECCV 2014 / TPAMI 2015)."""

__version__ = "0.1.0"
