"""`scalinglab data tokenize` and `data.source: tokens` folders: round trip, streaming pieces
that encode as the whole text would, metadata, a GPT trained on BPE tokens, one-line errors."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shutil
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from typer.testing import CliRunner

from scalinglab.cli import app
from scalinglab.config import ConfigError, DataConfig, trial_from_dict
from scalinglab.data.text import stdlib_corpus, token_corpus
from scalinglab.data.tokenize import TextStream, resolve_inputs, tokenize
from scalinglab.errors import DataError
from scalinglab.flops import flops_per_token

VOCAB = 400
QUICKSTARTS = ("quickstart.yaml", "quickstart_bpe.yaml")


def _stdlib_text(name: str) -> str:
    return (Path(sysconfig.get_paths()["stdlib"]) / "json" / name).read_text(encoding="utf-8")


# The corpus, by relative path, in the order a folder is read (sorted by path). The text files
# poke at the piece boundaries: whitespace runs, CRLF, tabs, NBSP at a line start, multi-byte
# characters (read 7 bytes at a time, so they straddle blocks), a word longer than a piece,
# indented code, a file without a final newline.
FILES: dict[str, str] = {
    "a/intro.txt": "Hello, world!  Two spaces.\n\n\nTabs\tand\ttabs \t here\n"
    "Trailing spaces   \n    indented line\n \n\t\n",
    "b.md": "# Title\r\nWindows line\r\n\r\nnon-ASCII: café, naïve, 漢字, emoji 🙂, "
    "NBSP\u00a0here\n\u00a0starts with NBSP\n  it's they'll 12345 6789\n",
    "c.py": "def f(x):\n    if x:\n        return [x,  x]\n\n\n    return None",
    "lib/decoder.py": _stdlib_text("decoder.py"),
    "lib/encoder.py": _stdlib_text("encoder.py"),
    "z/long.txt": "w" * 250 + " " + "supercalifragilistic" * 12 + "\nend\n",
}
SKIPPED: dict[str, bytes] = {".hidden.txt": b"never read\n", "blob.bin": b"\x89PNG\0\0\x01"}


def _write_corpus(root: Path) -> str:
    """Write FILES (and files a folder read skips) under `root`; the text a reader should
    see, built here independently: the files in path order, joined by a newline."""
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(text.encode("utf-8"))
    for rel, data in SKIPPED.items():
        (root / rel).write_bytes(data)
    return "\n".join(FILES[rel] for rel in sorted(FILES))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A corpus folder tokenized with a BPE trained on it, in small pieces and small reads."""
    root = tmp_path_factory.mktemp("tok")
    text = _write_corpus(root / "corpus")
    out = root / "bpe"
    meta = tokenize([str(root / "corpus")], out, train_vocab=VOCAB, piece_chars=101, read_bytes=7)
    return {"root": root, "text": text, "out": out, "meta": meta}


def _tokens(path: Path) -> np.ndarray:
    """The token stream `data.source: tokens` reads from `path` (before the train/val split)."""
    return np.asarray(token_corpus(DataConfig(source="tokens", path=str(path))).tokens)


def test_round_trip_and_pieces_encode_as_the_whole_text(bpe: dict[str, Any]) -> None:
    out, text = bpe["out"], bpe["text"]
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = _tokens(out)
    assert tok.decode(ids.tolist()) == text
    # The whole text encoded at once by the tokenizer itself: the pieces changed no token.
    assert ids.tolist() == tok.encode(text, add_special_tokens=False).ids
    # Default pieces and reads: the same tokenizer (training streamed the same pre-tokens) and
    # the same bytes on disk.
    again = tokenize([str(bpe["root"] / "corpus")], bpe["root"] / "again", train_vocab=VOCAB)
    assert (bpe["root"] / "again" / "tokenizer.json").read_text() == (
        out / "tokenizer.json"
    ).read_text()
    assert (bpe["root"] / "again" / "tokens.bin").read_bytes() == (out / "tokens.bin").read_bytes()
    assert again["n_tokens"] == len(ids)


def test_metadata_describes_the_memmap_and_the_sources(bpe: dict[str, Any]) -> None:
    out = bpe["out"]
    meta = json.loads((out / "tokens.json").read_text())
    raw = np.fromfile(out / "tokens.bin", dtype="<u2")  # read back without scalinglab
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert meta["dtype"] == "uint16" and meta["n_tokens"] == raw.size
    assert meta["vocab_size"] == tok.get_vocab_size() == VOCAB
    assert int(raw.max()) < VOCAB
    assert meta["n_bytes"] == len(bpe["text"].encode("utf-8"))
    assert meta["n_files"] == len(FILES) and meta["inputs"][0]["binary_files_skipped"] == 1
    want = [(rel, hashlib.sha256(FILES[rel].encode()).hexdigest()) for rel in sorted(FILES)]
    assert [(f["path"], f["sha256"]) for f in meta["files"]] == want
    assert meta["corpus_sha256"] == hashlib.sha256(bpe["text"].encode()).hexdigest()
    assert (
        meta["tokenizer"]["sha256"]
        == hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    )
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp file left
    # The .bin beside its metadata reads the same as the folder.
    np.testing.assert_array_equal(_tokens(out / "tokens.bin"), raw)


def test_stdlib_input_streams_the_default_corpus() -> None:
    (source,) = resolve_inputs(["stdlib"])
    pieces = itertools.islice(TextStream([source], piece_chars=4096), 40)
    head = "".join(pieces).encode("utf-8")
    ref = stdlib_corpus(DataConfig(source="stdlib", max_tokens=len(head))).tokens.tobytes()
    assert len(head) > 100_000 and head == ref


def _trial(path: Path, **model: Any) -> Any:
    return trial_from_dict(
        {
            "model": {"n_layer": 1, "d_model": 32, "n_head": 2, **model},
            "data": {"source": "tokens", "path": str(path), "seq_len": 16},
            "optimizer": {"lr": 1.0e-2},
            "train": {
                "batch_size": 4,
                "budget": {"steps": 30},
                "eval_every": 10,
                "log_every": 5,
                "eval_tokens": 512,
                "checkpoint_every": 30,
            },
        }
    )


def test_gpt_trains_on_bpe_tokens_with_the_vocabulary_of_the_data(
    bpe: dict[str, Any], tmp_path: Path
) -> None:
    from scalinglab.train import run_trial

    cfg = _trial(bpe["out"])
    assert cfg.model.vocab_size == VOCAB  # left out of the config: the data's
    summary = run_trial(cfg, tmp_path / "run")
    V, d, L, T, B, steps = VOCAB, 32, 1, 16, 4, 30
    non_embedding = L * (12 * d * d + 13 * d) + 2 * d  # blocks (gelu, d_ff 4d) + final norm
    assert summary["status"] == "done" and summary["steps"] == steps
    assert summary["data"]["vocab_size"] == V
    assert summary["N_embed"] == V * d + T * d  # tied BPE token table + learned positions
    assert summary["N_nonembed"] == non_embedding
    assert summary["D"] == steps * B * T
    assert summary["C"] == pytest.approx(6 * non_embedding * steps * B * T, rel=1e-12)
    assert summary["final_eval_loss"] < math.log(V)  # learnt something beyond uniform
    full = 3 * (2 * non_embedding + 2 * V * d + 2 * L * T * d)
    assert flops_per_token(cfg.model, T, "full") == pytest.approx(full, rel=1e-12)


def test_vocab_smaller_than_the_data_is_one_line(bpe: dict[str, Any]) -> None:
    assert _trial(bpe["out"], vocab_size=512).model.vocab_size == 512  # spare rows are fine
    with pytest.raises(ConfigError) as info:
        _trial(bpe["out"], vocab_size=256)
    msg = str(info.value)
    assert "\n" not in msg and "model.vocab_size (256)" in msg and str(bpe["out"]) in msg
    assert f"({VOCAB}, from its tokens.json)" in msg


def test_missing_tokens_folder_without_vocab_size_is_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "not-yet"
    with pytest.raises(ConfigError) as info:
        _trial(gone)  # else the trial id would hash the default vocabulary until it is written
    msg = str(info.value)
    assert "\n" not in msg and f"data.path: {gone} does not exist" in msg
    assert "scalinglab data tokenize" in msg
    assert _trial(gone, vocab_size=4096).model.vocab_size == 4096  # given: checked at load
    assert _trial(tmp_path / "plain.bin").model.vocab_size == 256  # a plain memmap: as before


def test_damaged_tokens_folder_is_one_line(bpe: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(bpe["out"], bad)
    meta = json.loads((bad / "tokens.json").read_text())
    (bad / "tokens.json").write_text(json.dumps({**meta, "vocab_size": 99}))
    with pytest.raises(DataError, match=r"holds token ids in \[\d+, \d+\]; allowed .* \[0, 98\]"):
        _tokens(bad)
    (bad / "tokens.json").write_text(json.dumps(meta))
    with (bad / "tokens.bin").open("r+b") as f:
        f.truncate(f.seek(0, 2) - 2)
    with pytest.raises(DataError, match=r"holds \d+ bytes but tokens.json says \d+ uint16"):
        _tokens(bad)
    (bad / "tokens.json").unlink()
    with pytest.raises(DataError, match="folder without tokens.json"):
        _tokens(bad)


def _big_vocab_tokenizer(path: Path) -> None:
    """A byte-level BPE whose one merge ("a", "b") has id 70000 (needs uint32 tokens)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab |= {f"<unused{i}>": i for i in range(256, 70_000)}
    vocab["ab"] = 70_000
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(path))


def test_cli_with_a_tokenizer_file_uint32_and_invalid_utf8(tmp_path: Path) -> None:
    _big_vocab_tokenizer(tmp_path / "big.json")
    (tmp_path / "in.txt").write_bytes(b"ab cab xy \xff\xfe z\n\xe6\xbc")  # cut-off 漢 at the end
    args = ["data", "tokenize", str(tmp_path / "in.txt"), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, [*args, "--tokenizer", str(tmp_path / "big.json")])
    assert res.exit_code == 0, res.output
    assert "source: tokens" in res.output and "invalid UTF-8" in res.output
    meta = json.loads((tmp_path / "o" / "tokens.json").read_text())
    assert (meta["dtype"], meta["vocab_size"], meta["invalid_utf8_bytes"]) == ("uint32", 70_001, 4)
    raw = np.fromfile(tmp_path / "o" / "tokens.bin", dtype="<u4")
    assert raw.tolist().count(70_000) == 2  # "ab" and the "ab" of " cab"
    corpus = token_corpus(DataConfig(source="tokens", path=str(tmp_path / "o")))
    assert corpus.vocab_size == 70_001 and corpus.tokens.dtype == np.uint32
    ids = np.asarray(corpus.tokens)
    assert ids.tolist() == raw.tolist()
    text = Tokenizer.from_file(str(tmp_path / "o" / "tokenizer.json")).decode(ids.tolist())
    assert text == "ab cab xy \ufffd\ufffd z\n\ufffd\ufffd"
    res = CliRunner().invoke(app, [*args, "--tokenizer", str(tmp_path / "big.json")])
    assert res.exit_code == 2 and "--force" in res.output  # never replaced silently
    res = CliRunner().invoke(app, [*args, "--train-bpe", "300", "--force"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "tokens.json").read_text())["dtype"] == "uint16"


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("some text\n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.bin").write_bytes(b"\0\0")
    t, o = str(tmp_path / "t.txt"), str(tmp_path / "out")
    cases = [
        ([t, "--out", o], "--train-bpe / --tokenizer: give exactly one (got neither)"),
        ([t, "--out", o, "--train-bpe", "300", "--tokenizer", t], "(got both)"),
        ([t, "--out", o, "--train-bpe", "256"], "--train-bpe: 256 is too small"),
        ([t, "--out", o, "--train-bpe", str(2**21)], "--train-bpe: 2097152 is too large"),
        ([str(tmp_path / "nope"), "--out", o, "--train-bpe", "300"], "INPUT: "),
        ([str(tmp_path / "empty"), "--out", o, "--train-bpe", "300"], "holds no text files"),
        ([t, "--out", o, "--tokenizer", str(tmp_path / "junk.json")], "--tokenizer: cannot load"),
        ([t, "--out", o, "--tokenizer", str(tmp_path / "gone.json")], "does not exist"),
        ([t, "--out", str(tmp_path / "a_file"), "--train-bpe", "300"], "--out: "),
        ([t, "--out", str(tmp_path / "a_file" / "sub"), "--train-bpe", "300"], "--out: "),
    ]
    for args, words in cases:
        res = CliRunner().invoke(app, ["data", "tokenize", *args])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1, (args, res.output)
        assert lines[0].startswith("error: ") and words in lines[0], (args, res.output)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_out_inside_the_input_folder_is_not_read_back(tmp_path: Path) -> None:
    (tmp_path / "text.txt").write_text("the same words again and again\n" * 20)
    for _ in range(2):
        meta = tokenize([str(tmp_path)], tmp_path / "bpe", train_vocab=300, force=True)
        assert meta["n_files"] == 1 and [f["path"] for f in meta["files"]] == ["text.txt"]


def test_quickstart_bpe_is_the_quickstart_on_tokens() -> None:
    sweeps = Path(__file__).parents[1] / "sweeps"
    byte, bpe = (yaml.safe_load((sweeps / n).read_text()) for n in QUICKSTARTS)
    assert bpe["base"]["data"] == {
        "source": "tokens",
        "path": "runs/tokens/stdlib-bpe4096",
        "seq_len": byte["base"]["data"]["seq_len"],
    }
    assert "vocab_size" not in bpe["base"]["model"]  # taken from the data
    bpe["base"]["data"], bpe["name"] = byte["base"]["data"], byte["name"]
    assert bpe == byte
