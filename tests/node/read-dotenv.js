// Reads .env texts the way Node apps do: one JSON-encoded text per stdin line in, one JSON line out per
// text, {"dotenv16": {...}, "dotenv17": {...}, "dotenv18": {...}}, each as that version's parse() sees it.
// One process serves a whole test module, so hundreds of examples cost one Node start-up.
'use strict'

const readline = require('node:readline')

const parsers = {
  dotenv16: require('dotenv16').parse,
  dotenv17: require('dotenv17').parse,
  dotenv18: require('dotenv18').parse
}

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
lines.on('line', (line) => {
  const text = JSON.parse(line)
  const answer = {}
  for (const [name, parse] of Object.entries(parsers)) {
    // parse() returns a plain object; copy its own entries so key order and values survive JSON.
    answer[name] = Object.entries(parse(text))
  }
  process.stdout.write(JSON.stringify(answer) + '\n')
})
