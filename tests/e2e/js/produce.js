'use strict'
// Usage: node produce.js BOOTSTRAP TOPIC CODEC INPUT.jsonl OUTPUT.json
//
// INPUT has one message per line: {"p": partition, "k": b64|null,
// "v": b64|null, "h": [[name, b64|null], ...], "ts": ms}. Messages are sent
// in input order, in chunks (one sendBatch request each, awaited before the
// next, so order per partition is kept). OUTPUT receives
// {"offsets": [...]} with the offset the broker acknowledged for each input
// line, derived from each partition's baseOffset in the produce response.
const fs = require('fs')
const readline = require('readline')
const { Kafka, logLevel, Partitioners } = require('kafkajs')
const { registerCodecs, CODECS } = require('./codecs')

const CHUNK = 5000

const b64 = s => (s === null ? null : Buffer.from(s, 'base64'))

async function readMessages(path) {
  const messages = []
  const lines = readline.createInterface({ input: fs.createReadStream(path), crlfDelay: Infinity })
  for await (const line of lines) {
    if (!line) continue
    const m = JSON.parse(line)
    // KafkaJS takes duplicate header names as an array of values.
    const headers = {}
    for (const [name, value] of m.h) {
      const v = b64(value)
      if (!(name in headers)) headers[name] = v
      else if (Array.isArray(headers[name])) headers[name].push(v)
      else headers[name] = [headers[name], v]
    }
    messages.push({ partition: m.p, key: b64(m.k), value: b64(m.v), headers, timestamp: String(m.ts) })
  }
  return messages
}

async function main() {
  const [bootstrap, topic, codec, input, output] = process.argv.slice(2)
  if (!(codec in CODECS)) throw new Error(`unknown codec ${codec}`)
  await registerCodecs()
  const messages = await readMessages(input)

  const kafka = new Kafka({ clientId: 'strata-e2e-kafkajs', brokers: [bootstrap], logLevel: logLevel.WARN })
  const producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    allowAutoTopicCreation: false,
    createPartitioner: Partitioners.DefaultPartitioner,
  })
  await producer.connect()
  const offsets = new Array(messages.length).fill(-1)
  try {
    for (let start = 0; start < messages.length; start += CHUNK) {
      const chunk = messages.slice(start, start + CHUNK)
      const results = await producer.send({ topic, acks: -1, compression: CODECS[codec], messages: chunk })
      const next = {}
      for (const r of results) {
        if (r.errorCode !== 0) throw new Error(`produce error ${JSON.stringify(r)}`)
        next[r.partition] = BigInt(r.baseOffset)
      }
      chunk.forEach((m, i) => {
        if (next[m.partition] === undefined) throw new Error(`no produce result for partition ${m.partition}`)
        offsets[start + i] = Number(next[m.partition]++)
      })
    }
  } finally {
    await producer.disconnect()
  }
  fs.writeFileSync(output, JSON.stringify({ offsets }))
}

main().catch(e => {
  console.error(e && e.stack ? e.stack : e)
  process.exit(1)
})
