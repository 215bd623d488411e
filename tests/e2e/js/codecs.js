'use strict'
// Registers pure-JS/WASM Snappy, LZ4 and ZSTD codecs with KafkaJS, which
// only ships GZIP. Kafka's LZ4 is the LZ4 frame format; Snappy may arrive
// raw or in xerial framing (kafkajs-snappy reads both).
const { CompressionTypes, CompressionCodecs } = require('kafkajs')
const SnappyCodec = require('kafkajs-snappy')
const lz4 = require('lz4js')
const zstd = require('@bokuweb/zstd-wasm')

const LZ4Codec = () => ({
  async compress(encoder) {
    return Buffer.from(lz4.compress(encoder.buffer))
  },
  async decompress(buffer) {
    return Buffer.from(lz4.decompress(buffer))
  },
})

const ZstdCodec = () => ({
  async compress(encoder) {
    return Buffer.from(zstd.compress(encoder.buffer, 3))
  },
  async decompress(buffer) {
    return Buffer.from(zstd.decompress(buffer))
  },
})

async function registerCodecs() {
  await zstd.init()
  CompressionCodecs[CompressionTypes.Snappy] = SnappyCodec
  CompressionCodecs[CompressionTypes.LZ4] = LZ4Codec
  CompressionCodecs[CompressionTypes.ZSTD] = ZstdCodec
}

const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
}

module.exports = { registerCodecs, CODECS }
