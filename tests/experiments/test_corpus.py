"""Byte-level corpora, packing with segment ids, and the resumable iterator."""

import numpy as np
import pytest

from experiments.data import corpus


def test_stdlib_files_sorted_and_filtered():
  files = corpus.stdlib_files()
  assert len(files) > 100
  names = [f.as_posix() for f in files]
  assert "site-packages" not in " ".join(names)
  assert any(n.endswith("/os.py") for n in names)
  assert files == corpus.stdlib_files()


def test_eval_split_is_stable_and_sized():
  names = [f"doc{i}.py" for i in range(4000)]
  chosen = [n for n in names if corpus.is_eval_document(n, 5.0)]
  assert chosen == [n for n in names if corpus.is_eval_document(n, 5.0)]
  assert 150 < len(chosen) < 250
  assert chosen != [n for n in names if corpus.is_eval_document(n, 5.0, seed=1)]


def _packed(seq_len=4):
  docs = [np.arange(3), np.arange(10, 16), np.arange(20, 22)]
  tokens, doc_ids = corpus.token_stream(docs)
  return corpus.PackedSequences(tokens, doc_ids, seq_len)


def test_packing_segments_and_mask():
  data = _packed()
  assert len(data) == 2  # 11 tokens give two sequences of 4 (+1 target)
  batch = data.batch(np.array([0, 1]))
  np.testing.assert_array_equal(batch["inputs"][0], [0, 1, 2, 10])
  np.testing.assert_array_equal(batch["targets"][0], [1, 2, 10, 11])
  np.testing.assert_array_equal(batch["segment_ids"][0], [0, 0, 0, 1])
  # The target 10 starts a new document, so predicting it is masked.
  np.testing.assert_array_equal(batch["mask"][0], [True, True, False, True])
  np.testing.assert_array_equal(batch["inputs"][1], [11, 12, 13, 14])
  np.testing.assert_array_equal(batch["segment_ids"][1], [0, 0, 0, 0])


def test_iterator_resumes_at_its_step():
  data = _packed(seq_len=1)
  first = corpus.BatchIterator(data, 2, seed=3)
  batches = [first.next()["inputs"].tolist() for _ in range(12)]
  resumed = corpus.BatchIterator(data, 2, seed=3, step=7)
  assert [resumed.next()["inputs"].tolist() for _ in range(5)] == batches[7:]


def test_iterator_epochs_visit_every_sequence():
  data = _packed(seq_len=1)
  iterator = corpus.BatchIterator(data, 2, seed=0)
  per_epoch = len(data) // 2
  seen = np.concatenate([iterator.next()["inputs"][:, 0] for _ in range(per_epoch)])
  assert len(set(seen.tolist())) == per_epoch * 2


def test_bad_inputs_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    corpus.user_files([tmp_path / "missing.txt"])
  with pytest.raises(FileNotFoundError, match="no text files"):
    corpus.user_files([tmp_path])
  with pytest.raises(ValueError, match="too few"):
    corpus.PackedSequences(np.arange(3), np.zeros(3, np.int32), 8)
  with pytest.raises(ValueError, match="invalid batch_size 11"):
    corpus.BatchIterator(_packed(seq_len=1), 11, seed=0)  # 10 sequences


def test_user_files_from_folder(tmp_path):
  (tmp_path / "a.txt").write_text("hello")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.md").write_text("world")
  (tmp_path / "skip.bin").write_bytes(b"\x00")
  files = corpus.user_files([tmp_path])
  assert [f.name for f in files] == ["a.txt", "b.md"]


def test_wordpiece_tokens_of_text(tmp_path):
  pytest.importorskip("tokenizers")
  try:
    tokenizer = corpus.wordpiece_tokenizer()
  except FileNotFoundError as error:
    pytest.skip(f"MiniLM files not installed: {error}")
  ids = corpus.wordpiece_tokens([b"hello world", b"caf\xc3\xa9 \xff"], tokenizer)
  assert len(ids) == 2
  assert ids[0].tolist() == tokenizer.encode("hello world", add_special_tokens=False).ids
  assert all(0 <= i < corpus.WORDPIECE_VOCAB_SIZE for row in ids for i in row.tolist())
  # The invalid byte decodes to U+FFFD instead of failing.
  assert ids[1].tolist() == tokenizer.encode("caf\u00e9 \ufffd", add_special_tokens=False).ids
