#!/usr/bin/env node
// Runs the web example in headless Chromium and prints its translations, one line per source, as
// `edgeseq generate` does: the test driver of examples/web (tests/test_outside_python.py).
//
//   node examples/web/check.js BUNDLE_DIR [--beam N] [--max-new-tokens N] [--timing] (TEXT... | --input FILE)
//   node examples/web/check.js BUNDLE_DIR --serve PORT      (only serve: open /web/index.html in a browser)
//
// It serves this folder (the page and its node_modules/onnxruntime-web), ../node/edgeseq.js and BUNDLE_DIR
// (as /bundle/) from a local static server on 127.0.0.1, opens the page in Chromium (CHROMIUM, default
// /usr/bin/chromium) with a fresh profile, waits for #out[data-done] and prints #out. Nothing is fetched
// from the network. --timing: the page's load and translate times on stderr.
'use strict';

const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const edgeseq = require('../node/edgeseq.js');

const { EdgeseqError } = edgeseq;
const HERE = __dirname;
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json; charset=utf-8',
};
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
];
const USAGE =
  'usage: check.js BUNDLE_DIR [--beam N] [--max-new-tokens N] [--timing] (TEXT... | --input FILE), or BUNDLE_DIR --serve PORT';

function parseArgs(argv) {
  const args = { texts: [], query: [], timing: false, timeout: 120000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const number = (flag) => {
      const v = argv[++i];
      if (v === undefined || !/^[0-9]+$/.test(v)) throw new EdgeseqError(`${flag} needs a whole number`);
      return v;
    };
    if (a === '--beam') args.query.push(['beam', number(a)]);
    else if (a === '--max-new-tokens') args.query.push(['max_new_tokens', number(a)]);
    else if (a === '--timeout') args.timeout = Number(number(a)) * 1000;
    else if (a === '--input') args.input = argv[++i];
    else if (a === '--timing') args.timing = true;
    else if (a === '--serve') args.serve = Number(number(a));
    else if (a === '--') {
      args.texts.push(...argv.slice(i + 1));
      break;
    } else if (a.startsWith('--')) throw new EdgeseqError(`unknown option ${a} (${USAGE})`);
    else if (args.bundle === undefined) args.bundle = a;
    else args.texts.push(a);
  }
  if (args.bundle === undefined) throw new EdgeseqError(USAGE);
  if (args.input !== undefined) {
    if (args.texts.length) throw new EdgeseqError('give sources either as arguments or with --input, not both');
    args.texts = edgeseq.splitLines(fs.readFileSync(args.input), args.input);
  }
  if (!args.texts.length && args.serve === undefined) {
    throw new EdgeseqError('no sources: pass text arguments or --input FILE');
  }
  if (!fs.existsSync(path.join(args.bundle, 'edgeseq.json'))) {
    throw new EdgeseqError(`${args.bundle}: not a bundle directory (no edgeseq.json)`);
  }
  return args;
}

/** A static server for the page, the shared module and the bundle; nothing outside them. */
function serve(bundleDir, port = 0) {
  const roots = [
    ['/web/', HERE],
    ['/node/', path.join(HERE, '..', 'node')],
    ['/bundle/', path.resolve(bundleDir)],
  ];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    let file = null;
    for (const [prefix, root] of roots) {
      if (!url.pathname.startsWith(prefix)) continue;
      const rel = decodeURIComponent(url.pathname.slice(prefix.length));
      const candidate = path.resolve(root, rel);
      if (candidate.startsWith(root + path.sep) && !(prefix === '/node/' && rel !== 'edgeseq.js')) file = candidate;
    }
    fs.readFile(file || '/nonexistent', (err, data) => {
      if (err || req.method !== 'GET') {
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        res.end('not found');
        return;
      }
      res.writeHead(200, {
        'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream',
        'Cache-Control': 'no-store',
      });
      res.end(data);
    });
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.serve !== undefined) {
    const server = await serve(args.bundle, args.serve);
    const url = `http://127.0.0.1:${server.address().port}/web/index.html?bundle=/bundle/`;
    process.stdout.write(`serving the page and ${args.bundle} at ${url} (Ctrl-C to stop)\n`);
    return;
  }
  const puppeteer = require('puppeteer-core');
  const server = await serve(args.bundle);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'edgeseq-chromium-'));
  let browser;
  try {
    browser = await puppeteer.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: [...FLAGS, `--user-data-dir=${profile}`],
      timeout: 60000,
    });
    const page = await browser.newPage();
    const console_ = [];
    page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => console_.push(`pageerror: ${e.message}`));
    const query = new URLSearchParams([['bundle', '/bundle/'], ...args.query, ...args.texts.map((t) => ['text', t])]);
    const { port } = server.address();
    await page.goto(`http://127.0.0.1:${port}/web/index.html?${query}`);
    try {
      await page.waitForSelector('#out[data-done]', { timeout: args.timeout });
    } catch (e) {
      throw new EdgeseqError(`the page did not finish in ${args.timeout / 1000} s; its console: ${console_.join(' | ')}`);
    }
    const result = await page.evaluate(() => {
      const out = document.getElementById('out');
      return { done: out.dataset.done, text: out.textContent, error: document.getElementById('error').textContent,
        loadMs: out.dataset.loadMs, translateMs: out.dataset.translateMs };
    });
    process.stdout.write(result.text);
    if (result.done !== 'ok') throw new EdgeseqError(`the page failed: ${result.error}`);
    if (args.timing) process.stderr.write(`check.js: load ${result.loadMs} ms, translate ${result.translateMs} ms\n`);
  } finally {
    if (browser) await browser.close();
    server.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  if (!(e instanceof EdgeseqError)) throw e;
  process.stderr.write(`check.js: error: ${e.message.split('\n')[0]}\n`);
  process.exitCode = 1;
});
