"""python -m retry_consumers overload | quota"""

import argparse

from common.logging import configure_logging
from common.settings import PipelineSettings
from retry_consumers.worker import STRATEGIES, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="retry_consumers")
    parser.add_argument("strategy", choices=sorted(STRATEGIES))
    strategy = parser.parse_args().strategy
    settings = PipelineSettings()
    configure_logging(f"retry-{strategy}-consumer", settings.log_level)
    run(strategy, settings)
