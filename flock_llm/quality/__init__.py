"""Quality you can measure: compare batched answers with one-item answers, agreement with a confidence
interval, and a batch size that holds a quality target.

The pure parts (`compare`, `stats`, `controller`) do no I/O; `audit` hooks them into the LLM engines.
"""

from .audit import Audit, Shuffle
from .compare import Comparison, FieldAgreement, Tolerance, compare_answers, field_kinds
from .controller import ControllerState, QualityTarget, SizeChange, observe
from .facts import ReportFacts
from .stats import ALL_FIELDS, AgreementKey, AgreementRow, AgreementTally, Interval, position_bucket, wilson

__all__ = [
    "ALL_FIELDS",
    "AgreementKey",
    "AgreementRow",
    "AgreementTally",
    "Audit",
    "Comparison",
    "ControllerState",
    "FieldAgreement",
    "Interval",
    "QualityTarget",
    "ReportFacts",
    "Shuffle",
    "SizeChange",
    "Tolerance",
    "compare_answers",
    "field_kinds",
    "observe",
    "position_bucket",
    "wilson",
]
