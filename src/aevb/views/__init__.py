"""Views of a trained run: ``aevb report`` (one self-contained HTML page,
:func:`write_report`) and ``aevb explore`` (a local web page decoding the latent space live,
:func:`serve`)."""

from aevb.views.explore import Explorer, serve
from aevb.views.report import Report, write_report

__all__ = ["Explorer", "Report", "serve", "write_report"]
