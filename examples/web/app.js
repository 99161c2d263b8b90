// The page: loads a bundle (edgeseq.json, vocabularies, generate.onnx and its weights.bin) over HTTP and
// translates with onnxruntime-web (WebAssembly, one thread). Everything is fetched from the same server.
//
//   index.html?bundle=URL&text=...&text=...&beam=N&max_new_tokens=N
//
// With text parameters the page translates them at once; #out then holds one line per source, exactly as
// `edgeseq generate` prints them, and #out gets data-done="ok" (or "error", with the message in #error).
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const { EdgeseqError } = edgeseq;
  const params = new URLSearchParams(location.search);

  ort.env.wasm.numThreads = 1; // no SharedArrayBuffer: works without cross-origin isolation headers
  ort.env.wasm.wasmPaths = new URL('node_modules/onnxruntime-web/dist/', location.href).href;

  const loaded = new Map(); // bundle URL -> Promise of its Translator

  async function fetchBytes(url) {
    const r = await fetch(url);
    if (!r.ok) throw new EdgeseqError(`cannot fetch ${url}: HTTP ${r.status}`);
    return new Uint8Array(await r.arrayBuffer());
  }

  const json = (bytes, where) => {
    try {
      return JSON.parse(new TextDecoder('utf-8').decode(bytes));
    } catch (e) {
      throw new EdgeseqError(`${where}: not valid JSON (${e.message})`);
    }
  };

  async function sha256(bytes) {
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
    return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  async function load(base) {
    const manifest = edgeseq.readManifest(json(await fetchBytes(new URL('edgeseq.json', base)), 'edgeseq.json'));
    const names = [manifest.graphFile, manifest.sourceFile, manifest.targetFile, ...manifest.weightFiles];
    const files = {};
    await Promise.all(names.map(async (n) => (files[n] = await fetchBytes(new URL(n, base)))));
    if (globalThis.crypto && crypto.subtle) { // only in a secure context (https, localhost)
      for (const n of names) {
        if (manifest.sha256[n] && (await sha256(files[n])) !== manifest.sha256[n]) {
          throw new EdgeseqError(`${n}: checksum mismatch with the manifest: the file was modified after export`);
        }
      }
    }
    const session = await ort.InferenceSession.create(files[manifest.graphFile], {
      executionProviders: ['wasm'],
      // generate.onnx keeps its weights in weights.bin (ONNX external data), given here by its file name.
      externalData: manifest.weightFiles.map((n) => ({ path: n, data: files[n] })),
    });
    const source = new edgeseq.Vocab(json(files[manifest.sourceFile], manifest.sourceFile), manifest.sourceFile);
    const target = new edgeseq.Vocab(json(files[manifest.targetFile], manifest.targetFile), manifest.targetFile);
    return new edgeseq.Translator(ort, session, manifest, source, target);
  }

  function translator(url) {
    const base = new URL(url.endsWith('/') ? url : url + '/', location.href).href;
    if (!loaded.has(base)) loaded.set(base, load(base));
    return loaded.get(base);
  }

  const whole = (v) => (v === '' || v === null ? undefined : /^[0-9]+$/.test(v) ? Number(v) : NaN);

  async function run(lines) {
    const out = $('out');
    out.textContent = $('error').textContent = '';
    delete out.dataset.done;
    $('status').textContent = 'working...';
    try {
      const t0 = performance.now();
      const tr = await translator($('bundle').value);
      const t1 = performance.now();
      const overrides = { beamSize: whole($('beam').value), maxNewTokens: whole(params.get('max_new_tokens')) };
      let results;
      try {
        results = await tr.translate(lines, overrides);
      } catch (e) {
        if (e.results) out.textContent = e.results.map((r) => edgeseq.outputLine(r) + '\n').join('');
        throw e;
      }
      const t2 = performance.now();
      out.textContent = results.map((r) => edgeseq.outputLine(r) + '\n').join('');
      out.dataset.loadMs = (t1 - t0).toFixed(1);
      out.dataset.translateMs = (t2 - t1).toFixed(1);
      $('status').textContent = `${results.length} line(s) in ${(t2 - t1).toFixed(0)} ms (bundle loaded in ${(t1 - t0).toFixed(0)} ms)`;
      out.dataset.done = 'ok';
    } catch (e) {
      $('error').textContent = (e instanceof EdgeseqError ? '' : `${e && e.name ? e.name : 'Error'}: `) +
        String(e && e.message ? e.message : e).split('\n')[0];
      $('status').textContent = 'failed';
      out.dataset.done = 'error';
    }
  }

  $('bundle').value = params.get('bundle') || '../bundle/';
  $('beam').value = params.get('beam') || ''; // empty: the bundle's default
  const texts = params.getAll('text'); // each one source, newlines and all
  $('texts').value = texts.join('\n');
  $('go').addEventListener('click', () => {
    const lines = $('texts').value.split('\n');
    if (lines.length > 1 && lines[lines.length - 1] === '') lines.pop();
    run(lines);
  });
  if (texts.length) run(texts);
})();
