// edgeseq.js: run an edgeseq bundle's generate.onnx from JavaScript, without Python.
//
// One file for Node (require('./edgeseq.js')) and the browser (<script src=".../edgeseq.js">, as
// window.edgeseq). It does what the app must do around the graph, exactly as the Python runtime does it
// (edgeseq/vocab.py, edgeseq/runtime/tokenizer.py, edgeseq/runtime/graph_engine.py):
//   - read edgeseq.json (format 2) and its char or word vocabularies;
//   - encode text: normalize (nfkc, strip_accents, lower), split into characters or whitespace-separated
//     words, map pieces to ids (unknown ones to source_framing.unk, or refused), add prefix and suffix;
//   - build the feeds of generate.onnx, run it, and decode hypothesis 0 (or the n best) to text.
// It never touches files or the network itself: the caller gives it the manifest, the vocabularies and
// an ONNX Runtime session (onnxruntime-node or onnxruntime-web: the same API).
//
// Not supported yet: bundles whose tokenizer is SentencePiece or a Hugging Face tokenizer.json (their
// text needs a tokenizer library); they are refused with a one-line error, never decoded wrongly.

(function (root, factory) {
  if (typeof module === 'object' && module.exports) module.exports = factory();
  else root.edgeseq = factory();
})(typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  const FORMAT = 'edgeseq-bundle';
  const FORMAT_VERSIONS = [2];
  const GRAPH = 'generate';
  const SPECIALS = ['<pad>', '<s>', '</s>', '<unk>'];
  const ROLES = ['pad', 'bos', 'eos', 'unk'];
  const LEVELS = ['char', 'word'];
  const NORMALIZERS = ['nfkc', 'strip_accents', 'lower']; // applied in this order, whatever the file's order
  const MAX_TOKENS = 4096; // per batch: rows (sources x beams) x (longest source + max_new_tokens), as the CLI
  const MAX_NEW_TOKENS = 1 << 20;
  const MAX_BEAM = 1024;

  // Python's str.isspace() characters (str.split() and str.strip() use them); JavaScript's \s differs
  // (it has U+FEFF, it lacks U+001C..U+001F and U+0085).
  const WS = '\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
  const WS_RUN = new RegExp(`[${WS}]+`, 'u');
  const ONLY_WS = new RegExp(`^[${WS}]*$`, 'u');
  const LONE_SURROGATE = /[\uD800-\uDFFF]/u; // with the u flag, only unpaired halves match
  const MARK = /\p{Mn}/gu;
  const CONTROL = /\p{Cc}/gu;
  const ESCAPES = { '\n': '\\n', '\t': '\\t', '\r': '\\r' };

  /** A user error (bad bundle, bad input, bad option): shown as one line, no stack. */
  class EdgeseqError extends Error {}

  const isInt = (x) => Number.isInteger(x);
  const show = (s) => JSON.stringify(s);

  /** Text after the vocabulary's normalization steps (NORMALIZERS order), as vocab.normalized does. */
  function normalized(text, steps) {
    if (steps.includes('nfkc')) text = text.normalize('NFKC');
    if (steps.includes('strip_accents')) text = text.normalize('NFD').replace(MARK, '');
    if (steps.includes('lower')) text = text.toLowerCase();
    return text;
  }

  /** A text's pieces: its characters (code points), or its whitespace-separated words. */
  function split(text, level) {
    return level === 'char' ? Array.from(text) : text.split(WS_RUN).filter((w) => w !== '');
  }

  /** An edgeseq vocabulary (source_vocab.json / target_vocab.json): tokens in id order and special roles. */
  class Vocab {
    constructor(data, where = 'vocabulary') {
      if (!data || typeof data !== 'object' || !Array.isArray(data.tokens)) {
        throw new EdgeseqError(`${where}: expected an object with a 'tokens' list`);
      }
      const tokens = data.tokens;
      if (!tokens.every((t) => typeof t === 'string' && t.length > 0)) {
        throw new EdgeseqError(`${where}: every token must be a non-empty string`);
      }
      this.level = data.level === undefined ? 'char' : data.level;
      if (!LEVELS.includes(this.level)) {
        throw new EdgeseqError(`${where}: vocabulary level ${show(this.level)} is not one of ${LEVELS.join(', ')}`);
      }
      const normalize = data.normalize === undefined ? [] : data.normalize;
      if (!Array.isArray(normalize) || !normalize.every((n) => NORMALIZERS.includes(n))) {
        throw new EdgeseqError(`${where}: 'normalize' may use only ${NORMALIZERS.join(', ')}`);
      }
      this.normalize = NORMALIZERS.filter((n) => normalize.includes(n));
      this.tokens = tokens;
      this.index = new Map(tokens.map((t, i) => [t, i]));
      if (this.index.size !== tokens.length) {
        throw new EdgeseqError(`${where}: vocabulary has duplicate tokens: a token's id must be unique`);
      }
      this.specials = {};
      const specials = data.specials;
      if (specials === undefined || specials === null) {
        if (SPECIALS.some((t, i) => tokens[i] !== t)) {
          throw new EdgeseqError(`${where}: vocabulary must start with ${SPECIALS.join(' ')} or name its specials`);
        }
        ROLES.forEach((role, i) => (this.specials[role] = i));
      } else {
        for (const [role, value] of Object.entries(specials)) {
          if (!ROLES.includes(role)) throw new EdgeseqError(`${where}: unknown special role ${show(role)}`);
          if (value === null) continue;
          const id = typeof value === 'string' ? this.index.get(value) : value;
          if (!isInt(id) || id < 0 || id >= tokens.length) {
            throw new EdgeseqError(`${where}: special ${role} ${show(value)} is not a token of the vocabulary`);
          }
          this.specials[role] = id;
        }
      }
    }

    get eosId() {
      return this.specials.eos;
    }

    get size() {
      return this.tokens.length;
    }

    /** Text -> the ids of its pieces, nothing added; a piece the vocabulary lacks becomes `unknown`, or is
     * refused when `unknown` is null. */
    ids(text, unknown) {
      const out = [];
      for (const piece of split(normalized(text, this.normalize), this.level)) {
        let id = this.index.get(piece);
        if (id === undefined) {
          if (unknown === null || unknown === undefined) {
            throw new EdgeseqError(
              `cannot encode ${show(piece)} in ${show(text)}: it is not in the vocabulary, which has no <unk> token`
            );
          }
          id = unknown;
        }
        out.push(id);
      }
      return out;
    }

    /** Ids -> text, up to the end token; every other token is shown, special ones included. */
    decode(ids) {
      const pieces = [];
      for (const raw of ids) {
        const id = Number(raw);
        if (id === this.specials.eos) break;
        if (!(id >= 0 && id < this.tokens.length)) {
          throw new EdgeseqError(`token id ${id} is out of range for a vocabulary of ${this.tokens.length}`);
        }
        pieces.push(this.tokens[id]);
      }
      return pieces.join(this.level === 'char' ? '' : ' ');
    }
  }

  /** A file name of the bundle: plain, no directories (a manifest must not point elsewhere). */
  function plainName(name, field) {
    if (typeof name !== 'string' || !name || name === '.' || name === '..' || /[\\/\0]/.test(name)) {
      throw new EdgeseqError(`${field}: ${show(name)} must be a plain file name inside the bundle`);
    }
    return name;
  }

  function idList(value, field) {
    if (value === undefined) return [];
    if (!Array.isArray(value) || !value.every(isInt)) throw new EdgeseqError(`${field}: expected a list of ids`);
    return value;
  }

  /** What this example needs of edgeseq.json; refuses what it cannot decode exactly, naming the field. */
  function readManifest(data, where = 'edgeseq.json') {
    if (!data || typeof data !== 'object' || data.format !== FORMAT) {
      throw new EdgeseqError(`${where}: not an edgeseq bundle manifest (format ${show(FORMAT)})`);
    }
    if (!FORMAT_VERSIONS.includes(data.format_version)) {
      throw new EdgeseqError(
        `${where}: format_version ${show(data.format_version)} is not supported by this example ` +
          `(${FORMAT_VERSIONS.join(', ')}): re-export the bundle with the edgeseq that matches it`
      );
    }
    const graph = data.graphs && data.graphs[GRAPH];
    if (!graph) {
      throw new EdgeseqError(`${where}: the bundle has no generate.onnx (graphs.generate): export or quantize it again`);
    }
    const tok = data.tokenizer || {};
    if (tok.type !== 'vocab') {
      throw new EdgeseqError(
        `${where}: tokenizer type ${show(tok.type)} is not supported by this example yet ` +
          "(only edgeseq's char and word vocabularies, type \"vocab\"); decode it with the Python runtime"
      );
    }
    const inputs = new Map((graph.inputs || []).map((t) => [t.name, t]));
    if (!inputs.has('src_ids') || !inputs.has('src_mask')) {
      throw new EdgeseqError(`${where}: graphs.generate.inputs lacks src_ids or src_mask`);
    }
    const framing = data.source_framing || {};
    const generation = data.generation || {};
    // Decoding the graph cannot do: refused rather than decoded differently from the Python runtime.
    const unsupported = [];
    if (generation.sample) unsupported.push('sample');
    if (generation.repetition_penalty !== undefined && generation.repetition_penalty !== 1) {
      unsupported.push('repetition_penalty');
    }
    if (generation.no_repeat_ngram) unsupported.push('no_repeat_ngram');
    if (unsupported.length) {
      throw new EdgeseqError(
        `${where}: generation defaults ${unsupported.join(', ')} are not done by generate.onnx: use the Python runtime`
      );
    }
    const special = data.special_tokens || {};
    return {
      graphFile: plainName(graph.file, 'graphs.generate.file'),
      sha256: { [graph.file]: graph.sha256, ...(data.files || {}) },
      maskDtype: inputs.get('src_mask').dtype,
      sourceFile: plainName(tok.source, 'tokenizer.source'),
      targetFile: plainName(tok.target, 'tokenizer.target'),
      weightFiles: Object.keys(data.files || {}).filter((f) => f !== tok.source && f !== tok.target),
      prefix: idList(framing.prefix, 'source_framing.prefix'),
      suffix: idList(framing.suffix, 'source_framing.suffix'),
      pad: framing.pad === undefined ? 0 : framing.pad,
      unk: framing.unk === undefined ? null : framing.unk,
      maskedPadding: data.masked_padding !== false,
      maxSourceLength: data.max_source_length,
      maxTargetLength: data.max_target_length === undefined ? null : data.max_target_length,
      sourceVocabSize: data.source_vocab_size,
      targetVocabSize: data.target_vocab_size,
      eos: special.eos,
      defaults: {
        maxNewTokens: generation.max_new_tokens === undefined ? data.max_new_tokens : generation.max_new_tokens,
        minNewTokens: generation.min_new_tokens || 0,
        beamSize: generation.beam_size || 1,
        lengthPenalty: generation.length_penalty === undefined ? 1.0 : generation.length_penalty,
        earlyStopping: Boolean(generation.early_stopping),
        nbest: generation.nbest || 1,
        forcedEos: Boolean(generation.forced_eos),
        forcedBosToken: generation.forced_bos_token === undefined || generation.forced_bos_token === null
          ? -1 : generation.forced_bos_token,
      },
      bannedIds: idList(data.banned_tokens === null ? [] : data.banned_tokens, 'banned_tokens'),
    };
  }

  /** The manifest's defaults with `overrides` ({beamSize, maxNewTokens, ...}), checked as DecodingOptions. */
  function decodingOptions(manifest, overrides = {}) {
    const o = { ...manifest.defaults };
    for (const [k, v] of Object.entries(overrides)) if (v !== undefined && v !== null) o[k] = v;
    const p = [];
    if (!isInt(o.maxNewTokens) || o.maxNewTokens < 1 || o.maxNewTokens > MAX_NEW_TOKENS) {
      p.push(`max_new_tokens must be in 1..${MAX_NEW_TOKENS}, got ${o.maxNewTokens}`);
    }
    if (!isInt(o.minNewTokens) || o.minNewTokens < 0 || o.minNewTokens > o.maxNewTokens) {
      p.push(`min_new_tokens must be in 0..max_new_tokens (${o.maxNewTokens}), got ${o.minNewTokens}`);
    }
    if (!isInt(o.beamSize) || o.beamSize < 1 || o.beamSize > MAX_BEAM) {
      p.push(`beam_size must be in 1..${MAX_BEAM}, got ${o.beamSize}`);
    }
    if (!isInt(o.nbest) || o.nbest < 1 || (isInt(o.beamSize) && o.beamSize >= 1 && o.nbest > o.beamSize)) {
      p.push(`nbest must be in 1..beam_size (${o.beamSize}), got ${o.nbest}`);
    }
    if (!Number.isFinite(o.lengthPenalty) || Math.abs(o.lengthPenalty) > 100) {
      p.push(`length_penalty must be in [-100, 100], got ${o.lengthPenalty}`);
    }
    if (manifest.maxTargetLength && o.maxNewTokens > manifest.maxTargetLength) {
      p.push(`max_new_tokens ${o.maxNewTokens} exceeds this model's ${manifest.maxTargetLength} target positions`);
    }
    if (p.length) throw new EdgeseqError('invalid decoding options: ' + p.join('; '));
    return o;
  }

  /** A translation as one line: control characters escaped (\n, \t, \x1b), as `edgeseq generate` prints. */
  function escapeControls(text) {
    return text.replace(CONTROL, (c) => {
      const code = c.codePointAt(0);
      return ESCAPES[c] || (code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`);
    });
  }

  /** Lines of a file's bytes as `edgeseq generate --input` reads them: split at \n, UTF-8 (a byte order mark
   * kept as a character), one trailing \r removed; a final newline ends the last line. */
  function splitLines(bytes, name) {
    const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
    const lines = [];
    let start = 0;
    while (start < bytes.length) {
      let end = bytes.indexOf(10, start);
      if (end < 0) end = bytes.length;
      let text;
      try {
        text = decoder.decode(bytes.subarray(start, end));
      } catch (e) {
        throw new EdgeseqError(`${name}, line ${lines.length + 1}: not UTF-8 text`);
      }
      lines.push(text.endsWith('\r') ? text.slice(0, -1) : text);
      start = end + 1;
    }
    if (!lines.length) throw new EdgeseqError(`${name} is empty: give one source sentence per line`);
    return lines;
  }

  /** A bundle's text side and its generate.onnx session: texts in, translations out. */
  class Translator {
    /**
     * @param ort        the onnxruntime-node or onnxruntime-web module (for ort.Tensor)
     * @param session    an ort.InferenceSession on the bundle's generate.onnx
     * @param manifest   readManifest(edgeseq.json)
     * @param source     new Vocab(source vocabulary JSON); target likewise
     */
    constructor(ort, session, manifest, source, target) {
      this.ort = ort;
      this.session = session;
      this.manifest = manifest;
      this.source = source;
      this.target = target;
      const problems = [];
      if (manifest.unk !== null && source.specials.unk !== undefined && manifest.unk !== source.specials.unk) {
        problems.push(`source_framing.unk = ${manifest.unk} but the source vocabulary's unk is ${source.specials.unk}`);
      }
      if (manifest.eos !== undefined && target.eosId !== undefined && manifest.eos !== target.eosId) {
        problems.push(`special_tokens.eos = ${manifest.eos} but the target vocabulary's eos is ${target.eosId}`);
      }
      if (source.size > manifest.sourceVocabSize || target.size > manifest.targetVocabSize) {
        problems.push('a vocabulary has more tokens than the manifest\'s vocabulary size');
      }
      if (problems.length) throw new EdgeseqError('edgeseq.json: ' + problems.join('; '));
    }

    /** Source text -> the encoder's input ids: prefix + pieces + suffix (unknown pieces -> unk, or refused). */
    encode(text) {
      if (typeof text !== 'string' || ONLY_WS.test(text)) {
        throw new EdgeseqError('empty source text: give at least one character');
      }
      if (LONE_SURROGATE.test(text)) throw new EdgeseqError(`source text ${show(text)} is not valid UTF-8 text`);
      const m = this.manifest;
      const ids = [...m.prefix, ...this.source.ids(text, m.unk), ...m.suffix];
      if (ids.length > m.maxSourceLength) {
        throw new EdgeseqError(`${ids.length} tokens; this bundle takes at most ${m.maxSourceLength} (max_source_length)`);
      }
      return ids;
    }

    /** generate.onnx's inputs for a batch of framed sources (right-padded with source_framing.pad). */
    feeds(sources, o) {
      const { Tensor } = this.ort;
      const m = this.manifest;
      const width = Math.max(...sources.map((s) => s.length));
      const ids = new BigInt64Array(sources.length * width).fill(BigInt(m.pad));
      const mask = new Array(sources.length * width).fill(0);
      sources.forEach((s, i) => s.forEach((t, j) => {
        ids[i * width + j] = BigInt(t);
        mask[i * width + j] = 1;
      }));
      const dims = [sources.length, width];
      const int64 = (x) => new Tensor('int64', BigInt64Array.from([BigInt(x)]), []);
      const flag = (x) => new Tensor('int64', BigInt64Array.from([x ? 1n : 0n]), []); // 0/1 (not bool: see generate_graph.py)
      return {
        src_ids: new Tensor('int64', ids, dims),
        src_mask: maskTensor(Tensor, m.maskDtype, mask, dims),
        max_new_tokens: int64(o.maxNewTokens),
        min_new_tokens: int64(o.minNewTokens),
        beam_size: int64(o.beamSize),
        length_penalty: new Tensor('float32', Float32Array.from([o.lengthPenalty]), []),
        early_stopping: flag(o.earlyStopping),
        banned_ids: new Tensor('int64', BigInt64Array.from(m.bannedIds.map(BigInt)), [m.bannedIds.length]),
        forced_eos: flag(o.forcedEos),
        forced_bos_token: int64(o.forcedBosToken),
      };
    }

    /** Which sources run together (indices): sorted by length, at most MAX_TOKENS tokens a batch; for a model
     * whose results change with padding (masked_padding false), only sources of equal length. */
    batches(sources, o) {
      const order = sources.map((_, i) => i).sort((a, b) => sources[a].length - sources[b].length || a - b);
      const groups = [];
      let group = [];
      for (const i of order) {
        const n = sources[i].length; // sorted: the newcomer is the longest
        const fits = (group.length + 1) * o.beamSize * (n + o.maxNewTokens) <= MAX_TOKENS;
        const same = this.manifest.maskedPadding || (group.length && sources[group[0]].length === n);
        if (group.length && fits && same) {
          group.push(i);
        } else {
          if (group.length) groups.push(group);
          group = [i];
        }
      }
      if (group.length) groups.push(group);
      return groups;
    }

    /** Framed source id lists -> per source its hypotheses, best first: [{tokens, score}] (n best). */
    async generateIds(sources, o) {
      const results = new Array(sources.length);
      for (const group of this.batches(sources, o)) {
        const out = await this.session.run(this.feeds(group.map((i) => sources[i]), o));
        const [batch, hyps, len] = out.tokens.dims;
        const tokens = out.tokens.data, lengths = out.lengths.data, scores = out.scores.data;
        for (let b = 0; b < batch; b++) {
          const found = [];
          for (let h = 0; h < hyps; h++) {
            const n = Number(lengths[b * hyps + h]);
            if (n < 0) continue; // a slot beam search left empty
            const start = (b * hyps + h) * len;
            found.push({ tokens: Array.from(tokens.subarray(start, start + n), Number), score: scores[b * hyps + h] });
          }
          results[group[b]] = found.slice(0, o.nbest);
        }
      }
      return results;
    }

    /**
     * Translate texts; each result is {text, hypotheses: [{text, tokens, score}]} or {error} for a text the
     * model cannot take (`onError` "stop": throw at the first such text instead, naming its number).
     */
    async translate(texts, overrides = {}, onError = 'stop') {
      const o = decodingOptions(this.manifest, overrides);
      const encoded = texts.map((t) => {
        try {
          return { ids: this.encode(t) };
        } catch (e) {
          if (!(e instanceof EdgeseqError)) throw e;
          return { error: e.message };
        }
      });
      const bad = encoded.findIndex((e) => e.error !== undefined);
      const todo = onError === 'stop' && bad >= 0 ? encoded.slice(0, bad) : encoded;
      const good = todo.map((e, i) => i).filter((i) => todo[i].error === undefined);
      const hyps = good.length ? await this.generateIds(good.map((i) => todo[i].ids), o) : [];
      const results = todo.map((e) => ({ error: e.error }));
      good.forEach((i, k) => {
        const nbest = hyps[k].map((h) => ({ text: this.target.decode(h.tokens), tokens: h.tokens, score: h.score }));
        results[i] = { text: nbest.length ? nbest[0].text : '', hypotheses: nbest };
      });
      if (onError === 'stop' && bad >= 0) {
        const err = new EdgeseqError(`line ${bad + 1}: ${encoded[bad].error}`);
        err.results = results; // the lines before it, translated (the CLI prints them before the error)
        throw err;
      }
      return results;
    }
  }

  /** src_mask as the graph declares it (int64 for edgeseq's models; bool, int32 or float for others). */
  function maskTensor(Tensor, dtype, mask, dims) {
    switch (dtype) {
      case 'int64':
        return new Tensor('int64', BigInt64Array.from(mask, BigInt), dims);
      case 'int32':
        return new Tensor('int32', Int32Array.from(mask), dims);
      case 'bool':
        return new Tensor('bool', Uint8Array.from(mask), dims);
      case 'float32':
        return new Tensor('float32', Float32Array.from(mask), dims);
      default:
        throw new EdgeseqError(`graphs.generate: src_mask dtype ${show(dtype)} is not supported by this example`);
    }
  }

  /** One output line per source: its n best translations separated by tabs, each escaped. */
  function outputLine(result) {
    if (result.error !== undefined) return '';
    return result.hypotheses.map((h) => escapeControls(h.text)).join('\t');
  }

  return {
    EdgeseqError,
    Translator,
    Vocab,
    decodingOptions,
    escapeControls,
    normalized,
    outputLine,
    readManifest,
    split,
    splitLines,
  };
});
