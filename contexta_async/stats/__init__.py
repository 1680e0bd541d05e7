"""The statistics behind a comparison, on plain numbers (numpy; no files, no I/O).

One implementation per method: the paired (expanded) percentile bootstrap (resampled, or by
saddlepoint approximation for many pairs), exact McNemar, cluster-robust standard errors and
the cluster bootstrap, Student's t, power (minimum detectable effect, items needed),
Newcombe's interval for paired proportions, and Holm / Benjamini-Hochberg adjustment. The
readers compute their answers with these; docs/comparing.md gives each formula and its
reference.
"""

from ._bootstrap import (
    SADDLEPOINT_MIN_PAIRS,
    BootstrapInterval,
    BootstrapMethod,
    mcnemar_exact,
    paired_bootstrap_ci,
)
from ._inference import items_needed, minimum_detectable_effect

__all__ = [
    "SADDLEPOINT_MIN_PAIRS",
    "BootstrapInterval",
    "BootstrapMethod",
    "items_needed",
    "mcnemar_exact",
    "minimum_detectable_effect",
    "paired_bootstrap_ci",
]
