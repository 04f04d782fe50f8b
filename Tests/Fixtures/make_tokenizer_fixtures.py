#!/usr/bin/env python3
"""Regenerate Tests/Fixtures/tokenizer/cases.json, the reference ids for the Swift GPT-2 tokenizer tests.

The reference encoder is tiktoken (PyPI), run fully offline on the GPT-2 ranks file:

    tiktoken.Encoding("gpt2", pat_str=PATTERN,
                      mergeable_ranks=tiktoken.load.load_tiktoken_bpe(PATH),
                      special_tokens={"<|endoftext|>": 50256})

Usage (from the repository root; needs `pip install tiktoken regex`):

    python3 Tests/Fixtures/make_tokenizer_fixtures.py [--vocab PATH/gpt2.tiktoken] [--corpus PATH/shakespeare_1mb.txt]

Defaults: gpt2/gpt2.tiktoken and corpus/shakespeare_1mb.txt in the data directory that Launch/fetch-data fills
($GPT2DIST_DATA if set, else data/).

With --class-table it also regenerates Sources/Tokenizer/UnicodeClassTable.swift: the class (\p{L}, \p{N}, \s or
other) that tiktoken's regex engine gives every Unicode scalar, probed through tiktoken itself (throwaway
vocabularies whose whole-piece lookup reveals whether "a"+c, "1"+c or "!"+c is one pre-token). The Swift tokenizer
uses that table instead of the Swift runtime's Unicode data, so it matches tiktoken even for scalars whose
properties differ between Unicode versions (tiktoken 0.14.0's Rust regex crate: Unicode 16; Swift 6.3: Unicode 17).

Output format (JSON object):
  "tiktoken_version": the tiktoken version that produced the file
  "pattern": the pre-tokenization pattern
  "cases":  list of {"text": str, "ids": [int]} (hand-written cases, then 300 seeded random strings); ids are from
            enc.encode(text, allowed_special="all"), i.e. a literal "<|endoftext|>" becomes the special token 50256.
  "cases_ordinary": list of {"text": str, "ids": [int]} from enc.encode_ordinary(text)
            (special-token text encoded as ordinary text).
  "corpus": list of {"name", "file", "prefix_chars", "byte_count", "count", "sha256", "first_ids"}:
            the ids of enc.encode_ordinary(corpus_text[:prefix_chars]) ("file" is relative to the data directory;
            prefix_chars counts code points, null = the whole file; the file is read without newline translation),
            "count" = number of ids, "first_ids" = the first 100 ids, and
            "sha256" = hex SHA-256 of the ids serialised as little-endian uint32 (4 bytes per id, no separator).
            "byte_count" = UTF-8 byte length of the encoded text.
"""
import argparse
import hashlib
import json
import os
import struct
import sys

import tiktoken
import tiktoken.load

PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DATA = os.environ.get("GPT2DIST_DATA") or os.path.join(REPO, "data")  # as Launch/fetch-data chooses it
CORPUS_FILE = "corpus/shakespeare_1mb.txt"  # relative to DATA, where the Swift tests read it

CASES = [
    # Seed checks
    "Every effort moves you",
    "Every day holds a",
    "",
    " ",
    "  ",
    "a",
    "Hello, world!",
    "Hello world",
    " Hello world ",
    # Contractions (the pattern is case-sensitive)
    "I'm sure you'll see they're here, we've done it, she's, it'd, don't",
    "I'M SURE YOU'LL SEE THEY'RE HERE, WE'VE DONE IT, SHE'S, IT'D, DON'T",
    "It'S you'Ll they'Re we'Ve I'M it'D don'T",
    "'s 't 're 've 'm 'll 'd",
    "'sx 'tt 'red 'vex 'mm 'lll 'dd",
    "''s '''t 'r 'v 'l ' ' '",
    "x'sy ''re '",
    "'",
    "''",
    "'s",
    " 's",
    "\n's",
    # Apostrophe variants
    "it\u2019s rock\u2019n\u2019roll \u2018quoted\u2019 \u201cdouble\u201d \u02bcokina \u0060back\u00b4tick \uff07fullwidth",
    "l\u2019homme d\u2019\u00e9tat",
    # Latin with diacritics (precomposed and combining)
    "Cr\u00e8me br\u00fbl\u00e9e, na\u00efve caf\u00e9, \u00c5ngstr\u00f6m, stra\u00dfe, \u0141\u00f3d\u017a, \u0218tefan",
    "Cre\u0300me bru\u0302le\u0301e cafe\u0301 e\u0301\u0301\u0301 a\u0308o\u0308u\u0308",
    "\u0301leading combining mark",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O\u0342\u030c\u030c\u0358\u0328\u0335\u0339\u033b\u031d\u0333",
    # Greek, Cyrillic, Arabic, Hebrew, Devanagari, Thai
    "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5! \u0391\u0392\u0393 \u03b1\u03b2\u03b3",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0401\u043b\u043a\u0430 \u0451\u0436\u0438\u043a",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u060c \u0643\u064e\u062a\u064e\u0628\u064e \u0661\u0662\u0663",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd \u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e \u0915\u094d\u0937\u0924\u094d\u0930\u093f\u092f \u0967\u0968\u0969",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01 \u0e51\u0e52\u0e53",
    # CJK, Hangul, Japanese kana
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u6c49\u5b57\u6f22\u5b57 \u3002\u3001",
    "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4 \u1100\u1161\u11a8",
    "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c \u30ab\u30bf\u30ab\u30ca \uff76\uff80\uff76\uff85 \u30fc\u3005",
    "\U00020000\U0002a6d6 \U0001d400\U0001d401 \U00010330\U00010331",
    # Emoji, ZWJ sequences, flags, skin tones, keycaps, variation selectors
    "I \u2764\ufe0f emoji \U0001f600\U0001f602\U0001f923",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family \U0001f3f3\ufe0f\u200d\U0001f308 flag",
    "\U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5\U0001f1e9\U0001f1ea flags \U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
    "\U0001f44d\U0001f3fb\U0001f44d\U0001f3fc\U0001f44d\U0001f3fd\U0001f44d\U0001f3fe\U0001f44d\U0001f3ff skin",
    "1\ufe0f\u20e3 #\ufe0f\u20e3 *\ufe0f\u20e3",
    " \U0001f600 \U0001f600\U0001f600  \U0001f600",
    # Whitespace: long runs, tabs, CRLF, Unicode spaces
    "a" + " " * 40 + "b",
    " " * 17,
    "\t" * 9 + "x",
    "a\tb\t\tc \td\t e",
    "line one\r\nline two\r\n\r\nline four\r\n",
    "\r\n\n   \t x",
    "\n\n\n",
    "\n \n  \n   x",
    "x   \n",
    "x \n y",
    "   leading and trailing   ",
    "a\u00a0b \u00a0c\u00a0 d",
    "a\u2000b\u2001c\u2002d\u2003e\u2004f\u2005g\u2006h\u2007i\u2008j\u2009k\u200al",
    "a\u2028b\u2029c\u202fd\u205fe\u3000f\u1680g\u0085h",
    "  \u3000\u3000x \u00a0 y",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060wj",
    "\ufeffBOM at start",
    "a\u000bb\u000cc\u001cd\u001de\u001ef\u001fg",
    "x\u000b\u000b y\u000c z",
    # Numbers, including Unicode digits
    "12345 678 9 0.5 3.14159 1,000,000 -42 +7 1e10 0x1F",
    "2023-11-22 12:34:56",
    "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669 \u06f1\u06f2\u06f3",
    "x\u00b2 + y\u00b3 = z\u00b9 \u2070\u2074\u2075",
    "\u00bd \u00bc \u00be \u2153 \u215e 1\u00bd",
    "\u216b \u2160\u2161\u2162 \u2170\u2171 \u3007 \u4e00\u4e8c\u4e09",
    "\u2460\u2461\u2462 \u24ea \u2776 \U0001f10b",
    "\uff11\uff12\uff13 \ud835\udfce\ud835\udfcf".encode("utf-16", "surrogatepass").decode("utf-16"),
    "abc123def 123abc abc 123",
    # Punctuation and symbols
    "!!! ??? ... --- *** ((( ))) [[[ ]]] {{{ }}}",
    "foo.bar(baz) + qux[0] == {\"k\": 'v'};",
    "<html><body class=\"x\">&amp;&lt;</body></html>",
    "====== ------ ______ ~~~~~~ ###### @@@@@@",
    "\u00a9\u00ae\u2122 \u20ac100 \u00a3\u00a5\u20b9 \u00b0C \u00b1\u00d7\u00f7 \u221e\u2211\u222b",
    "http://example.com/path?q=1&r=2#frag",
    "C:\\Users\\name\\file.txt",
    "    def f(x):\n        return x ** 2\n",
    # Special token
    "<|endoftext|>",
    "Hello<|endoftext|>world",
    "Hello <|endoftext|> world",
    "a\n<|endoftext|>\nb",
    "<|endoftext|><|endoftext|>",
    "  <|endoftext|>  ",
    "<|endoftext|",
    "<|endoftext|>>",
    "<<|endoftext|>",
    "<|end of text|> <|ENDOFTEXT|>",
    # Control characters, NUL, DEL, C1
    "\x00",
    "a\x00b\x00\x00c",
    "\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x7f",
    "\x80\x81\x9f \u0085x",
    "bell\x07 esc\x1b[0m",
    # Private use, noncharacters, unassigned, replacement char
    "\ue000\uf8ff \U000f0000 \ufffd\ufffe\uffff",
    "\U0010ffff",
    # Scalars assigned in Unicode 17 (tiktoken 0.14's regex: Unicode 16, other; Swift 6.3: letters/numbers)
    "\ua7f1's \U000323b0're \U00033479'll \u088f'd \U00011de0'm \U00016ff4't x\U0001e6c0y",
    "\U00035236'm \U000e01f0'll \U0010fffd's",
    # Long and repeated
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ab" * 300,
    "\u00e9" * 200,
    "\U0001f600" * 50,
    "." * 700,
    "1" * 333,
    "the the the the the the the the",
    # Mixed
    "Mixed: English, \u0420\u0443\u0441\u0441\u043a\u0438\u0439, \u4e2d\u6587, \u0627\u0644\u0639\u0631\u0628\u064a\u0629, \u0939\u093f\u0928\u094d\u0926\u0940, \U0001f30d!",
    "ALL CAPS SHOUTING and lowercase whispering and MiXeD cAsE",
    "A\u0301\u0302B 1\u0301 !\u0301 \u0301",
    "\u02b0\u02b1 \u3005\u309d \u0640\u0640",
    "I'll be back.\n\nSaid the 'Terminator' \u2014 in 1984\u2026",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
]

# Alphabet for the seeded random cases: the characters where the pre-tokenizer's alternation is most delicate.
FUZZ_ALPHABET = [" ", " ", " ", "\t", "\n", "\r", "\x0b", "\x0c", "\u00a0", "\u3000", "\u2009", "\u0085", "\u200b",
                 "'", "'", "s", "t", "re", "ve", "m", "ll", "d", "S", "LL", "x", "A", "\u00e9", "\u0301",
                 "1", "42", "\u00b2", "\u0663", "\u216b", ".", "!", "-", "\u2019", "\U0001f600", "\u200d",
                 "\u4e2d", "\u0e01", "<|endoftext|>", "<|", "|>", "\x00"]


def probe_classes():
    """tiktoken's pre-tokenizer class of every scalar: 0 other, 1 letter (\\p{L}), 2 number (\\p{N}), 3 space (\\s)."""
    base = {bytes([b]): b for b in range(256)}
    scalars = [v for v in range(0x110000) if not (0xD800 <= v < 0xE000)]
    cls = bytearray(0x110000)  # surrogate code points stay "other"
    batch = 60000
    for s in range(0, len(scalars), batch):
        chunk = scalars[s:s + batch]
        ranks = dict(base)
        for k, v in enumerate(chunk):
            c = chr(v).encode("utf-8")
            for j, prefix in enumerate((b"a", b"1", b"!")):
                ranks[prefix + c] = 256 + 3 * k + j
        enc = tiktoken.Encoding("probe%d" % s, pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={})
        for k, v in enumerate(chunk):
            hits = [j for j, prefix in enumerate("a1!") if enc.encode_ordinary(prefix + chr(v)) == [256 + 3 * k + j]]
            assert len(hits) <= 1, (hex(v), hits)
            cls[v] = {0: 1, 1: 2, 2: 0}[hits[0]] if hits else 3
    return cls


def write_class_table(path):
    cls = probe_classes()
    runs = [v << 2 | cls[v] for v in range(0x110000) if v == 0 or cls[v] != cls[v - 1]]
    lines = ["// Generated by Tests/Fixtures/make_tokenizer_fixtures.py --class-table (tiktoken %s). Do not edit." % tiktoken.__version__,
             "//",
             "// The class tiktoken's GPT-2 pattern gives each Unicode scalar, as runs: start << 2 | class, where class is",
             "// 0 other ([^\\s\\p{L}\\p{N}]), 1 letter (\\p{L}), 2 number (\\p{N}), 3 whitespace (\\s); a run lasts until the next start.",
             "",
             "let unicodeClassRuns: [UInt32] = ["]
    for i in range(0, len(runs), 8):
        lines.append("    " + ", ".join("0x%07x" % r for r in runs[i:i + 8]) + ",")
    lines.append("]")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote %s: %d runs" % (path, len(runs)))


def fuzz_cases(n=300, seed=20241122):
    import random
    rng = random.Random(seed)
    return ["".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(1, 24))) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", default=os.path.join(DATA, "gpt2", "gpt2.tiktoken"))
    ap.add_argument("--corpus", default=os.path.join(DATA, CORPUS_FILE))
    ap.add_argument("--out", default=os.path.join(HERE, "tokenizer", "cases.json"))
    ap.add_argument("--class-table", action="store_true",
                    help="also regenerate Sources/Tokenizer/UnicodeClassTable.swift")
    args = ap.parse_args()
    vocab = args.vocab
    if not os.path.exists(vocab):
        sys.exit("gpt2.tiktoken not found at %s: run Launch/fetch-data or pass --vocab PATH" % vocab)

    enc = tiktoken.Encoding("gpt2", pat_str=PATTERN,
                            mergeable_ranks=tiktoken.load.load_tiktoken_bpe(vocab),
                            special_tokens={"<|endoftext|>": 50256})
    assert enc.encode("Every effort moves you") == [6109, 3626, 6100, 345]
    assert enc.encode("Every day holds a") == [6109, 1110, 6622, 257]

    if args.class_table:
        write_class_table(os.path.join(REPO, "Sources", "Tokenizer", "UnicodeClassTable.swift"))

    cases = [{"text": t, "ids": enc.encode(t, allowed_special="all")} for t in CASES + fuzz_cases()]
    ordinary = [{"text": t, "ids": enc.encode_ordinary(t)} for t in CASES if "<|" in t or "endoftext" in t]
    for c in cases + ordinary:  # every case must round-trip through decode
        assert enc.decode(c["ids"]) == c["text"], c["text"]

    corpus = []
    if os.path.exists(args.corpus):
        with open(args.corpus, encoding="utf-8", newline="") as f:  # no newline translation
            text = f.read()
        for name, n in (("shakespeare_1mb_first20000chars", 20000), ("shakespeare_1mb", None)):
            t = text if n is None else text[:n]
            ids = enc.encode_ordinary(t)
            corpus.append({
                "name": name,
                "file": CORPUS_FILE,
                "prefix_chars": n,
                "byte_count": len(t.encode("utf-8")),
                "count": len(ids),
                "sha256": hashlib.sha256(struct.pack("<%dI" % len(ids), *ids)).hexdigest(),
                "first_ids": ids[:100],
            })
    else:
        print("warning: corpus not found, no corpus fixtures written:", args.corpus, file=sys.stderr)

    out = {"tiktoken_version": tiktoken.__version__, "pattern": PATTERN,
           "cases": cases, "cases_ordinary": ordinary, "corpus": corpus}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, indent=None, separators=(",", ":"))
        f.write("\n")
    print("wrote %s: %d cases, %d ordinary cases, %d corpus entries" % (args.out, len(cases), len(ordinary), len(corpus)))
    for c in corpus:
        print("  %s: %d ids, sha256 %s" % (c["name"], c["count"], c["sha256"]))

if __name__ == "__main__":
    main()
