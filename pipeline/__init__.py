"""crav-followup: imaging follow-up of spinal tumours treated by RFA + vertebroplasty (CRAV)."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
