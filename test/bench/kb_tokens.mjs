// kb_tokens.mjs: real token counts for test/bench/kb_tokens.sh.
//
//   node kb_tokens.mjs SAMPLES.jsonl SCRATCH_DIR
//
// SAMPLES.jsonl: {"cls", "name", "text", "est"} a line (est: maester's
// estimate_tokens).  One worker thread per encoding.
import { createRequire } from "node:module";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ENCODINGS = ["o200k_base", "cl100k_base"];
const load = (f) => fs.readFileSync(f, "utf8").split("\n").filter((l) => l).map((l) => JSON.parse(l));

if (!isMainThread) {
	const { file, dir, encName } = workerData;
	const req = createRequire(path.join(dir, "package.json"));
	const { Tiktoken } = req("js-tiktoken/lite");
	const ranks = req("js-tiktoken/ranks/" + encName);
	const enc = new Tiktoken(ranks.default ?? ranks);
	parentPort.postMessage(load(file).map((s) => enc.encode(s.text, [], []).length));
} else {
	const [file, dir] = process.argv.slice(2);
	const samples = load(file);
	const self = fileURLToPath(import.meta.url);
	const counts = await Promise.all(ENCODINGS.map((encName) => new Promise((ok, fail) => {
		const w = new Worker(self, { workerData: { file, dir, encName } });
		w.once("message", ok);
		w.once("error", fail);
	})));
	const by = new Map();
	samples.forEach((s, i) => {
		if (!by.has(s.cls)) by.set(s.cls, []);
		by.get(s.cls).push({ s, real: ENCODINGS.map((_, e) => counts[e][i]) });
	});
	console.log("class       samples   est>=o200k  est>=cl100k  median est/real  total est/real  worst real/est (sample, est, real)");
	for (const [cls, a] of by) {
		const ok = ENCODINGS.map((_, e) => a.filter((x) => x.s.est >= x.real[e]).length / a.length);
		const ratios = a.map((x) => x.s.est / Math.max(...x.real)).sort((p, q) => p - q);
		const tot = a.reduce((t, x) => t + x.s.est, 0) / a.reduce((t, x) => t + Math.max(...x.real), 0);
		const w = a.reduce((m, x) => (Math.max(...x.real) / x.s.est > Math.max(...m.real) / m.s.est ? x : m));
		console.log(`${cls.padEnd(10)} ${String(a.length).padStart(8)} ${(100 * ok[0]).toFixed(3).padStart(11)}% ${(100 * ok[1]).toFixed(3).padStart(11)}% ${ratios[a.length >> 1].toFixed(3).padStart(16)} ${tot.toFixed(3).padStart(15)}  ${(Math.max(...w.real) / w.s.est).toFixed(3)} (${w.s.name}, ${w.s.est}, ${Math.max(...w.real)})`);
	}
}
