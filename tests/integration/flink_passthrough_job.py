"""A minimal PyFlink job for the platform test: reads one Kafka topic, upper-cases, writes another."""

import sys

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)

bootstrap, source_topic, sink_topic, job_name = sys.argv[1:5]
env = StreamExecutionEnvironment.get_execution_environment()
env.enable_checkpointing(1000)
source = (
    KafkaSource.builder()
    .set_bootstrap_servers(bootstrap)
    .set_topics(source_topic)
    .set_group_id(job_name)
    .set_starting_offsets(KafkaOffsetsInitializer.earliest())
    .set_value_only_deserializer(SimpleStringSchema())
    .build()
)
sink = (
    KafkaSink.builder()
    .set_bootstrap_servers(bootstrap)
    .set_record_serializer(
        KafkaRecordSerializationSchema.builder()
        .set_topic(sink_topic)
        .set_value_serialization_schema(SimpleStringSchema())
        .build()
    )
    .build()
)
(
    env.from_source(source, WatermarkStrategy.no_watermarks(), "source")
    .map(lambda v: v.upper(), output_type=Types.STRING())
    .sink_to(sink)
)
env.execute_async(job_name)
