"""The shipped sample corpus: the fingerspelling lexicon of the ``spoken-to-signed`` package.

``spoken_to_signed/assets/fingerspelling_lexicon`` holds 600 real MediaPipe Holistic ``.pose``
clips, one per (sign language, letter) for 19 sign languages, indexed by ``data.csv``. Every clip
gives a (text = its letter or letters, lang = the sign-language code) pair in the keypoints
format (:mod:`madis.motion.keypoints`).

Splits. Each (language, letter) has exactly one clip, so every letter clip is train. Val and
test are *composed* fingerspelled words, never seen in train: real words per language
(:data:`WORDS`: cities, given names, common nouns) split into the lexicon's units by longest
match (so ``SCH``, ``Ch``, ``Lj``, ``ال`` or Italian double letters are one unit) and built by
concatenating the units' clips. Train gets its own composed words too. The three word lists of
a language are disjoint (checked). What val/test measure is composition: new words from known
letters, as sentences compose signs.

Letter rows at word tempo (:data:`LETTER_ROWS`). A letter clip lasts about 25 frames (1 s),
shorter than the length rules' 40-frame minimum, which SOKE meets by repeating frames: 598 of the
600 clips would be slowed to 40 frames, 1.6x slower than the same letter inside a word, and
would be 80 % of the training rows. Instead, the row of letter ``i`` of a language (key
``{lang}-letter-{i:03d}``) is that letter's clip followed, at word tempo, by the next letters of
the language in lexicon order (wrapping around) until the row reaches the minimum: mostly two
letters (``"AB"``, ``"BC"``, ...), so every letter leads one row and ends or sits inside another;
the text is the units in capitals, and a unit sequence whose text would split differently
(``C`` + ``H`` where ``CH`` is a unit) skips to the next letter. ``letter_rows="stretch"``
rebuilds SOKE's rule (one single-letter row per clip, stretched).

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
from typing import Mapping, Sequence

import numpy as np

from madis.data.shards import MANIFEST, Sample, write_shards
from madis.motion.keypoints import FPS, KeypointClip, hand_shapes, normalize_points, process_points, read_pose_points
from madis.motion.base import MIN_FRAMES
from madis.motion.length import apply_length_rules

PACKAGE = "spoken-to-signed"
LEXICON_SUBDIR = ("assets", "fingerspelling_lexicon")
BLEND_FRAMES = 3
TRAIN_ORDER_SEED = 2024
#: shard size target of the sample corpus: small, so that train has several shards
SAMPLE_MAX_BYTES = 2 * 2**20
#: bump when the build changes its output; a build with an equal fingerprint is skipped
BUILDER_VERSION = 3
#: how the train split holds the letter clips (module doc, "Letter rows at word tempo")
LETTER_ROWS = ("word_tempo", "stretch")
#: Pretraining corpus (:func:`build_pretrain_corpus`): pseudo-words per sign language, their
#: length range in lexicon units (the sample's real words have 3..10, mostly 4..6), the seed.
PRETRAIN_WORDS_PER_LANGUAGE = 200
PRETRAIN_UNITS = (3, 8)
PRETRAIN_SEED = 11

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


#: Words in no split and no word list above, per sign language: what a new user might type. Used
#: to check that a model spells words it has never seen (issue 13); never trained on.
NOVEL_WORDS: dict[str, tuple[str, ...]] = {
    "ase": ("HELLO", "MUSIC", "TIGER", "FRIEND", "PLANET"),
    "gsg": ("KATZE", "BLUME", "FENSTER", "VOGEL", "TISCH"),
    "ssp": ("GATO", "NUBE", "QUESO", "LIBRO", "ARBOL"),
    "swl": ("KATT", "HUND", "BLOMMA", "FÅGEL", "STOL"),
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


def compose_word(clips: Sequence[KeypointClip]) -> tuple[np.ndarray, np.ndarray]:
    """A word's motion from its units' clips, as every composed sample is built: the clips
    cross-faded (:func:`compose`), then the length rules. Returns ``(motion [T, D], valid
    [T, 3])``."""
    return apply_length_rules(*compose(clips))


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


def _fingerprint(entries: Sequence[LexiconEntry], csv_path: Path,
                 letter_rows: str = LETTER_ROWS[0]) -> dict:
    return {
        "builder_version": BUILDER_VERSION,
        "letter_rows": letter_rows,
        "package": PACKAGE,
        "package_version": importlib.metadata.version(PACKAGE),
        "data_csv_sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
        "words_sha256": hashlib.sha256(json.dumps(WORDS, sort_keys=True, ensure_ascii=False).encode()).hexdigest(),
        "clips": len(entries),
        "blend_frames": BLEND_FRAMES,
        "fps": FPS,
    }


def is_up_to_date(out_dir: str | Path, build: dict | None = None,
                  letter_rows: str = LETTER_ROWS[0]) -> bool:
    """True when ``out_dir`` holds a sample build of this code and package, every shard intact
    (sha256 as recorded in the manifest). ``build``: the fingerprint to expect instead of the
    sample corpus's (e.g. :func:`pretrain_fingerprint`)."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        if build is None:
            d = lexicon_dir()
            build = _fingerprint(read_lexicon(d), d / "data.csv", letter_rows)
        if manifest.get("build") != build:
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


def letter_row_units(entries: Sequence[LexiconEntry], i: int, clips: Mapping,
                     min_frames: int = MIN_FRAMES, blend: int = BLEND_FRAMES,
                     avoid: frozenset[str] = frozenset()) -> list[LexiconEntry]:
    """The units of the word-tempo row led by ``entries[i]`` (module doc, "Letter rows at word
    tempo"): the letter, then the next letters of ``entries`` (one language, lexicon order,
    wrapping around) until the composed row has ``min_frames`` frames and its text is not in
    ``avoid``; a letter whose text would merge with the row's last unit under longest match is
    skipped.

    Args:
        entries: the lexicon rows of one sign language.
        clips: ``{entry: KeypointClip}``.
        avoid: :func:`unit_key` of texts a row must not spell (the val/test and novel words).
    Raises:
        ValueError: the language's clips together are shorter than ``min_frames``.
    """
    units = [e.text for e in entries]
    row = [entries[i]]
    frames = len(clips[entries[i]].motion)
    j = i
    def text(r):
        return "".join(_capitals(e.text) for e in r)

    while frames < min_frames or unit_key(text(row)) in avoid:
        for _ in range(len(entries)):
            j = (j + 1) % len(entries)
            cand = [*row, entries[j]]
            if split_units(text(cand), units) == [e.text for e in cand]:
                break
        else:
            raise ValueError(f"{entries[i].lang}: no letter can follow {entries[i].text!r}")
        row = cand
        frames += len(clips[entries[j]].motion) - min(blend, frames - 1, len(clips[entries[j]].motion) - 1)
        if len(row) > len(entries) + 1:
            raise ValueError(f"{entries[i].lang}: its clips cannot make {min_frames} frames")
    return row


def spell(word: str, lang: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Any word fingerspelled from the lexicon's clips, as the sample's words are composed:
    its units by longest match, their clips cross-faded, the length rules applied.

    Returns:
        ``(motion [T, 165], valid [T, 3], units)`` in the keypoints format.
    Raises:
        ValueError: an unknown sign language, or a letter the language's lexicon lacks.
        FileNotFoundError: spoken-to-signed is not installed.
    """
    entries = [e for e in read_lexicon() if e.lang == lang]
    if not entries:
        langs = sorted({e.lang for e in read_lexicon()})
        raise ValueError(f"no lexicon for sign language {lang!r}; it has {langs}")
    units = split_units(word, [e.text for e in entries])
    mean_hands = corpus_mean_hands(read_pose_points(e.path) for e in read_lexicon())
    by_text = {e.text: e for e in entries}
    clips = [process_points(read_pose_points(by_text[u].path), mean_hands) for u in units]
    motion, valid = apply_length_rules(*compose(clips))
    return motion, valid, units


def build_sample_corpus(out_dir: str | Path, max_bytes: int = SAMPLE_MAX_BYTES,
                        letter_rows: str = LETTER_ROWS[0]) -> dict:
    """Build the sample shards from the installed lexicon into ``out_dir``; return the manifest.

    Args:
        letter_rows: ``word_tempo`` (default) or ``stretch`` (module doc, "Letter rows").
    Raises:
        FileNotFoundError: spoken-to-signed is not installed.
        ValueError: a word list problem (see :func:`check_word_lists`), an unreadable clip or
            an unknown ``letter_rows``.
    """
    if letter_rows not in LETTER_ROWS:
        raise ValueError(f"letter_rows must be one of {LETTER_ROWS}, got {letter_rows!r}")
    d = lexicon_dir()
    entries = read_lexicon(d)
    plan = check_word_lists(entries)
    clips = lexicon_clips(entries)
    by_unit = {(e.lang, e.text): e for e in entries}
    by_lang: dict[str, list[LexiconEntry]] = {}
    for e in entries:
        by_lang.setdefault(e.lang, []).append(e)

    def source(e: LexiconEntry) -> str:
        return f"{PACKAGE}:{'/'.join(LEXICON_SUBDIR)}/{e.path.relative_to(d).as_posix()}"

    held_out = {lang: frozenset(unit_key(w) for w in (*WORDS[lang]["val"], *WORDS[lang]["test"],
                                                      *NOVEL_WORDS.get(lang, ())))
                for lang in by_lang}
    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for e in entries:
        key = f"{e.lang}-letter-{e.index:03d}"
        meta = {"spoken_language": e.spoken}
        if letter_rows == "stretch":
            m, v = apply_length_rules(clips[e].motion, clips[e].valid)
            splits["train"].append(Sample(key=key, text=e.text, lang=e.lang, fps=FPS,
                                          source=source(e), motion=m, valid=v, composed=False,
                                          meta={**meta, "units": [e.text]}))
            continue
        row = letter_row_units(by_lang[e.lang], e.index, clips, avoid=held_out[e.lang])
        m, v = apply_length_rules(*compose([clips[u] for u in row]))
        splits["train"].append(Sample(
            key=key, text="".join(_capitals(u.text) for u in row), lang=e.lang, fps=FPS,
            source=source(e) if len(row) == 1 else f"{source(e)} (+{len(row) - 1} following letters)",
            motion=m, valid=v, composed=len(row) > 1,
            meta={**meta, "units": [u.text for u in row], "letter_row": True,
                  "blend_frames": BLEND_FRAMES}))
    spoken = {e.lang: e.spoken for e in entries}
    for lang in sorted(plan):
        for split in ("train", "val", "test"):
            for j, (word, units) in enumerate(zip(WORDS[lang][split], plan[lang][split])):
                m, v = compose_word([clips[by_unit[(lang, u)]] for u in units])
                splits[split].append(Sample(
                    key=f"{lang}-word-{split}-{j:02d}", text=word, lang=lang, fps=FPS,
                    source=f"{PACKAGE}:{'/'.join(LEXICON_SUBDIR)} (composed)", motion=m, valid=v,
                    composed=True, meta={"spoken_language": spoken[lang], "units": units,
                                         "blend_frames": BLEND_FRAMES}))
    for split in splits:
        splits[split].sort(key=lambda s: s.key)
    random.Random(TRAIN_ORDER_SEED).shuffle(splits["train"])
    provenance = {
        "corpus": "fingerspelling lexicon of spoken-to-signed (ZurichNLP)",
        **_lexicon_provenance(entries),
    }
    return write_shards(out_dir, splits, motion_format="keypoints", fps=FPS, provenance=provenance,
                        licence=_licence(), max_bytes=max_bytes,
                        extra={"build": _fingerprint(entries, d / "data.csv", letter_rows)})


def lexicon_clips(entries: Sequence[LexiconEntry]) -> dict[LexiconEntry, KeypointClip]:
    """Every lexicon clip read and processed (:func:`madis.motion.keypoints.process_points`,
    hands a clip never detects placed with the corpus mean hand shape), before length rules."""
    raw = {e: read_pose_points(e.path) for e in entries}
    mean_hands = corpus_mean_hands(raw.values())
    return {e: process_points(raw[e], mean_hands) for e in entries}


def _lexicon_provenance(entries: Sequence[LexiconEntry]) -> dict:
    return {
        "package": f"{PACKAGE}=={importlib.metadata.version(PACKAGE)} (PyPI)",
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


def _licence() -> dict:
    return {"name": "MIT (the spoken-to-signed package, which ships the lexicon)",
            "text": _licence_text()}


def _capitals(unit: str) -> str:
    """A unit written as the word lists write it: capitals, except letters whose capital is two
    letters (``ß`` stays ``ß``, as in ``STRAßE``)."""
    return "".join(c.upper() if len(c.upper()) == 1 else c for c in unit)


def pseudo_words(entries: Sequence[LexiconEntry], per_language: int = PRETRAIN_WORDS_PER_LANGUAGE,
                 units_range: tuple[int, int] = PRETRAIN_UNITS, seed: int = PRETRAIN_SEED,
                 words=WORDS) -> dict[str, list[tuple[str, list[str]]]]:
    """Random pseudo-words per sign language for the pretraining corpus.

    A pseudo-word is ``k ~ U{units_range}`` units of the language drawn uniformly, written in
    capitals, then split again by longest match (:func:`split_units`) exactly as the sample's
    words are, so that a text always stands for the same unit sequence (``S``+``C``+``H`` in
    German becomes the unit ``SCH``). No pseudo-word equals a word of ``words`` (train, val or
    test) or of :data:`NOVEL_WORDS` (compared by :func:`unit_key`), none repeats, and each has
    at least two units.

    Returns:
        ``{lang: [(text, units)]}``, ``per_language`` entries each, deterministic in ``seed``.
    Raises:
        ValueError: ``per_language`` more than the language's alphabet can give (the draw would
            not end) or a bad ``units_range``.
    """
    lo, hi = units_range
    if not 2 <= lo <= hi:
        raise ValueError(f"units_range must be 2 <= lo <= hi, got {units_range}")
    units: dict[str, list[str]] = {}
    for e in entries:
        units.setdefault(e.lang, []).append(e.text)
    rng = random.Random(seed)
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for lang in sorted(units):
        taken = {unit_key(w) for split in words.get(lang, {}).values() for w in split}
        taken |= {unit_key(w) for w in NOVEL_WORDS.get(lang, ())}
        if per_language > len(units[lang]) ** lo // 2:
            raise ValueError(f"{lang}: {per_language} pseudo-words of {lo}..{hi} units asked from "
                             f"only {len(units[lang])} units")
        got: list[tuple[str, list[str]]] = []
        while len(got) < per_language:
            text = "".join(_capitals(rng.choice(units[lang])) for _ in range(rng.randint(lo, hi)))
            parts = split_units(text, units[lang])
            if unit_key(text) in taken or len(parts) < 2:
                continue
            taken.add(unit_key(text))
            got.append((text, parts))
        out[lang] = got
    return out


def pretrain_fingerprint(per_language: int = PRETRAIN_WORDS_PER_LANGUAGE,
                         units_range: tuple[int, int] = PRETRAIN_UNITS,
                         seed: int = PRETRAIN_SEED) -> dict:
    """The ``build`` entry of a pretraining corpus manifest (see :func:`is_up_to_date`)."""
    d = lexicon_dir()
    return {**_fingerprint(read_lexicon(d), d / "data.csv"), "corpus": "pretrain-pseudo-words",
            "words_per_language": per_language, "units_range": list(units_range), "seed": seed}


def build_pretrain_corpus(out_dir: str | Path, per_language: int = PRETRAIN_WORDS_PER_LANGUAGE,
                          units_range: tuple[int, int] = PRETRAIN_UNITS,
                          seed: int = PRETRAIN_SEED, max_bytes: int = SAMPLE_MAX_BYTES) -> dict:
    """Build the pretraining corpus: composed fingerspelled pseudo-words, train split only.

    The paper pretrains on more data than it fine-tunes on (the combined corpora, 3.2). This
    corpus plays that part for the sample: :func:`pseudo_words` per sign language, composed
    from the same real lexicon clips as the sample's words (same cross-fade, same length
    rules), none of them a sample word of any split. It is meant only for
    ``ray_jobs/pretrain.py`` (as a second ``--shards`` set beside the sample); fine-tuning
    and evaluation use the sample. Every sample is ``composed: true`` and ``pseudo_word:
    true``, keyed ``{lang}-pseudo-{j:04d}``, in a seeded order; the manifest has its own
    provenance and ``build`` fingerprint (:func:`pretrain_fingerprint`).

    Raises:
        FileNotFoundError: spoken-to-signed is not installed.
        ValueError: see :func:`pseudo_words`.
    """
    d = lexicon_dir()
    entries = read_lexicon(d)
    plan = pseudo_words(entries, per_language, units_range, seed)
    clips = lexicon_clips(entries)
    by_unit = {(e.lang, e.text): e for e in entries}
    spoken = {e.lang: e.spoken for e in entries}
    samples = []
    for lang, words in plan.items():
        for j, (text, units) in enumerate(words):
            m, v = compose_word([clips[by_unit[(lang, u)]] for u in units])
            samples.append(Sample(
                key=f"{lang}-pseudo-{j:04d}", text=text, lang=lang, fps=FPS,
                source=f"{PACKAGE}:{'/'.join(LEXICON_SUBDIR)} (composed pseudo-word)", motion=m,
                valid=v, composed=True,
                meta={"spoken_language": spoken[lang], "units": units, "pseudo_word": True,
                      "blend_frames": BLEND_FRAMES}))
    random.Random(seed).shuffle(samples)
    provenance = {
        "corpus": "MaDiS pretraining corpus: fingerspelled pseudo-words composed from the "
                  "fingerspelling lexicon of spoken-to-signed (ZurichNLP)",
        "use": "pretraining only (ray_jobs/pretrain.py); not for fine-tuning or evaluation",
        "composition": f"{per_language} pseudo-words per sign language, {units_range[0]}.."
                       f"{units_range[1]} units drawn uniformly (seed {seed}), re-split by "
                       "longest match; no word of the sample corpus (train, val or test) included",
        **_lexicon_provenance(entries),
    }
    return write_shards(out_dir, {"train": samples}, motion_format="keypoints", fps=FPS,
                        provenance=provenance, licence=_licence(), max_bytes=max_bytes,
                        extra={"build": pretrain_fingerprint(per_language, units_range, seed)})


def novel_word_samples(words: Mapping[str, Sequence[str]] | None = None) -> list[Sample]:
    """References for words in no split (default :data:`NOVEL_WORDS`), composed from the
    lexicon's letter clips exactly as the sample's words are (longest-match units,
    :func:`compose_word`), to score generations of words no model was trained on.

    Returns:
        one ``Sample`` per word, keyed ``{lang}-novel-{j:02d}``, in the order of ``words``.
    Raises:
        FileNotFoundError: spoken-to-signed is not installed.
        ValueError: a word of a language the lexicon lacks, or one no unit sequence spells.
    """
    words = NOVEL_WORDS if words is None else words
    entries = read_lexicon()
    units: dict[str, list[str]] = {}
    for e in entries:
        units.setdefault(e.lang, []).append(e.text)
    unknown = sorted(set(words) - set(units))
    if unknown:
        raise ValueError(f"the lexicon has no sign language {unknown}")
    wanted = [e for e in entries if e.lang in words]
    clips = lexicon_clips(entries)  # the corpus mean hands need every clip, as in the builder
    by_unit = {(e.lang, e.text): e for e in wanted}
    out = []
    for lang, ws in words.items():
        for j, word in enumerate(ws):
            parts = split_units(word, units[lang])
            m, v = compose_word([clips[by_unit[(lang, u)]] for u in parts])
            out.append(Sample(key=f"{lang}-novel-{j:02d}", text=word, lang=lang, fps=FPS,
                              source=f"{PACKAGE}:{'/'.join(LEXICON_SUBDIR)} (composed)", motion=m,
                              valid=v, composed=True,
                              meta={"units": parts, "blend_frames": BLEND_FRAMES, "novel": True}))
    return out
