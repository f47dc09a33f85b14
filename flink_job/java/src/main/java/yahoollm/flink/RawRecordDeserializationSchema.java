package yahoollm.flink;

import java.util.Base64;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.flink.util.Collector;

/**
 * Hands every Kafka record to the Python job as it came, whatever its bytes: one line of JSON,
 * {"topic": ..., "partition": ..., "offset": ..., "key": base64 or null, "value": base64 or null}.
 *
 * SimpleStringSchema cannot do that: it throws on a null value (a tombstone), which fails the task
 * and makes Flink meet the same record again after every restart, and it silently replaces bytes
 * that are not UTF-8. Here nothing is decoded, so nothing can fail; the Python side decides (a null
 * value or bytes that are not a message go to dead-letter, with the partition, offset and key).
 * Base64 and the numbers need no JSON escaping; topic names are [a-zA-Z0-9._-] in Kafka.
 */
public class RawRecordDeserializationSchema implements KafkaRecordDeserializationSchema<String> {
    private static final long serialVersionUID = 1L;

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<String> out) {
        out.collect(
                "{\"topic\":\"" + record.topic()
                        + "\",\"partition\":" + record.partition()
                        + ",\"offset\":" + record.offset()
                        + ",\"key\":" + base64OrNull(record.key())
                        + ",\"value\":" + base64OrNull(record.value())
                        + "}");
    }

    private static String base64OrNull(byte[] bytes) {
        return bytes == null ? "null" : "\"" + Base64.getEncoder().encodeToString(bytes) + "\"";
    }

    @Override
    public TypeInformation<String> getProducedType() {
        return Types.STRING;
    }
}
