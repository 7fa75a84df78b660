"""The language backbone's corpus: English documentation that Debian ships as text, and the
byte-level BPE tokenizer that project code trains on it (HF `tokenizers`).

Sources (Debian 12 packages, installed with `apt-get install SOURCES`; licences from each
package's copyright file):

| package | licence | files |
| --- | --- | --- |
| linux-doc-6.12 | GPL-2.0 | Documentation/**/*.rst, *.txt (gzipped or not), not translations/ |
| python3.11-doc | PSF-2.0 | html/_sources/**/*.rst.txt (the reST of Python's documentation) |
| perl-doc | GPL-1.0+ or Artistic | /usr/share/perl/5.36.0/pod/*.pod |
| dict-gcide | GPL-2.0+ | gcide.dict.dz (Webster's 1913 with WordNet: definitions, quotations) |

A document is a file (gcide: a run of entries of about 64 k characters). Whitespace runs within a
line collapse to one space; gcide's source tags ("[1913 Webster]") are dropped. A document is held
out when crc32 of its name is 0 mod HELDOUT_MODULUS (fixed, independent of file order); the
tokenizer is trained on the training documents only. Documents are joined by an end-of-text token.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dtlens.errors import DtlensError

VOCAB_SIZE = 4096
EOT = "<|endoftext|>"
HELDOUT_MODULUS = 100
GCIDE_CHUNK = 64_000
NAME = "debian-docs"


@dataclass(frozen=True)
class Source:
    package: str
    licence: str
    root: str
    patterns: tuple[str, ...]
    exclude: tuple[str, ...] = ()

    def files(self) -> list[Path]:
        root = Path(self.root)
        found = {p for pattern in self.patterns for p in root.glob(pattern) if p.is_file()}
        return sorted(
            p for p in found if not any(part in self.exclude for part in p.relative_to(root).parts)
        )


SOURCES = (
    Source(
        "linux-doc-6.12",
        "GPL-2.0",
        "/usr/share/doc/linux-doc-6.12/Documentation",
        ("**/*.rst", "**/*.rst.gz", "**/*.txt", "**/*.txt.gz"),
        exclude=("translations",),
    ),
    Source(
        "python3.11-doc", "PSF-2.0", "/usr/share/doc/python3.11/html/_sources", ("**/*.rst.txt",)
    ),
    Source("perl-doc", "GPL-1.0+ or Artistic", "/usr/share/perl/5.36.0/pod", ("*.pod",)),
    Source("dict-gcide", "GPL-2.0+", "/usr/share/dictd", ("gcide.dict.dz",)),
)

_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANKS = re.compile(r"\n{3,}")
_GCIDE_TAG = re.compile(r"^\[[^\]\n]*\]$", re.MULTILINE)


def read_text(path: Path) -> str:
    """A file's text (gzip and dictzip read transparently), undecodable bytes replaced."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def normalise(text: str) -> str:
    """Collapse whitespace runs within lines, strip lines, keep at most one blank line."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def gcide_documents(text: str, size: int = GCIDE_CHUNK) -> Iterator[str]:
    """gcide's entries without their source tags, in runs of about `size` characters."""
    text = _GCIDE_TAG.sub("", normalise(text))
    start = 0
    while start < len(text):
        end = text.find("\n\n", start + size)
        end = len(text) if end < 0 else end
        yield text[start:end].strip()
        start = end


def documents(sources: tuple[Source, ...] = SOURCES) -> Iterator[tuple[str, str]]:
    """(name, normalised text) of every document, in a fixed order."""
    for source in sources:
        files = source.files()
        if not files:
            raise DtlensError(
                f"no {source.package} files under {source.root}: install the corpus with "
                f"`apt-get install {' '.join(s.package for s in sources)}` (Debian 12)"
            )
        for path in files:
            name = f"{source.package}:{path.relative_to(source.root)}"
            if source.package == "dict-gcide":
                for i, doc in enumerate(gcide_documents(read_text(path))):
                    yield f"{name}#{i:04d}", doc
            else:
                doc = normalise(read_text(path))
                if doc:
                    yield name, doc


def is_heldout(name: str) -> bool:
    return zlib.crc32(name.encode()) % HELDOUT_MODULUS == 0


@dataclass(frozen=True)
class Split:
    train: list[str]
    heldout: list[str]
    heldout_names: list[str]
    sha256: str
    files: dict[str, int]

    @property
    def chars(self) -> int:
        return sum(map(len, self.train)) + sum(map(len, self.heldout))


def split(sources: tuple[Source, ...] = SOURCES) -> Split:
    """The documents, split into training and held-out, with the sha256 of the whole corpus."""
    train, heldout, heldout_names, files = [], [], [], {}
    h = hashlib.sha256()
    for name, doc in documents(sources):
        h.update(name.encode() + b"\0" + doc.encode() + b"\0")
        package = name.split(":", 1)[0]
        files[package] = files.get(package, 0) + 1
        if is_heldout(name):
            heldout.append(doc)
            heldout_names.append(name)
        else:
            train.append(doc)
    return Split(train, heldout, heldout_names, h.hexdigest(), files)


def train_tokenizer(docs: list[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on `docs`, EOT as its one special
    token (id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer, length=len(docs))
    return tok


def encode(tok, docs: list[str]) -> torch.Tensor:
    """Documents to one token stream (int16 ids), each document followed by EOT."""
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.int16)
