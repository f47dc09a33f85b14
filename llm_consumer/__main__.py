"""python -m llm_consumer   (run two: they share the consumer group and split the partitions)"""

from common.logging import configure_logging
from llm_consumer.config import LLMConsumerSettings
from llm_consumer.worker import run

if __name__ == "__main__":
    settings = LLMConsumerSettings()
    configure_logging("llm-consumer", settings.log_level)
    run(settings)
