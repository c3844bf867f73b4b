#!/usr/bin/env python3
"""Reference token ids and chat renderings for finch's tokenizer tests, made by llama.cpp
(through llama-cpp-python) and jinja2.

What it writes (tests/fixtures/tokenizer/):

  smollm2_ids.jsonl   line 1: {"meta": versions, seed, model file and its sha256, counts};
                      then one JSON object per test line: the text ("text", or "hex" for
                      byte strings that are not valid UTF-8), whether special tokens were
                      parsed ("special"), the ids llama.cpp's tokenizer gives for the real
                      SmolLM2-135M-Instruct vocabulary ("ids", add_special off), and for
                      "hex" lines the bytes llama.cpp decodes the ids back to
                      ("decoded_hex"). At least 1,000 lines: handwritten ones and generated
                      ones (fixed seed) mixing prose, accents, CJK, emoji with ZWJ
                      sequences, code, runs of spaces/newlines/tabs, numbers of many lengths,
                      contractions in odd casing, Arabic/Hebrew/Devanagari/Thai, control
                      token strings, unusual punctuation and whitespace.
  tiny_<pre>.gguf     a tiny byte-level BPE vocabulary (all 256 byte characters but two,
                      a few merges chosen to show rank order, pieces and fallbacks, control
                      and user-defined tokens), one file per pre-tokenizer name
  tiny_ids.json       for each of those files, llama.cpp's ids for a set of strings with
                      and without special parsing, and with add_special
  chat_templates.json reference chat templates (SmolLM2's, read from the model file, and
                      the published templates of the other families), conversations, and
                      what jinja2 renders for them with Hugging Face's settings
                      (trim_blocks, lstrip_blocks, a sandbox, raise_exception); a case
                      where the template raises records "error": true

What it does not do: it does not use llama.cpp's own chat-template engine (the brief is
to match the Jinja rendering), and it leaves out byte strings llama.cpp cannot tokenize
(sequences that decode above U+10FFFF make it abort).

Regenerate (from the repository root; needs the model from scripts/setup.sh):
    python3 tests/reference/make_tokenizer_fixtures.py
"""
import argparse
import hashlib
from importlib.metadata import version
import json
import os
import platform
import random
import sys

import gguf
import jinja2
import jinja2.sandbox
import llama_cpp
from llama_cpp._utils import suppress_stdout_stderr

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "tokenizer"))
DEFAULT_MODEL = os.path.join(os.environ.get("FINCH_CACHE", os.path.expanduser("~/.cache/finch")),
                             "SmolLM2-135M-Instruct.Q4_1.gguf")
SEED = 20241122

# ---------------------------------------------------------------------------------------
# Test lines
# ---------------------------------------------------------------------------------------

HANDWRITTEN = [
    "Hello world",
    "The capital of France is Paris.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t",
    " \t \n \r\n",
    "a\r\nb\rc\nd",
    "    indented by four",
    "trailing spaces   ",
    "   leading spaces",
    "  multiple   spaces   between    words  ",
    "It's",
    "it's I'm you're we've they'll she'd don't",
    "IT'S I'M YOU'RE WE'VE THEY'LL SHE'D DON'T",
    "It'S i'M yOu'Re We'vE tHeY'lL sHe'D dOn'T",
    "'s 't 're 've 'm 'll 'd",
    "rock'n'roll o'clock ma'am y'all",
    "1",
    " 12345",
    "3.14159265358979",
    "1,000,000 and 1.000.000 and 1 000 000",
    "-42 +17 0x1F 0b1010 1e-9 6.02e23",
    "1234567890123456789012345678901234567890",
    "In 2024, 73% of 1,024 users paid $9.99/month.",
    "Café déjà vu.",
    "naïve coöperation façade résumé piñata",
    "Straße Ærø Øresund Łódź Škoda",
    "e\u0301 vs \u00e9 (combining acute vs precomposed)",
    "你好，世界！",
    "日本語のテキストとカタカナ、ひらがな。",
    "안녕하세요 세계",
    "Привет, мир! Ёжик в тумане.",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Tiếng Việt có dấu",
    "Emoji: 😀😃😄 👍🏽 ❤️",
    "Family: 👨‍👩‍👧‍👦 and 👩🏽‍💻 and 🏳️‍🌈",
    "Flags: 🇫🇷🇩🇪🇯🇵",
    "def f(x):\n    return x ** 2\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * c; }",
    "if x != None and y >= 3: print(f'{x=}')",
    "<html><body class=\"main\">&amp; &lt;tag&gt;</body></html>",
    "SELECT * FROM users WHERE id = 1;",
    "https://example.com/path?query=1&b=2#frag",
    "user@example.com",
    "«Guillemets» „Anführungszeichen“ “curly” ‘single’",
    "Dashes – — ‒ ― and ellipsis… and bullets • · ‣",
    "§1 ¶2 † ‡ © ® ™ ° ± × ÷",
    "∑∫√∞≠≤≥ ∀x∃y: x ∈ ℝ",
    "x² + y³ = z½",
    "Full-width: １２３ ＡＢＣ",
    "Arabic digits: ٠١٢٣٤٥٦٧٨٩",
    "Devanagari digits: ०१२३",
    "Roman: Ⅻ Ⅷ ⅷ",
    "Circled: ① ② ③",
    "no\u00a0break\u00a0space",
    "ideographic\u3000space",
    "em\u2003space and thin\u2009space",
    "zero\u200bwidth",
    "soft\u00adhyphen",
    "\ufeffBOM at start",
    "NEL\u0085line",
    "line\u2028separator",
    "vertical\x0btab and form\x0cfeed",
    "ctrl\x01\x02\x7fchars",
    "info\x1cseparators\x1d\x1e\x1f",
    "  \x1c",
    "\x00nul inside",
    "!!!???...",
    "@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "a  b\t\tc\n\nd",
    "   \n   \n",
    "\t\t\tdeep",
    "<|im_start|>user\nHello<|im_end|>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_start",
    "im_start|>",
    "<|im_end|><|im_end|>",
    "text<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>assistant\n",
    "<repo_name>finch<file_sep>main.c<filename>x<gh_stars>10",
    "<jupyter_start><jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<<|im_start|>>",
    "< |im_start| >",
]

# Lines also tokenized with special parsing.
SPECIAL_LINES = [
    "<|im_start|>user\nHello<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|im_end|><|im_end|>",
    "<<|im_start|>>",
    "<|im_start",
    "text<|endoftext|>more text",
    "<repo_name>finch<file_sep>main.c<filename>x<gh_stars>10",
    "<jupyter_start><jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<issue_start>bug<issue_comment>fixed<issue_closed>",
    "<jupyter_script><jupyter_text>",
    "  <|im_start|>  spaced  <|im_end|>  ",
    "\n<|im_start|>\n",
    "<|im_start|><|im_start|>user",
    "😀<|im_end|>😀",
]

# Byte strings that are not valid UTF-8 (llama.cpp reads each bad byte as U+FFFD).
INVALID = [
    b"\xff abc",
    b"a\x80b",
    b"\xc0\x80x",
    b"\xc1\x81",
    b"\xed\xa0\x80z",
    b"\xe2\x82",
    b"caf\xc3",
    b"\xf0\x9f\x98",
    b"\xf0\x9f\x98 ok",
    b"mixed \xfe\xfe valid \xc3\xa9",
    b"\xe0\x80\x80A",
    b"  \xff\xff  ",
    b"12\x8034",
    b"<|im_start|>\xff<|im_end|>",
]

WORDS = ("the of and to in is you that it he was for on are as with his they at be this "
         "have from or one had by word but not what all were we when your can said there "
         "use an each which she do how their if will up other about out many then them "
         "these so some her would make like him into time has look two more write go see "
         "number no way could people my than first water been call who oil its now find "
         "long down day did get come made may part tokenizer merge byte pair encoding model "
         "gradient adapter learning rate transformer attention").split()
ACCENTED = ("café déjà naïve über señor façade Ångström Zürich Málaga crème brûlée Øre "
            "jalapeño São Paulo Kraków İstanbul ǅ").split()
CJK = list(
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学"
    "对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头"
    "面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向"
    "情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信"
    "北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难"
    "神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物"
    "台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指"
    "思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步"
    "完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双"
    "历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞"
    "观争究包组造落视济喜离虽坏兴注"
)
KANA = list("あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコサシスセソタチツテト")
HANGUL = list("가나다라마바사아자차카타파하한국어말글")
CYRILLIC = "мир привет слово язык модель данные обучение текст".split()
GREEK = "λόγος κόσμος αλφάβητο μάθηση".split()
ARABIC = "مرحبا العالم كتاب لغة نموذج تعلم".split()
HEBREW = "שלום עולם ספר שפה מודל".split()
DEVANAGARI = "नमस्ते दुनिया भाषा मॉडल सीखना हिन्दी".split()
THAI = "สวัสดี ภาษาไทย เรียนรู้ แบบจำลอง".split()
EMOJI = ["😀", "😂", "🥲", "👍", "👍🏿", "🎉", "🚀", "❤️", "🔥", "✨", "🧠", "🐍", "🦀",
         "👨‍👩‍👧", "👩‍🔬", "🧑🏽‍🚀", "🏳️‍🌈", "🏴‍☠️", "🇺🇸", "🇯🇵", "1️⃣", "#️⃣", "👁️‍🗨️"]
PUNCT = list(".,;:!?-—–…'\"()[]{}<>/\\|@#$%^&*_+=~`«»“”‘’¿¡·•§¶†‡")
CODE = ["def", "return", "if", "else", "for", "while", "int", "char", "void", "struct",
        "x", "y", "i", "j", "n", "foo", "bar", "self", "None", "NULL", "==", "!=", "<=", ">=",
        "->", "=>", "::", "++", "--", "&&", "||", "**", "//", "/*", "*/", "{", "}", "(", ")",
        "[", "]", ";", ",", ".", "=", "+", "-", "*", "/", "%", "\"str\"", "'c'", "0", "1",
        "42", "0xff", "printf", "malloc", "std::vector<int>", "#include", "<stdio.h>"]
WHITESPACE = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n ",
              "\n\t", " \t ", "\u00a0", "\u3000", "\u2003", "        "]
SPECIAL_TEXTS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>", "<reponame>",
                 "<jupyter_code>", "<|im_start", "im_end|>", "<|", "|>"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M",
                "'LL", "'D", "'x", "'"]


def rand_number(rng):
    kind = rng.randrange(6)
    if kind == 0:
        return str(rng.randrange(10))
    if kind == 1:
        return str(rng.randrange(10 ** rng.randrange(1, 25)))
    if kind == 2:
        return "%d.%0*d" % (rng.randrange(1000), rng.randrange(1, 6), rng.randrange(10 ** 5))
    if kind == 3:
        return "{:,}".format(rng.randrange(10 ** rng.randrange(3, 13)))
    if kind == 4:
        return "-" + str(rng.randrange(10 ** rng.randrange(1, 8)))
    return "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 40)))


def rand_word(rng, pool):
    w = rng.choice(pool)
    casing = rng.randrange(8)
    if casing == 0:
        w = w.upper()
    elif casing == 1:
        w = w.capitalize()
    elif casing == 2:
        w = "".join(c.upper() if rng.random() < 0.5 else c for c in w)
    return w


def rand_chunk(rng, style):
    if style == "prose":
        return rand_word(rng, WORDS)
    if style == "accent":
        return rand_word(rng, ACCENTED + WORDS)
    if style == "cjk":
        pool = rng.choice([CJK, KANA, HANGUL])
        return "".join(rng.choice(pool) for _ in range(rng.randrange(1, 8)))
    if style == "script":
        return rng.choice(rng.choice([CYRILLIC, GREEK, ARABIC, HEBREW, DEVANAGARI, THAI]))
    if style == "emoji":
        return "".join(rng.choice(EMOJI) for _ in range(rng.randrange(1, 4)))
    if style == "code":
        return rng.choice(CODE)
    if style == "number":
        return rand_number(rng)
    if style == "punct":
        return "".join(rng.choice(PUNCT) for _ in range(rng.randrange(1, 5)))
    if style == "contraction":
        return rand_word(rng, WORDS) + rng.choice(CONTRACTIONS)
    if style == "special":
        return rng.choice(SPECIAL_TEXTS)
    raise ValueError(style)


STYLES = ["prose", "accent", "cjk", "script", "emoji", "code", "number", "punct",
          "contraction", "special"]


def rand_line(rng):
    # a dominant style plus some noise from all the others
    main = rng.choice(STYLES)
    parts = []
    for _ in range(rng.randrange(1, 24)):
        style = main if rng.random() < 0.6 else rng.choice(STYLES)
        parts.append(rand_chunk(rng, style))
        r = rng.random()
        if r < 0.65:
            parts.append(" ")
        elif r < 0.8:
            parts.append(rng.choice(WHITESPACE))
        # else: glued to the next chunk
    line = "".join(parts)
    if rng.random() < 0.1:
        line = rng.choice(WHITESPACE) + line
    if rng.random() < 0.1:
        line = line + rng.choice(WHITESPACE)
    return line


def make_lines(n_generated):
    rng = random.Random(SEED)
    lines = [(t, False) for t in HANDWRITTEN]
    lines += [(t, True) for t in SPECIAL_LINES]
    for i in range(n_generated):
        t = rand_line(rng)
        lines.append((t, False))
        if i % 10 == 0:
            lines.append((t, True))
    return lines


# ---------------------------------------------------------------------------------------
# Tiny vocabularies
# ---------------------------------------------------------------------------------------


def bytes_to_unicode():
    """GPT-2's table: printable bytes stand for themselves, the others for U+0100 on."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tiny_vocab():
    B = bytes_to_unicode()
    # control tokens, a user-defined token, two control tokens whose texts overlap
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>", "[ab]", "b][cd]",
              "<s>", "</s>"]
    types = [3, 3, 3, 4, 3, 3, 3, 3]
    # every byte character but those of 'Q' and 0xC3 ('Ã'), so fallbacks can be seen
    for b in range(256):
        if b in (ord("Q"), 0xC3):
            continue
        tokens.append(B[b])
        types.append(1)
    merges = [
        "h e", "l l", "he ll", "hell o",        # hello
        "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",  # Ġworld
        "b c", "a b",                           # rank order: 'abc' -> a bc
        "p q", "q r",                           # rank order: 'pqr' -> pq r
        "a a",                                  # 'aaaaa' -> aa aa a
        "x y",                                  # merged text 'xy' is not a token
        "Ġ Ġ", "ĠĠ ĠĠ", "Ċ Ċ", "ĉ ĉ",          # whitespace runs
        "1 2", "12 3", "2 3", "4 5", "45 6",    # digit runs
        "' s", "' t", "' S",                    # contractions
        "Ġ 1", "Ġ a", ". .", ".. .",
    ]
    extra = ["he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld", "bc", "ab",
             "pq", "qr", "aa", "ĠĠ", "ĠĠĠĠ", "ĊĊ", "ĉĉ", "12", "123", "23", "45", "456",
             "'s", "'t", "'S", "Ġ1", "Ġa", "..", "...",
             "zzz"]  # 'zzz': a token no merge makes (ignore_merges shows it)
    tokens += extra
    types += [1] * len(extra)
    return tokens, types, merges


TINY_PRES = ["smollm", "gpt-2", "llama3", "qwen2", "default", "falcon"]

TINY_TEXTS = [
    "hello world",
    "Hello World",
    "abc pqr aaaaa xy",
    "zzz zzz",
    " 123456 12 3",
    "1234567",
    "it's IT'S it'S they'll",
    "a  b   c    d",
    "line\n\nnext\t\ttab",
    "  \n  x",
    "...... .. ..",
    "Q é É",
    "<|im_start|>hello<|im_end|>",
    "<tool>hello<tool>",
    "[ab][cd]",
    "x[ab]y",
    "<s>hello</s>",
    "a\u00a0b\u3000c",
    "12,345.678",
    "!!hello??",
    "\u0661\u0662\u0663 ①②",
    "a\r\n\r\nb",
    "",
]


def write_tiny(path, pre):
    tokens, types, merges = tiny_vocab()
    w = gguf.GGUFWriter(path, "llama")
    # hyperparameters only so that llama.cpp agrees to load the vocabulary
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(6)  # <s>
    w.add_eos_token_id(7)  # </s>
    w.add_add_eos_token(pre == "gpt-2")  # one file that appends EOS with add_special
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def load(path):
    with suppress_stdout_stderr():
        return llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)


def tiny_fixtures(out):
    result = {"texts": TINY_TEXTS, "pres": {}}
    for pre in TINY_PRES:
        path = os.path.join(out, "tiny_%s.gguf" % pre)
        write_tiny(path, pre)
        m = load(path)
        cases = []
        for t in TINY_TEXTS:
            b = t.encode()
            cases.append({
                "text": t,
                "ids": m.tokenize(b, add_bos=False, special=False),
                "ids_special": m.tokenize(b, add_bos=False, special=True),
                "ids_add_special": m.tokenize(b, add_bos=True, special=False),
            })
        result["pres"][pre] = cases
        del m
    with open(os.path.join(out, "tiny_ids.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------------------

# The published templates (tokenizer_config.json "chat_template") of each family.
TEMPLATES = {
    "chatml-qwen2": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "chatml-plain": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}"
        "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
        "{% for message in loop_messages %}{% if (message['role'] == 'user') != "
        "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
        "user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and "
        "system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
        "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
        "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + "
        "'[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"),
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{% endif %}"),
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System "
        "role not supported') }}{% endif %}{% for message in messages %}{% if "
        "(message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception("
        "'Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
        "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + "
        "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"),
    "gemma3": (
        "{{ bos_token }}\n"
        "{%- if messages[0]['role'] == 'system' -%}\n"
        "    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
        "    {%- set loop_messages = messages[1:] -%}\n"
        "{%- else -%}\n"
        "    {%- set first_user_prefix = \"\" -%}\n"
        "    {%- set loop_messages = messages -%}\n"
        "{%- endif -%}\n"
        "{%- for message in loop_messages -%}\n"
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
        "        {{ raise_exception(\"Conversation roles must alternate "
        "user/assistant/user/assistant/...\") }}\n"
        "    {%- endif -%}\n"
        "    {%- if (message['role'] == 'assistant') -%}\n"
        "        {%- set role = \"model\" -%}\n"
        "    {%- else -%}\n"
        "        {%- set role = message['role'] -%}\n"
        "    {%- endif -%}\n"
        "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
        "    {{- message['content'] | trim -}}\n"
        "    {{ '<end_of_turn>\\n' }}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}\n"
        "    {{'<start_of_turn>model\\n'}}\n"
        "{%- endif -%}\n"),
    "phi3": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + "
        "message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
        "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == "
        "'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}"
        "{{ eos_token }}{% endif %}"),
    "phi3.5": (
        "{% for message in messages %}{% if message['role'] == 'system' and "
        "message['content'] %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
        "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + "
        "'<|end|>\\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + "
        "message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}{% if "
        "add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"),
    "zephyr": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
        "{% endfor %}"),
}

FAMILY = {"smollm2": "chatml", "chatml-qwen2": "chatml", "chatml-plain": "chatml",
          "llama2": "llama2", "llama3": "llama3", "gemma": "gemma", "gemma3": "gemma",
          "phi3": "phi3", "phi3.5": "phi3", "zephyr": "zephyr"}

SPECIAL_TOKENS = {
    "smollm2": ("<|im_start|>", "<|im_end|>"), "chatml-qwen2": ("", "<|im_end|>"),
    "chatml-plain": ("", "<|im_end|>"), "llama2": ("<s>", "</s>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"), "gemma": ("<bos>", "<eos>"),
    "gemma3": ("<bos>", "<eos>"), "phi3": ("<s>", "<|endoftext|>"),
    "phi3.5": ("<s>", "<|endoftext|>"), "zephyr": ("<s>", "</s>"),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "  padded\n"},
     {"role": "assistant", "content": "\n reply \u00a0"}, {"role": "user", "content": "ok"}],
    [{"role": "user", "content": "Ünïcödé 你好 😀\nline two"},
     {"role": "assistant", "content": "Sure."}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "empty system"}],
    [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "odd"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [],
]


def render(template, name, messages, add_generation_prompt):
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    bos, eos = SPECIAL_TOKENS[name]
    try:
        return env.from_string(template).render(messages=messages, bos_token=bos,
                                                eos_token=eos,
                                                add_generation_prompt=add_generation_prompt)
    except (jinja2.exceptions.TemplateError, IndexError, jinja2.exceptions.UndefinedError):
        return None


def chat_fixtures(out, model_path):
    reader = gguf.GGUFReader(model_path)
    field = reader.fields["tokenizer.chat_template"]
    templates = dict(TEMPLATES)
    templates["smollm2"] = bytes(field.parts[field.data[0]]).decode("utf-8")
    cases = []
    for name in ["smollm2"] + list(TEMPLATES):
        for ci, conv in enumerate(CONVERSATIONS):
            for add in (True, False):
                text = render(templates[name], name, conv, add)
                case = {"template": name, "family": FAMILY[name], "conversation": ci,
                        "add_generation_prompt": add}
                if text is None:
                    case["error"] = True
                else:
                    case["expected"] = text
                cases.append(case)
    doc = {
        "meta": {"jinja2": jinja2.__version__, "python": platform.python_version(),
                 "settings": "ImmutableSandboxedEnvironment(trim_blocks=True, "
                             "lstrip_blocks=True), raise_exception",
                 "special_tokens": SPECIAL_TOKENS},
        "templates": templates,
        "conversations": CONVERSATIONS,
        "cases": cases,
    }
    with open(os.path.join(out, "chat_templates.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------------------


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--generated", type=int, default=900, help="generated lines")
    args = ap.parse_args()
    if not os.path.exists(args.model):
        sys.exit("%s: not found; run scripts/setup.sh" % args.model)
    os.makedirs(args.out, exist_ok=True)

    m = load(args.model)
    lines = make_lines(args.generated)
    records = []
    for text, special in lines:
        b = text.encode("utf-8")
        r = {"text": text, "special": special,
             "ids": m.tokenize(b, add_bos=False, special=special)}
        # a few byte values have no token in this vocabulary (0x1d, ...): llama.cpp drops
        # them, so such a line does not decode back to itself
        decoded = m.detokenize(r["ids"], special=special)
        if decoded != b:
            r["decoded_hex"] = decoded.hex()
        records.append(r)
    for b in INVALID:
        for special in (False, True):
            ids = m.tokenize(b, add_bos=False, special=special)
            records.append({"hex": b.hex(), "special": special, "ids": ids,
                            "decoded_hex": m.detokenize(ids, special=special).hex()})
    meta = {
        "llama_cpp_python": version("llama-cpp-python"), "gguf": version("gguf"),
        "jinja2": version("jinja2"),
        "python": platform.python_version(), "seed": SEED, "lines": len(records),
        "model": os.path.basename(args.model), "model_sha256": sha256(args.model),
        "tokenize": "Llama(vocab_only=True).tokenize(text, add_bos=False, special=...)",
    }
    with open(os.path.join(args.out, "smollm2_ids.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"meta": meta}, ensure_ascii=False) + "\n")
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    del m

    tiny_fixtures(args.out)
    chat_fixtures(args.out, args.model)
    size = os.path.getsize(os.path.join(args.out, "smollm2_ids.jsonl"))
    print("wrote %d lines (%d bytes) to %s" % (len(records), size, args.out))


if __name__ == "__main__":
    main()
