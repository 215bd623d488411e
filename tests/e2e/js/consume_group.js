'use strict'
// Usage: node consume_group.js BOOTSTRAP TOPIC GROUP COUNT OUTPUT.jsonl
//
// A KafkaJS consumer in consumer group GROUP: subscribes to TOPIC from the
// earliest offset (when the group has no committed offset), writes every
// message as a JSON line to OUTPUT and commits each batch's offsets after
// writing it, and stops (leaving the group) once it has written at least
// COUNT messages. Run it twice with a smaller COUNT to check that a rejoining
// consumer continues where the group committed.
//
// OUTPUT lines: {"p", "o", "ts", "tt": "CreateTime"|"LogAppendTime",
//  "k": b64|null, "v": b64|null, "h": [[name, b64|null], ...]}
const fs = require('fs')
const { Kafka, logLevel } = require('kafkajs')
const { registerCodecs } = require('./codecs')

const b64 = buf => (buf === null || buf === undefined ? null : buf.toString('base64'))
const TIMEOUT_MS = 240000

async function main() {
  const [bootstrap, topic, groupId, countArg, output] = process.argv.slice(2)
  const target = Number(countArg)
  await registerCodecs()
  const kafka = new Kafka({
    clientId: 'strata-e2e-kafkajs-group',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    connectionTimeout: 10000,
    requestTimeout: 30000,
  })
  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 1000, maxBytes: 8 << 20 })
  const out = fs.openSync(output, 'a')
  let written = 0
  let finish
  const done = new Promise(resolve => { finish = resolve })
  const timer = setTimeout(() => finish(new Error(`timed out after ${written} messages`)), TIMEOUT_MS)

  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  await consumer.run({
    autoCommit: false,
    eachBatch: async ({ batch, heartbeat, isRunning, isStale }) => {
      if (!isRunning() || isStale() || written >= target) return
      const lines = []
      for (const m of batch.messages) {
        if (m.isControlRecord) continue
        const headers = []
        for (const [name, value] of Object.entries(m.headers || {})) {
          for (const v of Array.isArray(value) ? value : [value]) headers.push([name, b64(v)])
        }
        lines.push(JSON.stringify({
          p: batch.partition,
          o: Number(m.offset),
          ts: Number(m.timestamp),
          tt: m.batchContext && m.batchContext.timestampType === 1 ? 'LogAppendTime' : 'CreateTime',
          k: b64(m.key),
          v: b64(m.value),
          h: headers,
        }))
      }
      if (lines.length === 0) return
      fs.writeSync(out, lines.join('\n') + '\n')
      fs.fsyncSync(out)
      written += lines.length
      const next = (BigInt(batch.lastOffset()) + 1n).toString()
      await consumer.commitOffsets([{ topic, partition: batch.partition, offset: next }])
      await heartbeat()
      if (written >= target) finish(null)
    },
  })
  const err = await done
  clearTimeout(timer)
  await consumer.disconnect()
  fs.closeSync(out)
  if (err) throw err
}

main().catch(e => {
  console.error(e && e.stack ? e.stack : e)
  process.exit(1)
})
