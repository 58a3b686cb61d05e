"""Schemes where networks teach each other, each from its paper (``kdforge list schemes``).

One module per scheme; each registers itself in :data:`SCHEMES` on import. The contract is
in :mod:`kdforge.schemes.base`.
"""

from kdforge.schemes.base import (
    SCHEMES,
    RunData,
    Runner,
    Scheme,
    SchemeOptions,
    StageResult,
    StepInputs,
    build_scheme,
    derive,
    record_of,
    register,
)

# isort: off
from kdforge.schemes import mutual as mutual  # noqa: E402  (registers dml)
from kdforge.schemes import assistants as assistants  # noqa: E402  (registers takd)
from kdforge.schemes import born_again as born_again  # noqa: E402  (registers ban)
from kdforge.schemes import data_free as data_free  # noqa: E402  (registers dfad, dafl)
from kdforge.schemes import meta_pseudo_labels as meta_pseudo_labels  # noqa: E402  (registers mpl)
from kdforge.schemes import deep_inversion as deep_inversion  # noqa: E402  (registers deepinversion)
from kdforge.schemes import meal as meal  # noqa: E402  (registers meal)
from kdforge.schemes import specialists as specialists  # noqa: E402  (registers specialists)
from kdforge.schemes import ensembles as ensembles  # noqa: E402  (registers aekd)
from kdforge.schemes import lwf as lwf  # noqa: E402  (registers lwf, lwf-stage)
from kdforge.schemes import exits as exits  # noqa: E402  (registers byot)
from kdforge.schemes import cross_modal as cross_modal  # noqa: E402  (registers cross_modal)
from kdforge.schemes import transfer_set as transfer_set  # noqa: E402  (registers transfer_set)
from kdforge.schemes import nas as nas  # noqa: E402  (registers nas)
# isort: on

__all__ = ["SCHEMES", "RunData", "Runner", "Scheme", "SchemeOptions", "StageResult",
           "StepInputs", "build_scheme", "derive", "record_of", "register"]
