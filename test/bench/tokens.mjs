// tokens.mjs: count real tokens for test/bench/tokens.sh.
//
//   node tokens.mjs SAMPLES.jsonl SCRATCH_DIR
//
// SAMPLES.jsonl comes from tokens_samples.py; SCRATCH_DIR holds
// node_modules/js-tiktoken (kept out of the repository).  One worker
// thread per encoding (o200k_base, cl100k_base).  Per sample it counts:
//   raw      tokens of the text alone
//   chat     the chat request, two ways and two shapes, the largest kept:
//            ways:   cookbook  sum over messages (3 + role + content) + 3
//                    chatml    <|im_start|>ROLE\nCONTENT<|im_end|>\n ...
//                              <|im_start|>assistant\n, specials 1 token
//                              each, the text between them encoded as is
//            shapes: U  prompt = the text, no system message
//                    S  system = first half of the text (code points),
//                       prompt = the second half
// and compares with maester's numbers:
//   bound    src/call.c est_input_tokens: UTF-8 bytes of prompt and system
//            (converted from the server encoding first) + 16
//   est      src/inflight.c estimate_tokens(): (characters + 3) / 4
// It also prints what a bound counting server-encoding bytes would give in
// a non-UTF-8 database (what maester did before this check found it: the
// request goes out as UTF-8, so such a bound can be exceeded).
// Exit 1 if some sample's chat tokens exceed the bound, 0 otherwise.

import { createRequire } from "node:module";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ENCODINGS = ["o200k_base", "cl100k_base"];
const OVERHEAD = 16;			// call.c's allowance for the chat format

function loadSamples(file) {
	return fs.readFileSync(file, "utf8").split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

function codePoints(s) {
	let n = 0;
	for (const _ of s)
		n++;
	return n;
}

if (!isMainThread) {
	const { file, dir, encName } = workerData;
	const req = createRequire(path.join(dir, "package.json"));
	const { Tiktoken } = req("js-tiktoken/lite");
	const ranks = req("js-tiktoken/ranks/" + encName);
	const enc = new Tiktoken(ranks.default ?? ranks);
	// user text is plain text: "<|endoftext|>" in it is not a special token
	const n = (s) => (s ? enc.encode(s, [], []).length : 0);
	const role = { system: n("system"), user: n("user") };
	const asst = n("assistant\n"), nl = n("\n");
	const out = [];
	for (const s of loadSamples(file)) {
		const t = s.text;
		const raw = n(t);
		const r = { raw };
		r.uCook = 3 + role.user + raw + 3;
		r.uChatml = 3 + n("user\n" + t) + nl + asst;
		const cps = Array.from(t);
		if (cps.length >= 2) {
			const h = cps.length >> 1;
			const sys = cps.slice(0, h).join(""), usr = cps.slice(h).join("");
			r.sCook = (3 + role.system + n(sys)) + (3 + role.user + n(usr)) + 3;
			r.sChatml = 5 + n("system\n" + sys) + nl + n("user\n" + usr) + nl + asst;
		}
		out.push(r);
	}
	parentPort.postMessage(out);
} else {
	const [file, dir] = process.argv.slice(2);
	if (!file || !dir) {
		console.error("usage: node tokens.mjs SAMPLES.jsonl SCRATCH_DIR");
		process.exit(64);
	}
	const samples = loadSamples(file);
	const self = fileURLToPath(import.meta.url);
	const t0 = Date.now();
	const results = await Promise.all(ENCODINGS.map((encName) => new Promise((ok, fail) => {
		const w = new Worker(self, { workerData: { file, dir, encName } });
		w.once("message", ok);
		w.once("error", fail);
		w.once("exit", (c) => c && fail(new Error(encName + " worker exited " + c)));
	})));
	const secs = ((Date.now() - t0) / 1000).toFixed(1);
	const tkVersion = JSON.parse(fs.readFileSync(path.join(dir, "node_modules/js-tiktoken/package.json"), "utf8")).version;

	const classes = [];
	const byClass = new Map();
	const violations = [];
	const legacy = new Map();		// encoding -> {n, differs, max, worst, over}
	const worst = [];				// every (ratio, sample) for the top list
	for (const [i, s] of samples.entries()) {
		const bytes = Buffer.byteLength(s.text, "utf8");
		const chars = codePoints(s.text);
		const bound = bytes + OVERHEAD;
		const est = Math.floor((chars + 3) / 4);
		if (!byClass.has(s.cls)) {
			classes.push(s.cls);
			byClass.set(s.cls, ENCODINGS.map(() => ({
				n: 0, bytes: 0, chars: 0, tokens: 0, est: 0, maxBound: 0, maxBoundName: "",
				minEst: Infinity, maxEst: 0, minEstName: "", maxEstName: "",
			})));
		}
		ENCODINGS.forEach((encName, e) => {
			const r = results[e][i];
			const chat = Math.max(r.uCook, r.uChatml, r.sCook ?? 0, r.sChatml ?? 0);
			const a = byClass.get(s.cls)[e];
			a.n++;
			a.bytes += bytes;
			a.chars += chars;
			a.tokens += r.raw;
			a.est += est;
			const rb = chat / bound;
			if (rb > a.maxBound) {
				a.maxBound = rb;
				a.maxBoundName = s.name;
			}
			worst.push({ rb, name: s.name, cls: s.cls, encName, chat, bound, bytes, raw: r.raw });
			if (chat > bound)
				violations.push(`${encName} ${s.cls} ${s.name}: chat ${chat} > bound ${bound} (${bytes} bytes, raw ${r.raw})`);
			const re = r.raw / est;
			if (re < a.minEst) {
				a.minEst = re;
				a.minEstName = s.name;
			}
			if (re > a.maxEst) {
				a.maxEst = re;
				a.maxEstName = s.name;
			}
			for (const [le, lbytes] of Object.entries(s.legacy || {})) {
				if (!legacy.has(le))
					legacy.set(le, { n: 0, differs: 0, max: 0, worst: "", over: [] });
				const l = legacy.get(le);
				if (e === 0)
					l.n++;
				if (lbytes >= bytes)
					continue;
				if (e === 0)
					l.differs++;
				const lr = chat / (lbytes + OVERHEAD);
				if (lr > l.max) {
					l.max = lr;
					l.worst = `${encName} ${s.cls} ${s.name} (${chat} tokens, ${lbytes} ${le} bytes)`;
				}
				if (chat > lbytes + OVERHEAD)
					l.over.push(`${encName} ${s.cls} ${s.name}`);
			}
		});
	}

	const f2 = (x) => x.toFixed(2), f3 = (x) => x.toFixed(3);
	console.log(`method: js-tiktoken ${tkVersion}, encodings ${ENCODINGS.join(" and ")}; ${samples.length} samples in ${classes.length} classes, counted in ${secs}s.`);
	console.log(`method: bound = UTF-8 bytes of prompt + system + ${OVERHEAD} (src/call.c est_input_tokens); est = (code points + 3) / 4 (src/inflight.c estimate_tokens).`);
	console.log("method: chat = max of cookbook (3 per message + role + content, + 3 reply priming) and ChatML (<|im_start|>/<|im_end|> as single tokens),");
	console.log("method:        each for prompt-only and for system = first half + prompt = second half; tok/est uses the raw text's tokens.");
	console.log("method: tok/est min and max are over samples; 'all' is total tokens / total est.  chat/bound must stay <= 1.");
	console.log("");
	const head = ["encoding", "samples", "bytes", "chars", "tokens", "bytes/tok", "max chat/bound", "tok/est min", "all", "max"];
	const w = [12, 8, 10, 10, 9, 10, 15, 12, 6, 6];
	const row = (cells) => cells.map((c, k) => (k === 0 ? String(c).padEnd(w[k]) : String(c).padStart(w[k]))).join(" ");
	for (const cls of classes) {
		console.log(`${cls}`);
		console.log("  " + row(head));
		byClass.get(cls).forEach((a, e) => {
			console.log("  " + row([ENCODINGS[e], a.n, a.bytes, a.chars, a.tokens, f2(a.bytes / a.tokens),
				f3(a.maxBound), f2(a.minEst), f2(a.tokens / a.est), f2(a.maxEst)]));
		});
		const a = byClass.get(cls);
		console.log(`  worst chat/bound: ${a.map((x, e) => ENCODINGS[e] + " " + x.maxBoundName).join(", ")}; ` +
			`tok/est extremes: ${a.map((x, e) => ENCODINGS[e] + " " + x.minEstName + " / " + x.maxEstName).join(", ")}`);
	}
	console.log("");
	worst.sort((x, y) => y.rb - x.rb);
	console.log("closest to the bound (UTF-8 database):");
	for (const x of worst.slice(0, 8))
		console.log(`  ${f3(x.rb)}  ${x.encName} ${x.cls} ${x.name}: chat ${x.chat}, bound ${x.bound} (raw ${x.raw} tokens, ${x.bytes} bytes)`);
	console.log("");
	console.log("for comparison, a bound counting server-encoding bytes (maester before the fix; 'fewer' = samples with fewer bytes there than in UTF-8):");
	console.log("  " + ["server enc", "samples", "fewer", "max chat/bound", "over", "worst"].map((c, k) => k === 0 ? c.padEnd(12) : k === 5 ? c : c.padStart(k === 3 ? 15 : 8)).join(" "));
	let legacyOver = 0;
	for (const [le, l] of legacy) {
		legacyOver += l.over.length;
		console.log("  " + [le.padEnd(12), String(l.n).padStart(8), String(l.differs).padStart(8),
			f3(l.max).padStart(15), String(l.over.length).padStart(8), l.worst].join(" "));
	}
	console.log("");
	if (violations.length) {
		console.log(`FAIL: ${violations.length} sample(s) whose real chat tokens exceed maester's bound (UTF-8 database):`);
		for (const v of violations.slice(0, 40))
			console.log("  " + v);
		process.exit(1);
	}
	console.log("bound held: no sample's chat tokens exceed UTF-8 bytes + 16 (both encodings, all shapes).");
	if (legacyOver)
		console.log(`(a bound counting server-encoding bytes would be exceeded by ${legacyOver} (sample, tokenizer) pairs: why maester counts UTF-8 bytes in every encoding)`);
}
