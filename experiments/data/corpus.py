"""Text corpora without network: the Python standard library or user files.

Documents are read as raw bytes and tokenized either byte by byte (vocabulary
256) or with the MiniLM WordPiece tokenizer. Sequences are packed from the
concatenated token stream with segment ids, so a model can reset attention and
recurrent state at document starts. Document order, the train/eval split and
the packing are deterministic functions of the file list and the seed.
"""

import hashlib
import os
import pathlib
import sysconfig
from collections.abc import Iterable, Sequence

import numpy as np

BYTE_VOCAB_SIZE = 256
WORDPIECE_VOCAB_SIZE = 30522  # all-MiniLM-L6-v2's vocab.txt
# Folders of the standard library left out of the default corpus: installed
# third-party packages, the interpreter's own test suite and caches.
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}


def stdlib_files(root: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """List the .py files of the running interpreter's standard library, sorted.

  Args:
    root: the library folder; default ``sysconfig.get_paths()["stdlib"]``.
  """
  root = pathlib.Path(root or sysconfig.get_paths()["stdlib"])
  if not root.is_dir():
    raise FileNotFoundError(f"standard library folder {root} not found")
  files = []
  for path in root.rglob("*.py"):
    if not _EXCLUDED_DIRS.intersection(path.relative_to(root).parts[:-1]):
      files.append(path)
  return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def user_files(paths: Sequence[str | os.PathLike], suffixes=(".txt", ".md", ".py")) -> list[pathlib.Path]:
  """Expand files and folders (recursively, by suffix) into a sorted file list."""
  files = []
  for entry in paths:
    path = pathlib.Path(entry)
    if path.is_file():
      files.append(path)
    elif path.is_dir():
      files.extend(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
    else:
      raise FileNotFoundError(f"text path {path} not found; pass existing files or folders")
  if not files:
    raise FileNotFoundError(f"no text files with suffixes {suffixes} under {list(map(str, paths))}")
  return sorted(set(files))


def is_eval_document(name: str, eval_percent: float, seed: int = 0) -> bool:
  """Assign a document to the eval split by a stable hash of its name."""
  digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
  return int.from_bytes(digest[:8], "little") % 10_000 < eval_percent * 100


def byte_tokens(text: bytes) -> np.ndarray:
  """Byte-level token ids (uint8 values as int32)."""
  return np.frombuffer(text, np.uint8).astype(np.int32)


def wordpiece_tokenizer(model_dir=None):
  """Load the MiniLM WordPiece tokenizer without truncation or padding."""
  from experiments.data import minilm  # pylint: disable=g-import-not-at-top

  tokenizer = minilm.load_tokenizer(model_dir)
  tokenizer.no_truncation()
  tokenizer.no_padding()
  return tokenizer


def wordpiece_tokens(texts: Sequence[bytes], tokenizer) -> list[np.ndarray]:
  """WordPiece ids of each text (UTF-8, invalid bytes replaced), no [CLS]/[SEP]."""
  decoded = [t.decode("utf-8", errors="replace") for t in texts]
  encodings = tokenizer.encode_batch(decoded, add_special_tokens=False)
  return [np.asarray(e.ids, np.int32) for e in encodings]


def token_stream(documents: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Concatenate token arrays; return (tokens, document index per token)."""
  docs = [d for d in documents if d.size]
  if not docs:
    raise ValueError("the corpus is empty: no document has any tokens")
  tokens = np.concatenate(docs).astype(np.int32)
  doc_ids = np.concatenate([np.full(d.size, i, np.int32) for i, d in enumerate(docs)])
  return tokens, doc_ids


class PackedSequences:
  """Fixed-length training sequences cut from a token stream.

  Sequence n covers stream positions ``[n * S, n * S + S + 1)``: inputs are
  the first S tokens and targets the last S. Segment ids number the documents
  within a sequence from 0, so attention and carries reset where they change.
  Targets that cross into the next document are masked out of the loss.
  """

  def __init__(self, tokens: np.ndarray, doc_ids: np.ndarray, seq_len: int):
    if seq_len < 1:
      raise ValueError(f"invalid seq_len {seq_len}; expected a positive int")
    count = (tokens.size - 1) // seq_len
    if count < 1:
      raise ValueError(
          f"the corpus has {tokens.size} tokens, too few for one sequence of {seq_len}")
    self.tokens, self.doc_ids, self.seq_len, self.count = tokens, doc_ids, seq_len, count

  def __len__(self) -> int:
    return self.count

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Gather sequences: inputs, targets, segment_ids and loss mask, [B, S]."""
    starts = np.asarray(indices)[:, None] * self.seq_len
    window = starts + np.arange(self.seq_len + 1)
    tokens = self.tokens[window]
    docs = self.doc_ids[window]
    segment_ids = docs[:, :-1] - docs[:, :1]
    same_doc = docs[:, 1:] == docs[:, :-1]
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "segment_ids": segment_ids.astype(np.int32), "mask": same_doc}


class BatchIterator:
  """Deterministic shuffled batches with a resumable position.

  Epoch e visits the sequences in ``permutation(seed, e)``; the iterator state
  is the single integer `step`, saved with checkpoints.
  """

  def __init__(self, data: PackedSequences, batch_size: int, seed: int, step: int = 0):
    if batch_size < 1 or batch_size > len(data):
      raise ValueError(
          f"invalid batch_size {batch_size}; expected 1 to {len(data)} sequences")
    self.data, self.batch_size, self.seed, self.step = data, batch_size, seed, step
    self.per_epoch = len(data) // batch_size

  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.data))

  def next(self) -> dict[str, np.ndarray]:
    """Return the batch at `step` and advance by one."""
    epoch, within = divmod(self.step, self.per_epoch)
    order = self._order(epoch)
    indices = order[within * self.batch_size:(within + 1) * self.batch_size]
    self.step += 1
    return self.data.batch(indices)
