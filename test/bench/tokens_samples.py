#!/usr/bin/python3
"""
tokens_samples.py: real text samples for test/bench/tokens.sh (stdlib only).

    tokens_samples.py DOC_HTML_DIR LOCALE_DIR > samples.jsonl

Writes one JSON object a line: {"cls", "name", "text", "legacy"}, where
"legacy" maps a PostgreSQL server encoding to the sample's byte length in
it (only encodings that can represent the sample).  Deterministic: every
random choice comes from a fixed seed.

Sample classes:
  doc:page        whole pages of the PostgreSQL 15 HTML manual (prose with
                  its listings inline), navigation stripped
  doc:prose-NK    NK-byte passages of prose only (<pre> removed)
  code:listing    each <pre class="programlisting"> block (SQL, C, shell)
  code:synopsis   each <pre class="synopsis"> block (SQL syntax summaries)
  code:screen     each <pre class="screen"> block (psql sessions, output)
  code:passage    1-4 KB runs of consecutive programlisting blocks
  msg:LANG        1-4 KB passages of translated server messages from
                  LOCALE_DIR/LANG/LC_MESSAGES/postgres-15.mo ("msg:en" is
                  the English msgids, as a control)
  adv:*           adversarial but honest inputs (emoji, random Unicode,
                  base64 of random bytes, digits, whitespace, combining marks),
                  each under about 2 KB: js-tiktoken's BPE is quadratic in the
                  length of one pre-token, and a run of emoji, spaces or
                  unspaced CJK is one pre-token
"""

import base64
import gettext
import glob
import html.parser
import json
import os
import random
import re
import sys

SEED = 20240915
SIZES = (1024, 2048, 4096)

# PostgreSQL server encodings (name -> Python codec) for the legacy-encoding
# check: in a non-UTF-8 database strlen() counts server-encoding bytes, while
# the request goes out as UTF-8.
LEGACY = {
	"LATIN1": "latin_1", "LATIN2": "iso8859_2", "LATIN5": "iso8859_9",
	"WIN1252": "cp1252", "WIN1251": "cp1251", "KOI8R": "koi8_r",
	"KOI8U": "koi8_u", "ISO_8859_5": "iso8859_5", "ISO_8859_7": "iso8859_7",
	"EUC_JP": "euc_jp", "EUC_CN": "gb2312", "EUC_KR": "euc_kr",
}

BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd",
		 "tr", "td", "th", "table", "br", "hr", "blockquote", "caption",
		 "ul", "ol", "dl"}


class Page(html.parser.HTMLParser):
	"""Segments of one XHTML page: ("text", s), ("break",), ("pre", cls, s)"""

	def __init__(self):
		super().__init__(convert_charrefs=True)
		self.stack = []			# (tag, skips)
		self.skip = 0
		self.pre = None			# [cls, parts] inside <pre>
		self.pre_depth = 0
		self.segs = []

	def handle_starttag(self, tag, attrs):
		a = dict(attrs)
		skips = tag in ("head", "script", "style") or \
			(tag == "div" and a.get("class") in ("navheader", "navfooter"))
		self.stack.append((tag, skips))
		if skips:
			self.skip += 1
		if self.skip:
			return
		if tag == "pre":
			if self.pre is None:
				self.pre = [a.get("class", "pre"), []]
			self.pre_depth += 1
		elif tag in BLOCK and self.pre is None:
			self.segs.append(("break",))

	def handle_endtag(self, tag):
		while self.stack:
			t, skips = self.stack.pop()
			if skips:
				self.skip -= 1
			elif not self.skip and t == "pre" and self.pre is not None:
				self.pre_depth -= 1
				if self.pre_depth == 0:
					self.segs.append(("pre", self.pre[0], "".join(self.pre[1])))
					self.pre = None
			if t == tag:
				break
		if not self.skip and tag in BLOCK and self.pre is None:
			self.segs.append(("break",))

	def handle_data(self, data):
		if self.skip:
			return
		if self.pre is not None:
			self.pre[1].append(data)
		else:
			self.segs.append(("text", data))


def page_parts(path):
	"""(whole page text, [prose paragraphs], [(pre class, text)])"""
	p = Page()
	with open(path, encoding="utf-8") as f:
		p.feed(f.read())
	p.close()
	whole, paras, pres, cur = [], [], [], []

	def flush():
		s = re.sub(r"\s+", " ", "".join(cur)).strip()
		cur.clear()
		if s:
			whole.append(s)
			paras.append(s)

	for seg in p.segs:
		if seg[0] == "text":
			cur.append(seg[1])
		elif seg[0] == "break":
			flush()
		else:
			flush()
			body = seg[2].strip("\n")
			if body.strip():
				whole.append(body)
				pres.append((seg[1], body))
	flush()
	return "\n\n".join(whole), paras, pres


def nbytes(s):
	return len(s.encode("utf-8"))


def passages(units, target, sep, limit, rng):
	"""Runs of consecutive units (starting at random places) joined by sep
	until about target UTF-8 bytes; a unit longer than target is cut at a
	whitespace (or, failing that, character) boundary."""
	out = []
	if not units:
		return out
	for _ in range(limit):
		i = rng.randrange(len(units))
		acc, size = [], 0
		while i < len(units) and size < target:
			u = units[i]
			room = target - size
			if nbytes(u) > room:
				cut = u.encode("utf-8")[:room].decode("utf-8", "ignore")
				sp = cut.rfind(" ")
				u = cut[:sp] if sp > len(cut) // 2 else cut
			if u:
				acc.append(u)
				size += nbytes(u) + len(sep)
			i += 1
		if acc:
			out.append(sep.join(acc))
	return out


def legacy_sizes(text):
	sizes = {}
	for name, codec in LEGACY.items():
		try:
			sizes[name] = len(text.encode(codec))
		except UnicodeEncodeError:
			pass
	return sizes


def emit(cls, name, text):
	if not text:
		return
	sys.stdout.write(json.dumps({"cls": cls, "name": name, "text": text,
								 "legacy": legacy_sizes(text)},
								ensure_ascii=False) + "\n")


def docs(html_dir, rng):
	files = sorted(glob.glob(os.path.join(html_dir, "*.html")))
	if not files:
		sys.exit("no HTML pages in %s" % html_dir)
	# every page's prose and listings feed the passages; 250 seeded pages
	# (plus the 10 largest) are also samples whole
	whole_pick = set(rng.sample(files, min(250, len(files))))
	whole_pick |= set(sorted(files, key=os.path.getsize)[-10:])
	paras, listings = [], []
	per_kind = {"programlisting": [], "synopsis": [], "screen": []}
	for f in files:
		whole, ps, pres = page_parts(f)
		base = os.path.basename(f)
		if f in whole_pick and whole.strip():
			emit("doc:page", base, whole)
		paras.extend(ps)
		for cls, body in pres:
			if cls in per_kind:
				per_kind[cls].append((base, body))
			if cls == "programlisting":
				listings.append(body)
	for size in SIZES:
		for i, t in enumerate(passages(paras, size, "\n\n", 150, rng)):
			emit("doc:prose-%dK" % (size // 1024), "prose-%d-%d" % (size, i), t)
	for kind, blocks in per_kind.items():
		short = {"programlisting": "listing"}.get(kind, kind)
		pick = blocks if len(blocks) <= 600 else rng.sample(blocks, 600)
		for j, (base, body) in enumerate(pick):
			emit("code:" + short, "%s#%d" % (base, j), body)
	for size in SIZES:
		for i, t in enumerate(passages(listings, size, "\n\n", 100, rng)):
			emit("code:passage", "listing-%d-%d" % (size, i), t)


def catalogs(locale_dir, rng):
	mos = sorted(glob.glob(os.path.join(locale_dir, "*", "LC_MESSAGES",
										"postgres-15.mo")))
	english = set()
	for mo in mos:
		lang = mo.split(os.sep)[-3]
		with open(mo, "rb") as f:
			cat = gettext.GNUTranslations(f)._catalog
		msgs = []
		for k, v in cat.items():
			msgid = k[0] if isinstance(k, tuple) else k
			if not msgid or not v or v == msgid:
				continue		# header, untranslated
			msgs.append(v)
			english.add(msgid)
		msgs.sort()
		rng.shuffle(msgs)
		for size in SIZES:
			for i, t in enumerate(passages(msgs, size, "\n", 20, rng)):
				emit("msg:" + lang, "%s-%d-%d" % (lang, size, i), t)
	english = sorted(english)
	rng.shuffle(english)
	for size in SIZES:
		for i, t in enumerate(passages(english, size, "\n", 20, rng)):
			emit("msg:en", "en-%d-%d" % (size, i), t)
	return len(mos)


def adversarial(rng):
	def cp(lo, hi):
		return chr(rng.randint(lo, hi))

	emoji_blocks = [(0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF),
					(0x1F900, 0x1F9FF), (0x2600, 0x26FF)]
	tones = [chr(c) for c in range(0x1F3FB, 0x1F400)]
	for i in range(30):
		n = rng.choice((16, 64, 128, 256))
		out = []
		for _ in range(n):
			r = rng.random()
			if r < 0.1:		# flag: two regional indicators
				out.append(cp(0x1F1E6, 0x1F1FF) + cp(0x1F1E6, 0x1F1FF))
			elif r < 0.2:	# ZWJ sequence with a skin tone
				out.append(cp(0x1F466, 0x1F469) + rng.choice(tones) + "\u200d"
						   + cp(0x1F4BB, 0x1F4BC))
			else:
				out.append(cp(*rng.choice(emoji_blocks)))
		emit("adv:emoji", "emoji-%d" % i, "".join(out))

	blocks = {"latin1": (0xA1, 0xFF), "greek": (0x391, 0x3C9),
			  "cyrillic": (0x410, 0x44F), "arabic": (0x621, 0x64A),
			  "devanagari": (0x905, 0x939), "thai": (0xE01, 0xE2E),
			  "hangul": (0xAC00, 0xD7A3), "cjk": (0x4E00, 0x9FFF),
			  "cjk-ext-b": (0x20000, 0x2A6DF), "math": (0x2200, 0x22FF),
			  "box": (0x2500, 0x257F), "pua": (0xE000, 0xF8FF)}
	for name, (lo, hi) in blocks.items():
		for i, n in enumerate((64, 256, 512)):
			for spaced in (False, True):
				s = []
				for _ in range(n):
					s.append(cp(lo, hi))
					if spaced and rng.random() < 0.2:
						s.append(" ")
				emit("adv:unicode", "%s-%d%s" % (name, n, "-spaced" if spaced else ""),
					 "".join(s))
	for i in range(10):		# every block mixed, character by character
		emit("adv:unicode", "mixed-%d" % i,
			 "".join(cp(*rng.choice(list(blocks.values()))) for _ in range(400)))

	for i, n in enumerate((48, 300, 1500, 3000) * 3):
		emit("adv:base64", "b64-%d" % i,
			 base64.b64encode(bytes(rng.randrange(256) for _ in range(n))).decode())
		emit("adv:base64", "hex-%d" % i, bytes(rng.randrange(256) for _ in range(n)).hex())

	for i, n in enumerate((10, 100, 1000, 4000)):
		emit("adv:digits", "digits-%d" % n, "".join(rng.choice("0123456789") for _ in range(n)))
		emit("adv:digits", "zeros-%d" % n, "0" * n)
		emit("adv:digits", "numbers-%d" % n,
			 " ".join(str(rng.randrange(10 ** rng.randint(1, 12))) for _ in range(n // 4)))

	for n in (1, 16, 256, 1024):
		emit("adv:space", "spaces-%d" % n, " " * n)
		emit("adv:space", "newlines-%d" % n, "\n" * n)
		emit("adv:space", "tabs-%d" % n, "\t" * n)
		emit("adv:space", "mixed-%d" % n, "".join(rng.choice(" \t\n\r\u00a0\u3000")
												   for _ in range(n)))
		emit("adv:space", "indent-%d" % n, ("x\n" + " " * 37) * max(1, n // 40))

	marks = (0x300, 0x36F)
	for i, n in enumerate((20, 100, 300)):
		emit("adv:combining", "zalgo-%d" % n,
			 "".join(cp(0x61, 0x7A) + "".join(cp(*marks) for _ in range(rng.randint(1, 8)))
					 for _ in range(n)))
	emit("adv:combining", "one-base-many-marks", "a" + "".join(cp(*marks) for _ in range(400)))


def main():
	if len(sys.argv) != 3:
		sys.exit("usage: tokens_samples.py DOC_HTML_DIR LOCALE_DIR")
	rng = random.Random(SEED)
	docs(sys.argv[1], rng)
	if catalogs(sys.argv[2], rng) == 0:
		sys.exit("no postgres-15.mo catalogs under %s" % sys.argv[2])
	adversarial(rng)


if __name__ == "__main__":
	main()
