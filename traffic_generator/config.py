from __future__ import annotations

from pathlib import Path

from common.dataset import SAMPLE_CSV
from common.settings import StackSettings


class TrafficSettings(StackSettings):
    """The command line's defaults (`storage_url`, from STORAGE_URL or STORAGE_PORT, is the target)."""

    traffic_csv: Path = SAMPLE_CSV
    traffic_count: int = 50
    traffic_rate: float = 2.0  # requests per second
    traffic_distribution: str = "poisson"
    traffic_repeat_ratio: float = 0.2
