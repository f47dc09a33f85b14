package yahoollm.flink;

import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.types.Row;

/**
 * Serializes one field of a Row as UTF-8. PyFlink's Kafka sink serializes the whole record for both
 * key and value; the job emits Row(topic, key, value) and picks field 1 for the key and field 2 for
 * the value, so every record is keyed by question_id. A null field becomes a null key/value.
 */
public class RowFieldSerializationSchema implements SerializationSchema<Row> {
    private static final long serialVersionUID = 1L;
    private final int field;

    public RowFieldSerializationSchema(int field) {
        this.field = field;
    }

    @Override
    public byte[] serialize(Row row) {
        Object value = row.getField(field);
        return value == null ? null : value.toString().getBytes(StandardCharsets.UTF_8);
    }
}
