'use strict'
// Usage: node fetch.js BOOTSTRAP TOPIC PARTITIONS OUTPUT.jsonl
//
// KafkaJS's consumer always joins a consumer group, which strata does not
// support yet. This reads with KafkaJS's own Cluster/Broker classes instead
// (the ones its consumer uses underneath): Fetch requests from offset 0 of
// every partition until the high watermark, decoded (and decompressed) by
// KafkaJS. Internal modules, hence the exact kafkajs pin in package.json.
//
// OUTPUT gets one line per record, in delivery order:
// {"p", "o", "ts", "tt": "CreateTime"|"LogAppendTime", "k": b64|null,
//  "v": b64|null, "h": [[name, b64|null], ...]}
const fs = require('fs')
const Cluster = require('kafkajs/src/cluster')
const { createLogger, LEVELS } = require('kafkajs/src/loggers')
const LoggerConsole = require('kafkajs/src/loggers/console')
const socketFactory = require('kafkajs/src/network/socketFactory')
const TimestampTypes = require('kafkajs/src/protocol/timestampTypes')
const { registerCodecs } = require('./codecs')

const b64 = buf => (buf === null || buf === undefined ? null : buf.toString('base64'))
const TIMEOUT_MS = 240000
const show = o => JSON.stringify(o, (_, v) => (typeof v === 'bigint' ? v.toString() : v))

async function main() {
  const [bootstrap, topic, partitionCount, output] = process.argv.slice(2)
  await registerCodecs()
  const cluster = new Cluster({
    logger: createLogger({ level: LEVELS.WARN, logCreator: LoggerConsole }),
    socketFactory: socketFactory(),
    brokers: [bootstrap],
    clientId: 'strata-e2e-kafkajs-fetch',
    connectionTimeout: 10000,
    requestTimeout: 30000,
    enforceRequestTimeout: true,
    allowAutoTopicCreation: false,
  })
  await cluster.connect()
  await cluster.addTargetTopic(topic)

  const partitions = [...Array(Number(partitionCount)).keys()]
  const offsets = await cluster.fetchTopicsOffset([
    { topic, partitions: partitions.map(partition => ({ partition })) },
  ])
  const high = {}
  for (const { partition, offset } of offsets[0].partitions) high[partition] = BigInt(offset)
  const position = Object.fromEntries(partitions.map(p => [p, 0n]))
  const leaders = cluster.findLeaderForPartitions(topic, partitions)

  const out = fs.openSync(output, 'w')
  const deadline = Date.now() + TIMEOUT_MS
  try {
    for (const [nodeId, leaderPartitions] of Object.entries(leaders)) {
      const broker = await cluster.findBroker({ nodeId })
      for (;;) {
        const pending = leaderPartitions.filter(p => position[p] < high[p])
        if (pending.length === 0) break
        if (Date.now() > deadline) throw new Error(`timed out: positions ${show(position)}, high watermarks ${show(high)}`)
        const response = await broker.fetch({
          replicaId: -1,
          maxWaitTime: 100,
          minBytes: 1,
          maxBytes: 8 * 1024 * 1024,
          topics: [{
            topic,
            partitions: pending.map(p => ({ partition: p, fetchOffset: position[p].toString(), maxBytes: 1024 * 1024 })),
          }],
        })
        const lines = []
        for (const { partitions: results } of response.responses) {
          for (const { partition, errorCode, messages } of results) {
            if (errorCode !== 0) throw new Error(`fetch error ${errorCode} on partition ${partition}`)
            for (const m of messages) {
              const offset = BigInt(m.offset)
              // A fetch may return a whole batch that starts before the
              // requested offset; skip what we already have.
              if (offset < position[partition]) continue
              if (m.isControlRecord) throw new Error(`unexpected control record at ${partition}/${offset}`)
              const headers = []
              for (const [name, value] of Object.entries(m.headers)) {
                for (const v of Array.isArray(value) ? value : [value]) headers.push([name, b64(v)])
              }
              lines.push(JSON.stringify({
                p: partition,
                o: Number(offset),
                ts: Number(m.timestamp),
                tt: m.batchContext.timestampType === TimestampTypes.LOG_APPEND_TIME ? 'LogAppendTime' : 'CreateTime',
                k: b64(m.key),
                v: b64(m.value),
                h: headers,
              }))
              position[partition] = offset + 1n
            }
          }
        }
        if (lines.length) fs.writeSync(out, lines.join('\n') + '\n')
      }
    }
  } finally {
    fs.closeSync(out)
    await cluster.disconnect()
  }
}

main().catch(e => {
  console.error(e && e.stack ? e.stack : e)
  process.exit(1)
})
