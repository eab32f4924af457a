"""Names of the models and of the prediction outputs that cross a process boundary.

The agent names its predictions with these (`agent.inference`), its alert rules read them
(`agent.alerts`), and the cloud's views look them up (`cloud.web.queries`, the Grafana dashboards):
one definition, so that a name cannot differ between the bus and the fleet page.
"""

from __future__ import annotations

from typing import Final

# ONNX metadata keys read across processes: the trainer writes them (`models.export`), the agent's loader
# and `voltgate-cloud fleet model push` read them.
MODEL_NAME_KEY: Final = "voltgate.model"
FEATURE_VERSION_KEY: Final = "voltgate.feature_version"

# Models (the `voltgate.model` entry of each shipped ONNX file's metadata).
SOC_DROP_MODEL: Final = "soc_drop"
LARGE_DROP_MODEL: Final = "large_drop"
FAULT_RISK_MODEL: Final = "fault_risk"

# Outputs, as they travel in `PredictionRecord.output`.
SOC_DROP_PP: Final = "soc_drop_60min_pp"
"""Predicted SOC now minus SOC in 60 minutes, percentage points (negative while charging)."""
SOC_DROP_KWH: Final = "soc_drop_60min_kwh"
"""The same drop as energy: pp × nominal pack energy × SOH."""
P_LARGE_DROP: Final = "p_large_drop_60min"
"""Probability that SOC drops by more than the large-drop threshold within 60 minutes."""
P_FAULT: Final = "p_fault_30min"
"""Probability of a battery fault within 30 minutes."""

SOC_DROP_HORIZON_MIN: Final = 60
