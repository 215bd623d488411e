'use strict'
// Usage: node secure_roundtrip.js BOOTSTRAP TOPIC COUNT
//
// Produces COUNT messages with KafkaJS and reads them back in a consumer
// group, over the security the environment names:
//   STRATA_SSL_CA        CA bundle (turns TLS on)
//   STRATA_SASL_MECH     plain | scram-sha-256 | scram-sha-512
//   STRATA_SASL_USER / STRATA_SASL_PASS
// Prints {"consumed": [...]} or, on failure, {"error": NAME, "message": ...}.
const fs = require('fs')
const { Kafka, logLevel } = require('kafkajs')

async function main() {
  const [bootstrap, topic, count] = process.argv.slice(2)
  const config = { clientId: 'strata-e2e-secure', brokers: [bootstrap], logLevel: logLevel.NOTHING,
    retry: { retries: 2 }, connectionTimeout: 5000, authenticationTimeout: 5000 }
  if (process.env.STRATA_SSL_CA) config.ssl = { ca: [fs.readFileSync(process.env.STRATA_SSL_CA)] }
  if (process.env.STRATA_SASL_MECH) {
    config.sasl = { mechanism: process.env.STRATA_SASL_MECH, username: process.env.STRATA_SASL_USER,
      password: process.env.STRATA_SASL_PASS }
  }
  const kafka = new Kafka(config)
  const producer = kafka.producer()
  await producer.connect()
  const n = Number(count)
  await producer.send({ topic, acks: -1,
    messages: Array.from({ length: n }, (_, i) => ({ value: `kafkajs-${i}` })) })
  await producer.disconnect()
  const consumer = kafka.consumer({ groupId: `${topic}-group` })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const got = []
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${got.length} of ${n} messages in 30 s`)), 30000)
    consumer.run({ eachMessage: async ({ message }) => {
      got.push(message.value.toString())
      if (got.length >= n) { clearTimeout(timer); resolve() }
    } }).catch(reject)
  })
  await consumer.disconnect()
  console.log(JSON.stringify({ consumed: got }))
}

main().catch(e => {
  console.log(JSON.stringify({ error: e.name, message: e.message }))
  process.exit(1)
})
