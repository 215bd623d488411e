'use strict'
// Usage: node create_topic.js BOOTSTRAP TOPIC PARTITIONS REPLICATION_FACTOR
//
// Creates a topic with KafkaJS's admin client and waits for its leaders.
const { Kafka, logLevel } = require('kafkajs')

async function main() {
  const [bootstrap, topic, partitions, replicationFactor] = process.argv.slice(2)
  const kafka = new Kafka({ clientId: 'strata-e2e-kafkajs-admin', brokers: [bootstrap], logLevel: logLevel.WARN })
  const admin = kafka.admin()
  await admin.connect()
  try {
    const created = await admin.createTopics({
      waitForLeaders: true,
      topics: [{ topic, numPartitions: Number(partitions), replicationFactor: Number(replicationFactor) }],
    })
    if (!created) throw new Error(`topic ${topic} already exists`)
  } finally {
    await admin.disconnect()
  }
}

main().catch(e => {
  console.error(e)
  process.exit(1)
})
