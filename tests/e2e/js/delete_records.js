'use strict'
// Usage: node delete_records.js BOOTSTRAP TOPIC PARTITION OFFSET
//
// Deletes the records below OFFSET with KafkaJS's admin client
// (admin.deleteTopicRecords, the DeleteRecords API), then prints the
// partition's offsets as JSON: {"low": ..., "high": ...}.
const { Kafka, logLevel } = require('kafkajs')

async function main() {
  const [bootstrap, topic, partition, offset] = process.argv.slice(2)
  const kafka = new Kafka({ clientId: 'strata-e2e-kafkajs-admin', brokers: [bootstrap], logLevel: logLevel.WARN })
  const admin = kafka.admin()
  await admin.connect()
  try {
    // deleteTopicRecords needs the topic's leaders in KafkaJS's metadata cache.
    await admin.fetchTopicMetadata({ topics: [topic] })
    await admin.deleteTopicRecords({ topic, partitions: [{ partition: Number(partition), offset }] })
    const offsets = await admin.fetchTopicOffsets(topic)
    const p = offsets.find(o => o.partition === Number(partition))
    console.log(JSON.stringify({ low: Number(p.low), high: Number(p.high) }))
  } finally {
    await admin.disconnect()
  }
}

main().catch(e => {
  console.error(e)
  process.exit(1)
})
