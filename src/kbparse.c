/*-------------------------------------------------------------------------
 *
 * kbparse.c
 *	  maester.kb_parse: a document (plain text, Markdown, HTML or PDF) to
 *	  its title and its body, the normalized Markdown-like text that chunks
 *	  and citations point into by character offsets.
 *
 * The body: headings are lines of '#' x level, a space and the heading's
 * text; blocks are separated by exactly one blank line; list items are
 * blocks "- text"; the rows of a table are the lines of one block, cells
 * joined by " | "; preformatted text is fenced by ``` lines (a longer
 * fence when the text holds backticks) with its whitespace kept.  A line
 * of ordinary text never looks like a heading or a fence to the chunker:
 * one starting with '#', ``` or ~~~ gets a backslash before it.
 *
 *	 text/plain		newlines normalized (\r\n and \r to \n), runs of blank
 *					lines made one blank line, lines escaped as above
 *	 text/markdown	newlines normalized, nothing else; the title is the
 *					first "# " heading outside code fences
 *	 text/html		libxml2's HTML parser (network off, errors silent,
 *					recovering), walked without recursion: head, script,
 *					style, noscript, template, nav, hidden elements, role
 *					"navigation", DocBook's navheader and navfooter divs
 *					and tables of contents (class "toc") dropped; the title is <title>, whitespace
 *					collapsed; whitespace collapsed in ordinary text (a
 *					no-break space counts as one); <br> a line break
 *	 application/pdf kbpdf.c's pdftotext in a child process, then as
 *					text/plain with a form feed (a new page) a block break
 *
 * Encodings: text arguments are in the server encoding.  bytea arguments
 * are decoded by the type's charset parameter (default UTF-8) with
 * PostgreSQL's conversions (an invalid byte: 22021); HTML as bytea is
 * decoded by libxml2 (the charset parameter, else the document's own
 * declaration).  The result is in the server encoding.  Documents over
 * KB_MAX_CONTENT bytes are refused (54000).  libxml2's tree lives in
 * malloc'd memory and is freed on every path, errors and cancels included.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <libxml/HTMLparser.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include "access/detoast.h"
#include "access/htup_details.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "kbtext.h"
#include "util.h"

typedef enum DocKind
{
	DOC_PLAIN,
	DOC_MARKDOWN,
	DOC_HTML,
	DOC_PDF
} DocKind;

#define SUPPORTED_TYPES "text/plain, text/markdown, text/x-markdown, text/html, application/xhtml+xml, application/pdf"

/*
 * The kind of a media type such as "text/html; charset=ISO-8859-1" (type
 * case-insensitive) and its charset parameter (NULL if none).
 */
static DocKind
parse_mime(const char *mime, char **charset)
{
	const char *semi = strchr(mime, ';');
	int			len = semi ? semi - mime : strlen(mime);
	char	   *type;

	*charset = NULL;
	while (len > 0 && isspace((unsigned char) mime[len - 1]))
		len--;
	while (len > 0 && isspace((unsigned char) *mime))
		mime++, len--;
	type = pnstrdup(mime, len);
	for (char *p = type; *p; p++)
		*p = pg_ascii_tolower((unsigned char) *p);

	/* parameters: name=value or name="value", separated by ';' */
	while (semi != NULL)
	{
		const char *p = semi + 1,
				   *eq,
				   *end;

		semi = strchr(p, ';');
		end = semi ? semi : p + strlen(p);
		while (p < end && isspace((unsigned char) *p))
			p++;
		eq = memchr(p, '=', end - p);
		if (eq == NULL)
			continue;
		if (eq - p == 7 && pg_strncasecmp(p, "charset", 7) == 0)
		{
			const char *v = eq + 1;

			while (v < end && isspace((unsigned char) *v))
				v++;
			while (end > v && isspace((unsigned char) end[-1]))
				end--;
			if (end - v >= 2 && *v == '"' && end[-1] == '"')
				v++, end--;
			*charset = pnstrdup(v, end - v);
		}
	}

	if (strcmp(type, "text/plain") == 0)
		return DOC_PLAIN;
	if (strcmp(type, "text/markdown") == 0 || strcmp(type, "text/x-markdown") == 0)
		return DOC_MARKDOWN;
	if (strcmp(type, "text/html") == 0 || strcmp(type, "application/xhtml+xml") == 0)
		return DOC_HTML;
	if (strcmp(type, "application/pdf") == 0)
		return DOC_PDF;
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("unsupported document type \"%s\"", maester_cut_short(type, 64)),
			 errdetail("The supported types are " SUPPORTED_TYPES ".")));
	return DOC_PLAIN;			/* keep the compiler quiet */
}

/* Bytes in charset (NULL: UTF-8) to a NUL-terminated server-encoding copy */
static char *
decode_bytes(const char *data, int len, const char *charset)
{
	int			enc = PG_UTF8;
	char	   *copy,
			   *out;

	if (charset != NULL)
	{
		enc = pg_char_to_encoding(charset);
		if (enc < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unsupported charset \"%s\"", maester_cut_short(charset, 64))));
	}
	if (enc == PG_UTF8 && len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0)
		data += 3, len -= 3;	/* a byte order mark */
	/* a NUL byte stays in: the conversion reports it (22021) */
	copy = palloc(len + 1);
	memcpy(copy, data, len);
	copy[len] = '\0';
	out = pg_any_to_server(copy, len, enc);
	if (out != copy)
		pfree(copy);
	return out;
}

/* \r\n and \r to \n */
static char *
normalize_newlines(const char *s, int len, int *out_len)
{
	char	   *out = palloc(len + 1);
	int			n = 0;

	for (int i = 0; i < len; i++)
	{
		if (s[i] == '\r')
		{
			out[n++] = '\n';
			if (i + 1 < len && s[i + 1] == '\n')
				i++;
		}
		else
			out[n++] = s[i];
	}
	out[n] = '\0';
	*out_len = n;
	return out;
}

/* Whether a line of ordinary text would read as a heading or a fence */
static int
needs_escape(const char *line, int len)
{
	int			i = 0;

	while (i < len && i < 3 && line[i] == ' ')
		i++;
	if (i < len && line[i] == '#')
		return i;
	if (i + 2 < len && (line[i] == '`' || line[i] == '~') &&
		line[i + 1] == line[i] && line[i + 2] == line[i])
		return i;
	return -1;
}

/*
 * Plain text to a body: lines kept, whitespace-only lines and runs of
 * them one blank line (as is a form feed when pages is set), none at the
 * ends, and lines that would read as Markdown escaped.
 */
static char *
plain_body(const char *s, int len, bool pages, int *out_len)
{
	StringInfoData out;
	bool		blank = false;
	int			pos = 0;

	initStringInfo(&out);
	while (pos < len)
	{
		int			end = pos,
					esc;
		bool		ws = true;

		if ((pos & 0xffff) == 0)
			CHECK_FOR_INTERRUPTS();
		while (end < len && s[end] != '\n' && !(pages && s[end] == '\f'))
		{
			if (s[end] != ' ' && s[end] != '\t' && s[end] != '\f' && s[end] != '\v')
				ws = false;
			end++;
		}
		if (!ws)
		{
			if (out.len > 0)
				appendStringInfoString(&out, blank ? "\n\n" : "\n");
			blank = false;
			esc = needs_escape(s + pos, end - pos);
			if (esc >= 0)
			{
				appendBinaryStringInfo(&out, s + pos, esc);
				appendStringInfoChar(&out, '\\');
				appendBinaryStringInfo(&out, s + pos + esc, end - pos - esc);
			}
			else
				appendBinaryStringInfo(&out, s + pos, end - pos);
		}
		if (ws || (end < len && s[end] == '\f'))
			blank = true;
		pos = end + 1;
	}
	*out_len = out.len;
	return out.data;
}

/* The text of the first level-1 ATX heading outside code fences, or NULL */
static char *
markdown_title(const char *s, int len)
{
	int			pos = 0,
				fence = 0;
	char		fch = 0;

	while (pos < len)
	{
		const char *line = s + pos;
		const char *nl = memchr(line, '\n', len - pos);
		int			n = nl ? nl - line : len - pos;
		int			ts,
					tl,
					f;

		if (fence > 0)
		{
			if (kb_md_fence_close(line, n, fch, fence))
				fence = 0;
		}
		else if ((f = kb_md_fence_open(line, n, &fch)) > 0)
			fence = f;
		else if (kb_md_heading(line, n, &ts, &tl) == 1 && tl > 0)
			return pnstrdup(line + ts, tl);
		pos += n + 1;
	}
	return NULL;
}

/* ---- HTML ---- */

/* What an element does to the body */
typedef enum HtmlKind
{
	H_INLINE,					/* its text only (also unknown elements) */
	H_DROP,						/* nothing of it */
	H_HEAD,						/* nothing but the title */
	H_TITLE,
	H_HEADING,
	H_BLOCK,
	H_LI,
	H_PRE,
	H_BR,
	H_HR,
	H_TABLE,
	H_TR,
	H_CELL
} HtmlKind;

typedef struct HtmlTag
{
	const char *name;
	HtmlKind	kind;
} HtmlTag;

/* sorted by name (bsearch) */
static const HtmlTag html_tags[] = {
	{"address", H_BLOCK}, {"applet", H_DROP}, {"article", H_BLOCK},
	{"aside", H_BLOCK}, {"audio", H_DROP}, {"blockquote", H_BLOCK},
	{"body", H_BLOCK}, {"br", H_BR}, {"button", H_DROP}, {"canvas", H_DROP},
	{"caption", H_BLOCK}, {"center", H_BLOCK}, {"dd", H_BLOCK},
	{"details", H_BLOCK}, {"dialog", H_BLOCK}, {"dir", H_BLOCK},
	{"div", H_BLOCK}, {"dl", H_BLOCK}, {"dt", H_BLOCK}, {"embed", H_DROP},
	{"fieldset", H_BLOCK}, {"figcaption", H_BLOCK}, {"figure", H_BLOCK},
	{"footer", H_BLOCK}, {"form", H_BLOCK}, {"frameset", H_DROP},
	{"h1", H_HEADING}, {"h2", H_HEADING}, {"h3", H_HEADING},
	{"h4", H_HEADING}, {"h5", H_HEADING}, {"h6", H_HEADING},
	{"head", H_HEAD}, {"header", H_BLOCK}, {"hgroup", H_BLOCK},
	{"hr", H_HR}, {"html", H_BLOCK}, {"iframe", H_DROP}, {"input", H_DROP},
	{"legend", H_BLOCK}, {"li", H_LI}, {"listing", H_PRE}, {"main", H_BLOCK},
	{"map", H_DROP}, {"menu", H_BLOCK}, {"nav", H_DROP}, {"noembed", H_DROP},
	{"noframes", H_DROP}, {"noscript", H_DROP}, {"object", H_DROP},
	{"ol", H_BLOCK}, {"p", H_BLOCK}, {"plaintext", H_PRE}, {"pre", H_PRE},
	{"script", H_DROP}, {"section", H_BLOCK}, {"select", H_DROP},
	{"style", H_DROP}, {"summary", H_BLOCK}, {"svg", H_DROP},
	{"table", H_TABLE}, {"td", H_CELL}, {"template", H_DROP},
	{"textarea", H_DROP}, {"th", H_CELL}, {"title", H_TITLE},
	{"tr", H_TR}, {"ul", H_BLOCK}, {"video", H_DROP}, {"xmp", H_PRE},
};

static int
html_tag_cmp(const void *key, const void *entry)
{
	return strcmp((const char *) key, ((const HtmlTag *) entry)->name);
}

static HtmlKind
html_kind(const xmlChar *name)
{
	const HtmlTag *t = bsearch(name, html_tags, lengthof(html_tags),
							   sizeof(HtmlTag), html_tag_cmp);

	return t ? t->kind : H_INLINE;
}

/* What entering an element did, kept in its _private for leaving it */
#define F_ENTERED	0x01
#define F_SILENT	0x02
#define F_TITLE		0x04
#define F_INLINE	0x08		/* heading or table row: blocks are spaces */
#define F_BREAK		0x10		/* a block break when left */
#define F_SPACE		0x20		/* a space when left */
#define F_PREFIX	0x40		/* clears the pending prefix when left */
#define F_PRE		0x80
#define F_ROW		0x100
#define F_TABLE		0x200

typedef struct HtmlOut
{
	StringInfoData buf;			/* the body, UTF-8 */
	StringInfoData title;
	StringInfoData pre;			/* the text of the <pre> being read */
	bool		in_block;		/* the current block has text */
	bool		need_space;		/* a space before the next text */
	bool		pending_nl;		/* a line break before the next text */
	bool		pending_cell;	/* " | " before the next text */
	bool		row_text;		/* the current table row has text */
	bool		table_rows;		/* the current table has a row */
	bool		have_title;
	const char *prefix;			/* before the next block's first text */
	int			silent;			/* inside <head> */
	int			title_depth;	/* inside the first <title> */
	int			pre_depth;
	int			inline_depth;
	int			row_depth;
	uint64		nodes;
} HtmlOut;

static const char *const heading_prefix[] = {"", "# ", "## ", "### ", "#### ", "##### ", "###### "};

/* Ends the current block */
static void
html_break(HtmlOut *o)
{
	o->in_block = false;
	o->need_space = o->pending_nl = o->pending_cell = false;
}

/* A space before the next text, if the block has text */
static void
html_space(HtmlOut *o)
{
	if (o->in_block)
		o->need_space = true;
}

/* Appends one run of non-whitespace text with what must come before it */
static void
html_word(HtmlOut *o, const char *p, int n)
{
	StringInfo	b = &o->buf;
	bool		line_start = false;

	if (!o->in_block)
	{
		if (b->len > 0)
			appendStringInfoString(b, "\n\n");
		if (o->prefix)
			appendStringInfoString(b, o->prefix);
		else
			line_start = true;
		o->prefix = NULL;
		o->in_block = true;
	}
	else if (o->pending_nl)
	{
		appendStringInfoChar(b, '\n');
		line_start = true;
	}
	else if (o->pending_cell)
		appendStringInfoString(b, " | ");
	else if (o->need_space)
		appendStringInfoChar(b, ' ');
	o->need_space = o->pending_nl = o->pending_cell = false;
	if (o->row_depth > 0)
		o->row_text = true;
	if (line_start && needs_escape(p, n) == 0)
		appendStringInfoChar(b, '\\');
	appendBinaryStringInfo(b, p, n);
}

/* Length of the whitespace at p (ASCII or a no-break space), 0 if none */
static inline int
html_ws(const unsigned char *p)
{
	if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f')
		return 1;
	if (p[0] == 0xc2 && p[1] == 0xa0)
		return 2;
	return 0;
}

/* Appends s to a buffer with whitespace collapsed (the title) */
static void
collapse_into(StringInfo b, const unsigned char *s)
{
	while (*s)
	{
		int			w = html_ws(s);

		if (w)
		{
			if (b->len > 0 && b->data[b->len - 1] != ' ')
				appendStringInfoChar(b, ' ');
			s += w;
		}
		else
			appendStringInfoChar(b, *s++);
	}
}

/* A text node */
static void
html_text(HtmlOut *o, const unsigned char *s)
{
	if (s == NULL)
		return;
	if (o->title_depth > 0)
		collapse_into(&o->title, s);
	else if (o->silent > 0)
		return;
	else if (o->pre_depth > 0)
	{
		for (; *s; s++)
		{
			if (*s == '\r')
			{
				appendStringInfoChar(&o->pre, '\n');
				if (s[1] == '\n')
					s++;
			}
			else
				appendStringInfoChar(&o->pre, *s);
		}
	}
	else
	{
		while (*s)
		{
			int			w = html_ws(s);

			if (w)
			{
				html_space(o);
				s += w;
			}
			else
			{
				const unsigned char *e = s;

				while (*e && !html_ws(e))
					e++;
				html_word(o, (const char *) s, e - s);
				s = e;
			}
		}
	}
}

/* Appends the <pre> just read as a fenced block */
static void
html_flush_pre(HtmlOut *o)
{
	char	   *s = o->pre.data;
	int			len = o->pre.len,
				start = 0,
				run = 0,
				longest = 0;

	/* leading whitespace-only lines and trailing whitespace go */
	for (int i = 0; i < len; i++)
	{
		if (s[i] == '\n')
			start = i + 1;
		else if (s[i] != ' ' && s[i] != '\t' && s[i] != '\f' && s[i] != '\v')
			break;
	}
	while (len > start && strchr(" \t\n\f\v", s[len - 1]))
		len--;
	if (len <= start)
		return;
	for (int i = start; i < len; i++)
	{
		run = s[i] == '`' ? run + 1 : 0;
		longest = Max(longest, run);
	}
	longest = Max(3, longest + 1);
	if (o->buf.len > 0)
		appendStringInfoString(&o->buf, "\n\n");
	for (int i = 0; i < longest; i++)
		appendStringInfoChar(&o->buf, '`');
	appendStringInfoChar(&o->buf, '\n');
	appendBinaryStringInfo(&o->buf, s + start, len - start);
	appendStringInfoChar(&o->buf, '\n');
	for (int i = 0; i < longest; i++)
		appendStringInfoChar(&o->buf, '`');
}

/* Whether class="..." holds the token tok */
static bool
has_class(const char *v, const char *tok)
{
	int			n = strlen(tok);

	for (const char *p = v; (p = strstr(p, tok)) != NULL; p += n)
		if ((p == v || isspace((unsigned char) p[-1])) &&
			(p[n] == '\0' || isspace((unsigned char) p[n])))
			return true;
	return false;
}

/* Whether an element is navigation or hidden (dropped with its content) */
static bool
html_hidden(xmlNodePtr n)
{
	for (xmlAttrPtr a = n->properties; a != NULL; a = a->next)
	{
		const char *name = (const char *) a->name;
		const char *v = "";

		if (a->children && a->children->type == XML_TEXT_NODE && a->children->content)
			v = (const char *) a->children->content;
		if (strcmp(name, "hidden") == 0)
			return true;
		if (strcmp(name, "role") == 0 && pg_strcasecmp(v, "navigation") == 0)
			return true;
		if (strcmp(name, "class") == 0 &&
			(has_class(v, "navheader") || has_class(v, "navfooter") ||
			 has_class(v, "toc")))
			return true;
	}
	return false;
}

/* Entering a node: its flags (0: nothing to do when leaving, no descent) */
static int
html_enter(HtmlOut *o, xmlNodePtr n)
{
	int			f = F_ENTERED;
	HtmlKind	kind;

	if (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE)
	{
		html_text(o, n->content);
		return 0;
	}
	if (n->type != XML_ELEMENT_NODE || n->name == NULL)
		return 0;
	kind = html_kind(n->name);
	if (kind == H_DROP || (kind != H_HEAD && kind != H_TITLE && html_hidden(n)))
		return 0;
	if (o->pre_depth > 0)
	{
		/* inside <pre>: only text and line breaks */
		if (kind == H_BR)
			appendStringInfoChar(&o->pre, '\n');
		return f;
	}
	switch (kind)
	{
		case H_HEAD:
			o->silent++;
			f |= F_SILENT;
			break;
		case H_TITLE:
			if (o->have_title || o->title_depth > 0)
				return 0;
			o->title_depth++;
			f |= F_TITLE;
			break;
		case H_BR:
			if (o->inline_depth > 0)
				html_space(o);
			else if (o->in_block)
				o->pending_nl = true;
			break;
		case H_HEADING:
		case H_BLOCK:
		case H_LI:
		case H_HR:
		case H_TABLE:
		case H_PRE:
			if (o->inline_depth > 0)
			{
				html_space(o);
				f |= F_SPACE;
				break;
			}
			html_break(o);
			f |= F_BREAK;
			if (kind == H_HEADING)
			{
				o->prefix = heading_prefix[n->name[1] - '0'];
				o->inline_depth++;
				f |= F_INLINE | F_PREFIX;
			}
			else if (kind == H_LI)
			{
				o->prefix = "- ";
				f |= F_PREFIX;
			}
			else if (kind == H_TABLE)
			{
				o->table_rows = false;
				f |= F_TABLE;
			}
			else if (kind == H_PRE)
			{
				o->prefix = NULL;
				o->pre_depth++;
				resetStringInfo(&o->pre);
				f |= F_PRE;
			}
			break;
		case H_TR:
			if (o->inline_depth > 0)
			{
				html_space(o);
				f |= F_SPACE;
				break;
			}
			if (!o->table_rows || !o->in_block)
				html_break(o);
			else
			{
				o->pending_nl = true;
				o->need_space = o->pending_cell = false;
			}
			o->table_rows = true;
			o->row_text = false;
			o->row_depth++;
			o->inline_depth++;
			f |= F_ROW | F_INLINE;
			break;
		case H_CELL:
			if (o->row_depth > 0 && o->row_text)
			{
				o->pending_cell = true;
				o->need_space = false;
			}
			else
				html_space(o);
			break;
		default:
			break;
	}
	return f;
}

/* Leaving an element entered with flags f */
static void
html_leave(HtmlOut *o, int f)
{
	if (f & F_SILENT)
		o->silent--;
	if (f & F_TITLE)
	{
		o->title_depth--;
		o->have_title = true;
	}
	if (f & F_PRE)
	{
		o->pre_depth--;
		html_flush_pre(o);
	}
	if (f & F_ROW)
		o->row_depth--;
	if (f & F_INLINE)
		o->inline_depth--;
	if (f & F_TABLE)
		o->table_rows = false;
	if (f & F_BREAK)
		html_break(o);
	if (f & F_SPACE)
		html_space(o);
	if (f & F_PREFIX)
		o->prefix = NULL;
}

/* Walks the tree without recursion (nesting may be arbitrarily deep) */
static void
html_walk(HtmlOut *o, xmlDocPtr doc)
{
	xmlNodePtr	n = doc->children;

	while (n != NULL)
	{
		int			f;

		if ((++o->nodes & 1023) == 0)
			CHECK_FOR_INTERRUPTS();
		f = html_enter(o, n);
		n->_private = (void *) (uintptr_t) f;
		if (f != 0)
		{
			if (n->children != NULL)
			{
				n = n->children;
				continue;
			}
			html_leave(o, f);
		}
		while (n->next == NULL)
		{
			n = n->parent;
			if (n == NULL || n->type != XML_ELEMENT_NODE)
				return;
			html_leave(o, (int) (uintptr_t) n->_private);
		}
		n = n->next;
	}
}

/* Walks the tree, then frees it (also on an error or a cancel) */
static void
html_walk_free(HtmlOut *o, xmlDocPtr x)
{
	PG_TRY();
	{
		html_walk(o, x);
	}
	PG_CATCH();
	{
		xmlFreeDoc(x);
		PG_RE_THROW();
	}
	PG_END_TRY();
	xmlFreeDoc(x);
}

/*
 * HTML (UTF-8 when utf8, else raw bytes decoded by charset or the
 * document's declaration) to a body and a title in the server encoding.
 */
static void
html_document(const char *data, int len, bool utf8, const char *charset,
			  KbDocument *doc)
{
	HtmlOut		o;
	xmlDocPtr	x;
	int			options = HTML_PARSE_RECOVER | HTML_PARSE_NOERROR |
		HTML_PARSE_NOWARNING | HTML_PARSE_NONET | HTML_PARSE_COMPACT;

	memset(&o, 0, sizeof(o));
	initStringInfo(&o.buf);
	initStringInfo(&o.title);
	initStringInfo(&o.pre);
	xmlInitParser();
	if (utf8)
		options |= HTML_PARSE_IGNORE_ENC;
	x = htmlReadMemory(data, len, NULL, utf8 ? "UTF-8" : charset, options);
	if (x != NULL)
		html_walk_free(&o, x);
	doc->body = pg_any_to_server(o.buf.data, o.buf.len, PG_UTF8);
	doc->body_len = doc->body == o.buf.data ? o.buf.len : strlen(doc->body);
	while (o.title.len > 0 && o.title.data[o.title.len - 1] == ' ')
		o.title.data[--o.title.len] = '\0';
	doc->title = o.title.len == 0 ? NULL :
		pg_any_to_server(o.title.data + (o.title.data[0] == ' '),
						 o.title.len - (o.title.data[0] == ' '), PG_UTF8);
}

/*
 * Parses a document of type mime: data are text in the server encoding,
 * or raw bytes when binary.  Fills doc (see kbtext.h).
 */
void
kb_parse_document(const char *data, int len, const char *mime, bool binary,
				  KbDocument *doc)
{
	char	   *charset;
	DocKind		kind = parse_mime(mime, &charset);
	char	   *text;
	int			tlen;

	if (len > KB_MAX_CONTENT)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("document of %d bytes is too large", len),
				 errdetail("Documents of at most %d bytes are parsed.", KB_MAX_CONTENT)));
	doc->title = NULL;
	switch (kind)
	{
		case DOC_HTML:
			if (!binary && GetDatabaseEncoding() != PG_UTF8)
			{
				text = (char *) pg_do_encoding_conversion((unsigned char *) data, len,
														  GetDatabaseEncoding(), PG_UTF8);
				html_document(text, strlen(text), true, NULL, doc);
			}
			else
				html_document(data, len, !binary, charset, doc);
			return;
		case DOC_PDF:
			if (!binary)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("a PDF document must be passed as bytea"),
						 errhint("Use maester.kb_parse(content bytea, 'application/pdf').")));
			text = kb_pdf_text(data, len, &tlen);
			text = decode_bytes(text, tlen, NULL);
			doc->body = plain_body(text, strlen(text), true, &doc->body_len);
			return;
		case DOC_PLAIN:
		case DOC_MARKDOWN:
			if (binary)
			{
				data = decode_bytes(data, len, charset);
				len = strlen(data);
			}
			text = normalize_newlines(data, len, &tlen);
			if (kind == DOC_PLAIN)
				doc->body = plain_body(text, tlen, false, &doc->body_len);
			else
			{
				doc->body = text;
				doc->body_len = tlen;
				doc->title = markdown_title(text, tlen);
			}
			return;
	}
}

/* The (title, body) record of a parsed document */
static Datum
parse_result(FunctionCallInfo fcinfo, bool binary)
{
	Datum		content = PG_GETARG_DATUM(0);
	char	   *mime = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Size		raw = toast_raw_datum_size(content) - VARHDRSZ;
	TupleDesc	tupdesc;
	KbDocument	doc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	struct varlena *v;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (raw > KB_MAX_CONTENT)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("document of %zu bytes is too large", raw),
				 errdetail("Documents of at most %d bytes are parsed.", KB_MAX_CONTENT)));
	v = PG_DETOAST_DATUM_PACKED(content);
	kb_parse_document(VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v), mime, binary, &doc);
	if (doc.title != NULL)
		values[0] = CStringGetTextDatum(doc.title);
	else
		nulls[0] = true;
	values[1] = PointerGetDatum(cstring_to_text_with_len(doc.body, doc.body_len));
	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

PG_FUNCTION_INFO_V1(kb_parse_text);
Datum
kb_parse_text(PG_FUNCTION_ARGS)
{
	return parse_result(fcinfo, false);
}

PG_FUNCTION_INFO_V1(kb_parse_bytea);
Datum
kb_parse_bytea(PG_FUNCTION_ARGS)
{
	return parse_result(fcinfo, true);
}
