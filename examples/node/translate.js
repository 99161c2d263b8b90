#!/usr/bin/env node
// Translate with an edgeseq bundle from Node.js: its generate.onnx on onnxruntime-node, no Python.
//
//   node examples/node/translate.js BUNDLE_DIR [--beam N] [--max-new-tokens N] [--no-verify] TEXT...
//   node examples/node/translate.js BUNDLE_DIR --input FILE      (one source per line; '-': stdin)
//
// Prints one line per source, as `edgeseq generate BUNDLE_DIR TEXT...` does. User errors are one line
// on stderr and exit status 1. --timing: load and translate times on stderr.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const edgeseq = require('./edgeseq.js');

const { EdgeseqError } = edgeseq;
const USAGE =
  'usage: translate.js BUNDLE_DIR [--beam N] [--max-new-tokens N] [--no-verify] [--timing] (TEXT... | --input FILE)';

function parseArgs(argv) {
  const args = { texts: [], overrides: {}, verify: true, timing: false };
  const positive = (flag, value) => {
    if (value === undefined || !/^[0-9]+$/.test(value)) throw new EdgeseqError(`${flag} needs a whole number`);
    return Number(value);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.startsWith('--') && a.includes('=') ? a.split(/=(.*)/s) : [a, undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    if (flag === '--beam') args.overrides.beamSize = positive('--beam', value());
    else if (flag === '--max-new-tokens') args.overrides.maxNewTokens = positive('--max-new-tokens', value());
    else if (flag === '--input') args.input = value();
    else if (flag === '--no-verify') args.verify = false;
    else if (flag === '--timing') args.timing = true;
    else if (flag === '-h' || flag === '--help') {
      process.stdout.write(USAGE + '\n');
      process.exit(0);
    } else if (flag === '--') {
      args.texts.push(...argv.slice(i + 1));
      break;
    } else if (a.startsWith('--')) throw new EdgeseqError(`unknown option ${a} (${USAGE})`);
    else if (args.bundle === undefined) args.bundle = a;
    else args.texts.push(a);
  }
  if (args.bundle === undefined) throw new EdgeseqError(USAGE);
  if (args.texts.length === 1 && args.texts[0] === '-') [args.input, args.texts] = ['-', []]; // as edgeseq generate
  if (args.input !== undefined && args.texts.length) {
    throw new EdgeseqError('give sources either as arguments or with --input, not both');
  }
  if (args.input === undefined && !args.texts.length) {
    throw new EdgeseqError('no sources: pass text arguments or --input FILE (\'-\' for standard input)');
  }
  return args;
}

function readFile(file, what) {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new EdgeseqError(`cannot read ${what} ${file}: ${e.code || e.message}`);
  }
}

function readJson(file) {
  try {
    return JSON.parse(readFile(file, 'file').toString('utf-8'));
  } catch (e) {
    if (e instanceof EdgeseqError) throw e;
    throw new EdgeseqError(`${file}: not valid JSON (${e.message})`);
  }
}

/** The bundle's files against the manifest's sha256 (as the Python runtime checks them by default). */
function verify(dir, manifest) {
  for (const [name, digest] of Object.entries(manifest.sha256)) {
    const file = path.join(dir, name);
    const h = crypto.createHash('sha256').update(readFile(file, 'bundle file')).digest('hex');
    if (h !== digest) {
      throw new EdgeseqError(`${file}: checksum mismatch with the manifest: the file was modified after export`);
    }
  }
}

async function loadTranslator(dir, check = true) {
  const ort = require('onnxruntime-node');
  const manifest = edgeseq.readManifest(readJson(path.join(dir, 'edgeseq.json')), path.join(dir, 'edgeseq.json'));
  if (check) verify(dir, manifest);
  const source = new edgeseq.Vocab(readJson(path.join(dir, manifest.sourceFile)), manifest.sourceFile);
  const target = new edgeseq.Vocab(readJson(path.join(dir, manifest.targetFile)), manifest.targetFile);
  // ONNX Runtime reads the external data (weights.bin) beside generate.onnx itself.
  const session = await ort.InferenceSession.create(path.join(dir, manifest.graphFile));
  return new edgeseq.Translator(ort, session, manifest, source, target);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const lines =
    args.input === undefined
      ? args.texts
      : args.input === '-'
        ? edgeseq.splitLines(readFile(0, 'stdin'), 'stdin')
        : edgeseq.splitLines(readFile(args.input, '--input'), args.input);
  const t0 = performance.now();
  const translator = await loadTranslator(args.bundle, args.verify);
  const t1 = performance.now();
  let results;
  try {
    results = await translator.translate(lines, args.overrides);
  } catch (e) {
    if (e.results) process.stdout.write(e.results.map((r) => edgeseq.outputLine(r) + '\n').join(''));
    throw e;
  }
  process.stdout.write(results.map((r) => edgeseq.outputLine(r) + '\n').join(''));
  if (args.timing) {
    const t2 = performance.now();
    process.stderr.write(`translate.js: load ${(t1 - t0).toFixed(1)} ms, translate ${(t2 - t1).toFixed(1)} ms\n`);
  }
}

if (require.main === module) {
  main().catch((e) => {
    if (!(e instanceof EdgeseqError)) {
      const first = String(e && e.message ? e.message : e).split('\n')[0];
      // ONNX Runtime's own errors (a graph it cannot load or run) are one line too; anything else is a bug.
      if (!/onnxruntime|ORT|ONNX/i.test(first)) throw e;
      process.stderr.write(`translate.js: error: ${first}\n`);
    } else {
      process.stderr.write(`translate.js: error: ${e.message.split('\n')[0]}\n`);
    }
    process.exitCode = 1;
  });
}

module.exports = { loadTranslator };
