"""The shipped sample corpus: the fingerspelling lexicon of the ``spoken-to-signed`` package.

``spoken_to_signed/assets/fingerspelling_lexicon`` holds 600 real MediaPipe Holistic ``.pose``
clips, one per (sign language, letter) for 19 sign languages, indexed by ``data.csv``. Every clip
gives a (text = its letter or letters, lang = the sign-language code) pair in the keypoints
format (:mod:`madis.motion.keypoints`).

Splits. Each (language, letter) has exactly one clip, so every single-letter clip is train.
Val and test are *composed* fingerspelled words, never seen in train: real words per language
(:data:`WORDS`: cities, given names, common nouns) split into the lexicon's units by longest
match (so ``SCH``, ``Ch``, ``Lj``, ``ال`` or Italian double letters are one unit) and built by
concatenating the units' clips. Train gets its own composed words too. The three word lists of
a language are disjoint (checked). What val/test measure is composition: new words from known
letters, as sentences compose signs.

Blend. Consecutive letter clips overlap by :data:`BLEND_FRAMES` frames (3 frames = 0.12 s at
25 fps) with a linear cross-fade (weights 1/4, 2/4, 3/4 on the next clip), which removes the jump
between two independent recordings without changing the letters' own frames elsewhere; blended
frames are valid only where both clips were. Composed samples carry ``composed: true`` and the
units in their JSON.

Order and determinism. Samples are keyed ``{lang}-letter-{i:03d}`` (``i``: row of the language
in ``data.csv``) and ``{lang}-word-{split}-{j:02d}``; val/test shards hold them sorted by key,
train in a fixed seeded permutation of the sorted keys (so that each train shard mixes
languages and every rank of a 2-rank job sees all of them). Two builds give byte-identical
shards.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.resources
import json
import random
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from madis.data.shards import MANIFEST, Sample, write_shards
from madis.motion.keypoints import FPS, KeypointClip, hand_shapes, normalize_points, process_points, read_pose_points
from madis.motion.length import apply_length_rules

PACKAGE = "spoken-to-signed"
LEXICON_SUBDIR = ("assets", "fingerspelling_lexicon")
BLEND_FRAMES = 3
TRAIN_ORDER_SEED = 2024
#: shard size target of the sample corpus: small, so that train has several shards
SAMPLE_MAX_BYTES = 2 * 2**20
#: bump when the build changes its output; a build with an equal fingerprint is skipped
BUILDER_VERSION = 2

#: Words per sign language: (train, val, test). Capitals in the language's own alphabet
#: (no letters the lexicon lacks, e.g. no Greek accents or Portuguese tildes).
WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "ase": {"train": ("BOSTON", "CHICAGO", "DENVER", "MARY", "JOHN", "APPLE", "WATER", "HOUSE"),
            "val": ("SEATTLE", "EMMA", "BOOK", "DALLAS"),
            "test": ("AUSTIN", "OLIVER", "GARDEN", "PHOENIX")},
    "asq": {"train": ("WIEN", "GRAZ", "LINZ", "ANNA", "LUKAS", "SCHULE", "BROT", "MUSIK"),
            "val": ("SALZBURG", "FELIX", "SCHNEE", "HAUS"),
            "test": ("INNSBRUCK", "SOPHIE", "BÄCKER", "MÖBEL")},
    "bzs": {"train": ("BRASIL", "RECIFE", "MARIA", "PEDRO", "AMIGO", "CASA", "ESCOLA", "LIVRO"),
            "val": ("BELEM", "LUCAS", "PRAIA", "NATAL"),
            "test": ("CURITIBA", "BEATRIZ", "FLORESTA", "LAÇO")},
    "cse": {"train": ("PRAHA", "BRNO", "PETR", "JANA", "CHLEBA", "VODA", "ŠKOLA", "ŘEKA"),
            "val": ("OLOMOUC", "MARTIN", "ŽIVOT", "KNIHA"),
            "test": ("PLZEŇ", "LUCIE", "CHATA", "ČESKO")},
    "csq": {"train": ("ZAGREB", "SPLIT", "IVAN", "MARIJA", "KUĆA", "VODA", "ŠKOLA", "LJUBAV"),
            "val": ("RIJEKA", "LUKA", "NJIVA", "ČAŠA"),
            "test": ("OSIJEK", "PETRA", "ŽABA", "ĐAK")},
    "eso": {"train": ("TALLINN", "TARTU", "MARI", "JAAN", "MAJA", "KOOL", "LEIB", "PÄIKE"),
            "val": ("PÄRNU", "KADRI", "VESI", "RAAMAT"),
            "test": ("NARVA", "PEETER", "ÕUN", "SÕBER")},
    "gsg": {"train": ("BERLIN", "HAMBURG", "ANNA", "PAUL", "HAUS", "BROT", "STRAßE", "KÄSE"),
            "val": ("MÜNCHEN", "LENA", "BUCH", "APFEL"),
            "test": ("KÖLN", "JONAS", "WASSER", "GRÜN")},
    "gss": {"train": ("ΑΘΗΝΑ", "ΠΑΤΡΑ", "ΜΑΡΙΑ", "ΝΙΚΟΣ", "ΣΠΙΤΙ", "ΝΕΡΟ", "ΨΩΜΙ", "ΦΙΛΟΣ"),
            "val": ("ΚΡΗΤΗ", "ΕΛΕΝΗ", "ΘΑΛΑΣΣΑ", "ΒΙΒΛΙΟ"),
            "test": ("ΡΟΔΟΣ", "ΓΙΩΡΓΟΣ", "ΗΛΙΟΣ", "ΜΗΛΟ")},
    "ise": {"train": ("ROMA", "MILANO", "MARCO", "GIULIA", "CASA", "PANE", "ACQUA", "LIBRO"),
            "val": ("FIRENZE", "MATTEO", "MAMMA", "NAPOLI"),
            "test": ("TORINO", "ANNA", "PIZZA", "GATTO")},
    "jos": {"train": ("عمان", "اربد", "محمد", "مريم", "كتاب", "بيت", "شمس", "خبز"),
            "val": ("جرش", "احمد", "قمر", "الكرك"),
            "test": ("مادبا", "خالد", "سلام", "ولد")},
    "lls": {"train": ("VILNIUS", "KAUNAS", "JONAS", "RŪTA", "NAMAS", "DUONA", "VANDUO", "KNYGA"),
            "val": ("KLAIPĖDA", "EGLĖ", "SAULĖ", "DRAUGAS"),
            "test": ("ŠIAULIAI", "TOMAS", "OBUOLYS", "MOKYKLA")},
    "mfs": {"train": ("MEXICO", "PUEBLA", "JUAN", "SOFIA", "CASA", "AGUA", "PERRO", "LLUVIA"),
            "val": ("OAXACA", "DIEGO", "ESCUELA", "CABALLO"),
            "test": ("MONTERREY", "LUCIA", "NIÑO", "CALLE")},
    "psr": {"train": ("LISBOA", "PORTO", "TIAGO", "INES", "CASA", "AMIGO", "LIVRO", "SOL"),
            "val": ("BRAGA", "JOANA", "ESCOLA", "PRAIA"),
            "test": ("COIMBRA", "RITA", "FLOR", "MAR")},
    "sgg": {"train": ("ZÜRICH", "BERN", "LUKAS", "LEA", "SCHOKOLADE", "KÄSE", "BROT", "BERG"),
            "val": ("BASEL", "NOAH", "MILCH", "SCHNEE"),
            "test": ("LUZERN", "MIA", "KIRCHE", "SCHULE")},
    "ssp": {"train": ("MADRID", "SEVILLA", "PABLO", "LUCIA", "CHOCOLATE", "ESPAÑA", "PERRO", "CASA"),
            "val": ("VALENCIA", "CARMEN", "LECHE", "TORRE"),
            "test": ("BILBAO", "JAVIER", "CALLE", "MAÑANA")},
    "svk": {"train": ("BRATISLAVA", "KOŠICE", "PETER", "JANA", "CHLIEB", "VODA", "ŠKOLA", "MLIEKO"),
            "val": ("NITRA", "ZUZANA", "KNIHA", "MESTO"),
            "test": ("ŽILINA", "MÁRIA", "ĽUDIA", "SLNKO")},
    "swl": {"train": ("STOCKHOLM", "MALMÖ", "ERIK", "ELSA", "HUS", "BRÖD", "VATTEN", "SKOLA"),
            "val": ("GÖTEBORG", "OSCAR", "BOK", "ÄPPLE"),
            "test": ("UPPSALA", "ASTRID", "SOL", "VÄN")},
    "tsm": {"train": ("İSTANBUL", "ANKARA", "MEHMET", "AYŞE", "EKMEK", "KİTAP", "OKUL", "DENİZ"),
            "val": ("İZMİR", "EMRE", "ELMA", "ARKADAŞ"),
            "test": ("BURSA", "ZEYNEP", "GÜNEŞ", "ÇİÇEK")},
    "ukl": {"train": ("КИЇВ", "ЛЬВІВ", "ОЛЕНА", "ТАРАС", "ХЛІБ", "ВОДА", "ШКОЛА", "СОНЦЕ"),
            "val": ("ОДЕСА", "ОКСАНА", "КНИГА", "МОРЕ"),
            "test": ("ХАРКІВ", "АНДРІЙ", "ЯБЛУКО", "ДРУГ")},
}


@dataclass(frozen=True)
class LexiconEntry:
    """One row of ``data.csv``: a clip of one fingerspelling unit."""

    lang: str  # sign-language code (ISO 639-3, e.g. "ase")
    spoken: str  # spoken-language code
    text: str  # the unit as written in the lexicon ("A", "SCH", "ä", "bb", "ال")
    path: Path
    index: int  # row of this language in data.csv


def lexicon_dir() -> Path:
    """The installed lexicon directory.

    Raises:
        FileNotFoundError: ``spoken-to-signed`` is not installed (with the install command).
    """
    try:
        root = importlib.resources.files("spoken_to_signed").joinpath(*LEXICON_SUBDIR)
    except ModuleNotFoundError as exn:
        raise FileNotFoundError(
            "the sample corpus comes from the spoken-to-signed package, which is not installed: "
            "`pip install --no-deps spoken-to-signed==0.4.0 pose-format`") from exn
    path = Path(str(root))
    if not (path / "data.csv").is_file():
        raise FileNotFoundError(f"no data.csv in {path}: spoken-to-signed without its lexicon assets")
    return path


def read_lexicon(directory: Path | None = None) -> list[LexiconEntry]:
    """All rows of ``data.csv`` in file order."""
    d = directory or lexicon_dir()
    entries, per_lang = [], {}
    with open(d / "data.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            lang = row["signed_language"]
            i = per_lang.get(lang, 0)
            per_lang[lang] = i + 1
            # NFC: one row spells "Ä" as A + combining diaeresis
            text = unicodedata.normalize("NFC", row["words"])
            entries.append(LexiconEntry(lang=lang, spoken=row["spoken_language"], text=text,
                                        path=d / row["path"], index=i))
    return entries


def unit_key(text: str) -> str:
    """Case-insensitive matching key. Upper-cases letter by letter, except that a letter whose
    upper case is two letters keeps one form (``ß`` and ``ẞ`` both become ``ẞ``, not ``SS``)."""
    out = []
    for c in unicodedata.normalize("NFC", text):
        if c in "ßẞ":
            out.append("ẞ")
            continue
        u = c.upper()
        out.append(u if len(u) == 1 else c)
    return "".join(out)


def split_units(word: str, units: Sequence[str]) -> list[str]:
    """Split ``word`` into lexicon units by longest match (case-insensitive, :func:`unit_key`).

    Returns the units as written in the lexicon.
    Raises:
        ValueError: a part of the word matches no unit (names the word and the position).
    """
    table = {unit_key(u): u for u in units}
    longest = max(len(k) for k in table)
    key, out, i = unit_key(word), [], 0
    while i < len(key):
        for n in range(min(longest, len(key) - i), 0, -1):
            if key[i:i + n] in table:
                out.append(table[key[i:i + n]])
                i += n
                break
        else:
            raise ValueError(f"{word!r}: no lexicon unit of this language matches {word[i]!r} (position {i})")
    return out


def compose(clips: Sequence[KeypointClip], blend: int = BLEND_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate clips with a ``blend``-frame linear cross-fade between neighbours.

    Returns ``(motion [T, D], valid [T, 3])``; ``T = sum(T_i) - blend * (n - 1)`` (less blend
    where a clip is too short to overlap that much).
    """
    motion, valid = clips[0].motion.copy(), clips[0].valid.copy()
    for c in clips[1:]:
        k = max(0, min(blend, len(motion) - 1, len(c.motion) - 1))
        w = (np.arange(1, k + 1, dtype=np.float32) / (k + 1))[:, None]
        if k:
            motion[-k:] = (1 - w) * motion[-k:] + w * c.motion[:k]
            valid[-k:] &= c.valid[:k]
        motion = np.concatenate([motion, c.motion[k:]])
        valid = np.concatenate([valid, c.valid[k:]])
    return motion, valid


def check_word_lists(entries: Sequence[LexiconEntry], words=WORDS) -> dict[str, dict[str, list[list[str]]]]:
    """Split every word into units; check the lists are disjoint and cover every language.

    Returns ``{lang: {split: [units per word]}}``.
    Raises:
        ValueError: an unspellable word, a word in two splits (or twice), a single-unit word,
            or a language with no words.
    """
    units: dict[str, list[str]] = {}
    for e in entries:
        units.setdefault(e.lang, []).append(e.text)
    missing = sorted(set(units) - set(words))
    if missing:
        raise ValueError(f"no word lists for sign languages {missing}")
    out: dict[str, dict[str, list[list[str]]]] = {}
    for lang, splits in words.items():
        if lang not in units:
            raise ValueError(f"word list for {lang!r}, which the lexicon does not have")
        seen: dict[str, str] = {}
        out[lang] = {}
        for split in ("train", "val", "test"):
            out[lang][split] = []
            for w in splits[split]:
                k = unit_key(w)
                if k in seen:
                    raise ValueError(f"{lang}: {w!r} is in {seen[k]} and {split}")
                seen[k] = split
                parts = split_units(w, units[lang])
                if len(parts) < 2:
                    raise ValueError(f"{lang}: {w!r} is a single unit; words need at least two")
                out[lang][split].append(parts)
    return out


def _licence_text() -> str:
    dist = importlib.metadata.distribution(PACKAGE)
    for f in dist.files or []:
        if f.name.upper().startswith(("LICENSE", "LICENCE")):
            return f.read_text()
    return dist.metadata.get("License") or "unknown"


def _fingerprint(entries: Sequence[LexiconEntry], csv_path: Path) -> dict:
    return {
        "builder_version": BUILDER_VERSION,
        "package": PACKAGE,
        "package_version": importlib.metadata.version(PACKAGE),
        "data_csv_sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
        "words_sha256": hashlib.sha256(json.dumps(WORDS, sort_keys=True, ensure_ascii=False).encode()).hexdigest(),
        "clips": len(entries),
        "blend_frames": BLEND_FRAMES,
        "fps": FPS,
    }


def is_up_to_date(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a sample build of this code and package, every shard intact
    (sha256 as recorded in the manifest)."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        d = lexicon_dir()
        if manifest.get("build") != _fingerprint(read_lexicon(d), d / "data.csv"):
            return False
        for split in manifest["splits"].values():
            for name, digest in zip(split["shards"], split["sha256"], strict=True):
                if hashlib.sha256((out / name).read_bytes()).hexdigest() != digest:
                    return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def corpus_mean_hands(points) -> dict[str, np.ndarray]:
    """Mean wrist-relative hand shape ``[21, 3]`` per hand over every detected frame of a corpus
    (normalised units), for placing hands a clip never detects."""
    sums = {"lhand": [np.zeros((21, 3)), 0], "rhand": [np.zeros((21, 3)), 0]}
    for pts in points:
        for part, (s, n) in hand_shapes(normalize_points(pts), pts.present).items():
            sums[part][0] += s
            sums[part][1] += n
    return {p: (s / max(n, 1)).astype(np.float32) for p, (s, n) in sums.items()}


def build_sample_corpus(out_dir: str | Path, max_bytes: int = SAMPLE_MAX_BYTES) -> dict:
    """Build the sample shards from the installed lexicon into ``out_dir``; return the manifest.

    Raises:
        FileNotFoundError: spoken-to-signed is not installed.
        ValueError: a word list problem (see :func:`check_word_lists`) or an unreadable clip.
    """
    d = lexicon_dir()
    entries = read_lexicon(d)
    plan = check_word_lists(entries)
    raw = {e: read_pose_points(e.path) for e in entries}
    mean_hands = corpus_mean_hands(raw.values())
    clips = {e: process_points(raw[e], mean_hands) for e in entries}
    by_unit = {(e.lang, e.text): e for e in entries}

    def source(e: LexiconEntry) -> str:
        return f"{PACKAGE}:{'/'.join(LEXICON_SUBDIR)}/{e.path.relative_to(d).as_posix()}"

    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for e in entries:
        m, v = apply_length_rules(clips[e].motion, clips[e].valid)
        splits["train"].append(Sample(
            key=f"{e.lang}-letter-{e.index:03d}", text=e.text, lang=e.lang, fps=FPS, source=source(e),
            motion=m, valid=v, composed=False, meta={"spoken_language": e.spoken, "units": [e.text]}))
    spoken = {e.lang: e.spoken for e in entries}
    for lang in sorted(plan):
        for split in ("train", "val", "test"):
            for j, (word, units) in enumerate(zip(WORDS[lang][split], plan[lang][split])):
                parts = [by_unit[(lang, u)] for u in units]
                m, v = apply_length_rules(*compose([clips[p] for p in parts]))
                splits[split].append(Sample(
                    key=f"{lang}-word-{split}-{j:02d}", text=word, lang=lang, fps=FPS,
                    source=f"{PACKAGE}:{'/'.join(LEXICON_SUBDIR)} (composed)", motion=m, valid=v,
                    composed=True, meta={"spoken_language": spoken[lang], "units": units,
                                         "blend_frames": BLEND_FRAMES}))
    for split in splits:
        splits[split].sort(key=lambda s: s.key)
    random.Random(TRAIN_ORDER_SEED).shuffle(splits["train"])
    version = importlib.metadata.version(PACKAGE)
    provenance = {
        "corpus": "fingerspelling lexicon of spoken-to-signed (ZurichNLP)",
        "package": f"{PACKAGE}=={version} (PyPI)",
        "path": "spoken_to_signed/" + "/".join(LEXICON_SUBDIR),
        "clips": len(entries),
        "sign_languages": sorted({e.lang for e in entries}),
        "poses": "MediaPipe Holistic .pose files (pose-format), fetched by the package's download.py "
                 "from the sign.mt pose bucket 'sign-mt-poses'",
        "paper": "https://arxiv.org/abs/2305.17714",
        "processing": "madis.motion.keypoints (shoulder-normalised, gaps filled, 25 fps) + length "
                      "rules; composed words: madis.data.sample (longest-match units, "
                      f"{BLEND_FRAMES}-frame cross-fade)",
    }
    licence = {"name": "MIT (the spoken-to-signed package, which ships the lexicon)",
               "text": _licence_text()}
    return write_shards(out_dir, splits, motion_format="keypoints", fps=FPS, provenance=provenance,
                        licence=licence, max_bytes=max_bytes,
                        extra={"build": _fingerprint(entries, d / "data.csv")})
