"""Procedural RLVR problems, a character tokenizer and exact-match rewards.

Each generated problem has a prompt that ends with "=" and a solution that ends
with the answer marker ">" followed by the canonical answer. Difficulty d (1 to
3) sets the size of the operands:

  family    prompt          solution      operands at difficulty d
  add       "add 37 45="    ">82"         two d-digit numbers
  mul       "mul 347 6="    ">2082"       a d-digit number and a factor 2 to 9
  mod       "mod 347 7="    ">4"          a (d+1)-digit number and a modulus 2 to 9
  sort      "sort 3142="    ">1234"       d+2 digits from 1 to 9, repeats allowed
  digitsum  "dsum 4071="    "4,4,11>12"   a (d+2)-digit number

A one-digit operand ranges over 0 to 9 and longer numbers have no leading zero,
so answers are canonical integers (sort answers are digit strings that cannot
start with 0). The digit-sum solution lists the running sums of all but the last
digit before the marker, so each step is a one-digit addition. The other
solutions are the marker and the answer only. At difficulty 3 prompts take at
most 12 characters and solutions at most 13.

`load_jsonl` reads GSM8K-style files into problems of family "jsonl" whose
prompt is the question followed by a newline. Rewards look only at the text
after the last marker in a completion.
"""

import dataclasses
import itertools
import json
import math
import os
import pathlib
import re
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from cropi.rollouts import canonical_number  # shared by the verifiers of every task

FAMILIES = ("add", "mul", "mod", "sort", "digitsum")
DIFFICULTIES = (1, 2, 3)
JSONL_FAMILY = "jsonl"
ANSWER_MARKER = ">"
PROMPT_END = "="

# Words that open each family's prompt. "dsum" keeps digit-sum prompts short.
_KEYWORDS = {"add": "add", "mul": "mul", "mod": "mod", "sort": "sort", "digitsum": "dsum"}
# Factors and moduli 0 and 1 are left out because they give a constant result
# or copy the operand.
_SMALL_OPERANDS = range(2, 10)
# GSM8K marks calculator calls inline, as in "48/2 = <<48/2=24>>24".
_CALCULATOR_ANNOTATION = re.compile(r"<<.*?>>")
# An optional sign, digits that may be grouped in threes by commas, and an
# optional fraction.


@dataclasses.dataclass(frozen=True)
class Problem:
  """One prompt with its canonical answer and a worked solution.

  Attributes:
    family: one of FAMILIES, or "jsonl" for problems read by `load_jsonl`.
    difficulty: 1 to 3 for generated problems, 0 for loaded ones.
    prompt: the text given to the model, ending where the solution starts.
    answer: the canonical final answer.
    solution: the supervised target, ending with ANSWER_MARKER and `answer`.
  """

  family: str
  difficulty: int
  prompt: str
  answer: str
  solution: str


@dataclasses.dataclass(frozen=True)
class TaskSplits:
  """Training pool, validation and evaluation problems with no shared prompt.

  Attributes:
    pool: training problems of all families, shuffled.
    valid: validation problems per targeted family, the influence targets.
    evaluation: held-out problems for every family, targeted or not.
    targeted: families that have a validation set.
    untargeted: the remaining families, in the order they were passed.
  """

  pool: tuple[Problem, ...]
  valid: dict[str, tuple[Problem, ...]]
  evaluation: dict[str, tuple[Problem, ...]]
  targeted: tuple[str, ...]
  untargeted: tuple[str, ...]


class CharTokenizer:
  """Character tokenizer with a fixed vocabulary of 100 ids.

  Ids 0 to 3 are PAD, BOS, EOS and UNK. Ids 4 onward are the newline and the 95
  printable ASCII characters from space to "~", which cover every generated
  problem and most English math text. Any other character encodes to UNK and
  decodes to U+FFFD, so files with such characters load but do not round-trip.
  """

  pad_id = 0
  bos_id = 1
  eos_id = 2
  unk_id = 3
  unknown_text = "\ufffd"
  characters = "\n" + "".join(chr(code) for code in range(32, 127))

  def __init__(self):
    self._first_char_id = self.unk_id + 1
    self._ids = {char: self._first_char_id + i for i, char in enumerate(self.characters)}

  @property
  def vocab_size(self) -> int:
    """Number of ids, special tokens included."""
    return self._first_char_id + len(self.characters)

  def encode(self, text: str) -> list[int]:
    """Map each character to its id, without BOS or EOS."""
    return [self._ids.get(char, self.unk_id) for char in text]

  def decode(self, ids) -> str:
    """Convert ids to text up to the first EOS, skipping PAD and BOS.

    Args:
      ids: a 1-D sequence or array of token ids.

    Returns:
      The text, with U+FFFD for each UNK.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
      raise ValueError(f"decode expects a 1-D sequence of ids, got shape {ids.shape}")
    chars = []
    for token in ids.tolist():
      if token == self.eos_id:
        break
      if token in (self.pad_id, self.bos_id):
        continue
      if token == self.unk_id:
        chars.append(self.unknown_text)
      elif self._first_char_id <= token < self.vocab_size:
        chars.append(self.characters[token - self._first_char_id])
      else:
        raise ValueError(f"token id {token} is outside the vocabulary [0, {self.vocab_size})")
    return "".join(chars)

  def encode_prompts(self, prompts: Sequence[str],
                     length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode prompts as BOS followed by their characters, right-padded with PAD.

    Args:
      prompts: N prompt strings.
      length: the number of columns P; default the longest prompt plus BOS.

    Returns:
      Tokens [N, P] int32 and lengths [N] int32 that count the BOS.
    """
    prompts = _as_text_list(prompts, "prompts")
    rows = [[self.bos_id] + self.encode(prompt) for prompt in prompts]
    return self._pad_rows(rows, prompts, length, "prompt")

  def encode_solutions(self, solutions: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode solutions followed by EOS, right-padded with PAD.

    Args:
      solutions: N solution strings.
      length: the number of columns T.

    Returns:
      Tokens [N, T] int32 and lengths [N] int32 that count the EOS.
    """
    solutions = _as_text_list(solutions, "solutions")
    rows = [self.encode(solution) + [self.eos_id] for solution in solutions]
    return self._pad_rows(rows, solutions, length, "solution")

  def _pad_rows(self, rows, texts, length, kind):
    lengths = np.array([len(row) for row in rows], np.int32)
    if length is None:
      length = int(lengths.max(initial=1))
    if length < 1:
      raise ValueError(f"invalid {kind} length {length}; expected a positive int")
    if lengths.size and lengths.max() > length:
      longest = int(lengths.argmax())
      raise ValueError(
          f"{kind} {texts[longest]!r} takes {lengths[longest]} tokens, more than "
          f"length={length}; raise the length or shorten the {kind}")
    tokens = np.full((len(rows), length), self.pad_id, np.int32)
    for i, row in enumerate(rows):
      tokens[i, :len(row)] = row
    return tokens, lengths


def _as_text_list(texts, name):
  # A bare string would otherwise be encoded one character per row.
  if isinstance(texts, str):
    raise ValueError(f"{name} must be a list of strings, got the single string {texts!r}")
  return list(texts)


def extract_answer(completion: str) -> str | None:
  """Return the final answer of a completion, or None if it has none.

  The answer is the text after the last ANSWER_MARKER up to the end or the first
  newline, with surrounding whitespace stripped. Spaces inside are kept, so
  ">8 2" gives "8 2". Text decoded by `CharTokenizer.decode` already ends at EOS.
  """
  _, marker, tail = completion.rpartition(ANSWER_MARKER)
  if not marker:
    return None
  answer = tail.split("\n", 1)[0].strip()
  return answer or None


def reward(completion: str, answer: str) -> float:
  """Score 1.0 if the completion's final answer equals `answer` exactly, else 0.0.

  A reference answer that does not survive `extract_answer` unchanged (empty,
  padded with whitespace, or containing the marker or a newline) scores 0.0
  against every completion.
  """
  if not isinstance(answer, str) or extract_answer(ANSWER_MARKER + answer) != answer:
    return 0.0
  return float(extract_answer(completion) == answer)


def numeric_reward(completion: str, answer: str) -> float:
  """Score 1.0 if the final answer and `answer` are the same number, else 0.0.

  Both sides go through `canonical_number`, so the score is 0.0 when either one
  is not a number.
  """
  predicted = extract_answer(completion)
  if predicted is None:
    return 0.0
  predicted_number = canonical_number(predicted)
  expected_number = canonical_number(answer)
  if predicted_number is None or expected_number is None:
    return 0.0
  return float(predicted_number == expected_number)


def batch_rewards(completions: Sequence[str], answers: Sequence[str],
                  reward_fn: Callable[[str, str], float] = reward) -> np.ndarray:
  """Score completions against their answers, one to one.

  Args:
    completions: N completion strings.
    answers: N reference answers.
    reward_fn: `reward` or `numeric_reward`.

  Returns:
    Rewards [N] float32, aligned with the inputs.
  """
  if len(completions) != len(answers):
    raise ValueError(
        f"got {len(completions)} completions but {len(answers)} answers; pass one answer each")
  return np.array([reward_fn(c, a) for c, a in zip(completions, answers)], np.float32)


def _check_family_difficulty(family, difficulty):
  if family not in FAMILIES:
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"invalid difficulty {difficulty!r}; expected one of {DIFFICULTIES}")


def _numbers(digits):
  """Return the numbers with exactly `digits` digits, counting 0 as one digit."""
  if digits == 1:
    return range(10)
  return range(10 ** (digits - 1), 10 ** digits)


def _operand_ranges(family, difficulty):
  """List the values that each operand, or each digit of a digit string, can take."""
  if family == "add":
    return [_numbers(difficulty), _numbers(difficulty)]
  if family == "mul":
    return [_numbers(difficulty), _SMALL_OPERANDS]
  if family == "mod":
    # One digit more than the difficulty, because most one-digit dividends are
    # smaller than the modulus and would be their own answer.
    return [_numbers(difficulty + 1), _SMALL_OPERANDS]
  if family == "sort":
    return [range(1, 10)] * (difficulty + 2)
  return [range(1, 10)] + [range(10)] * (difficulty + 1)  # digitsum


def num_problems(family: str, difficulty: int) -> int:
  """Count the distinct problems of a family at one difficulty.

  Args:
    family: one of FAMILIES.
    difficulty: one of DIFFICULTIES.

  Returns:
    The number of distinct prompts that `generate_problem` can return.
  """
  _check_family_difficulty(family, difficulty)
  return math.prod(len(values) for values in _operand_ranges(family, difficulty))


def _problem_from_index(family, difficulty, index):
  """Build the problem at position `index` of the family's problem space.

  The index is read as a mixed-radix number with one digit per operand, so
  distinct indices give distinct prompts.
  """
  operands = []
  for values in reversed(_operand_ranges(family, difficulty)):
    index, position = divmod(index, len(values))
    operands.append(values[position])
  operands.reverse()

  trace = ""
  if family in ("add", "mul", "mod"):
    first, second = operands
    operand_text = f"{first} {second}"
    if family == "add":
      answer = str(first + second)
    elif family == "mul":
      answer = str(first * second)
    else:
      answer = str(first % second)
  elif family == "sort":
    operand_text = "".join(map(str, operands))
    answer = "".join(map(str, sorted(operands)))
  else:  # digitsum
    operand_text = "".join(map(str, operands))
    running_sums = list(itertools.accumulate(operands))
    trace = ",".join(map(str, running_sums[:-1]))
    answer = str(running_sums[-1])
  return Problem(
      family=family,
      difficulty=difficulty,
      prompt=f"{_KEYWORDS[family]} {operand_text}{PROMPT_END}",
      answer=answer,
      solution=f"{trace}{ANSWER_MARKER}{answer}",
  )


def generate_problem(family: str, difficulty: int, rng: np.random.Generator) -> Problem:
  """Draw one problem uniformly from a family's problems at one difficulty.

  Args:
    family: one of FAMILIES.
    difficulty: one of DIFFICULTIES.
    rng: the random generator to draw from.

  Returns:
    The problem, with its answer computed exactly.
  """
  index = int(rng.integers(num_problems(family, difficulty)))
  return _problem_from_index(family, difficulty, index)


def _check_names(names, what, choices):
  if isinstance(names, str):
    raise ValueError(f"{what} must be a tuple of names, got the single string {names!r}")
  names = tuple(names)
  if not names:
    raise ValueError(f"{what} is empty; expected names from {choices}")
  unknown = [name for name in names if name not in choices]
  if unknown:
    raise ValueError(f"unknown {what} {unknown}; expected names from {choices}")
  if len(set(names)) != len(names):
    raise ValueError(f"{what} {names} contains duplicates")
  return names


def _round_robin_counts(total, slots):
  """Split `total` items over `slots` as evenly as possible, earlier slots first."""
  return [total // slots + (i < total % slots) for i in range(slots)]


def make_splits(*, pool_size: int, valid_size: int, eval_size: int, families=FAMILIES,
                targeted=("add", "mul"), difficulties=DIFFICULTIES, seed: int = 0) -> TaskSplits:
  """Draw the training pool, validation and evaluation sets without repeats.

  Every family and difficulty pair draws its problems from one shuffled order
  of its problem space: evaluation first, validation next, the pool last.
  Prompts of different pairs differ in keyword or length, so no prompt appears
  twice across the splits. The evaluation sets depend only on `seed`,
  `eval_size`, `difficulties` and the family, not on the other sizes.

  Args:
    pool_size: total training problems, dealt round-robin over difficulties and
      families so that family counts differ by at most one, then shuffled.
    valid_size: validation problems per targeted family, spread over difficulties.
    eval_size: evaluation problems per family, spread over difficulties.
    families: the families in the pool and the evaluation sets.
    targeted: the families that get a validation set, a subset of `families`.
    difficulties: the difficulties to draw from.
    seed: the seed that determines every draw and the pool order.

  Returns:
    The splits.
  """
  for name, size in (("pool_size", pool_size), ("valid_size", valid_size),
                     ("eval_size", eval_size)):
    if size < 1:
      raise ValueError(f"invalid {name} {size}; expected a positive int")
  families = _check_names(families, "families", FAMILIES)
  targeted = _check_names(targeted, "targeted families", families)
  difficulties = _check_names(difficulties, "difficulties", DIFFICULTIES)

  # Difficulty-major order, so consecutive pool items cycle through families.
  cells = [(family, difficulty) for difficulty in difficulties for family in families]
  pool_counts = dict(zip(cells, _round_robin_counts(pool_size, len(cells))))
  eval_counts = dict(zip(difficulties, _round_robin_counts(eval_size, len(difficulties))))
  valid_counts = dict(zip(difficulties, _round_robin_counts(valid_size, len(difficulties))))

  pool = []
  valid = {family: [] for family in targeted}
  evaluation = {family: [] for family in families}
  for family in families:
    for difficulty in difficulties:
      counts = [eval_counts[difficulty],
                valid_counts[difficulty] if family in targeted else 0,
                pool_counts[family, difficulty]]
      space = num_problems(family, difficulty)
      if sum(counts) > space:
        raise ValueError(
            f"family {family!r} at difficulty {difficulty} has {space} distinct problems, "
            f"fewer than the {sum(counts)} requested (evaluation {counts[0]}, validation "
            f"{counts[1]}, pool {counts[2]}); lower the sizes or leave difficulty {difficulty} out")
      # Each family and difficulty has its own generator, so its draws do not
      # depend on the other families. The family name is hashed into the seed
      # because a shared seed would pick the same indices in every family.
      rng = np.random.default_rng([seed, zlib.crc32(family.encode()), difficulty])
      order = rng.permutation(space)[:sum(counts)].tolist()
      problems = [_problem_from_index(family, difficulty, index) for index in order]
      evaluation[family].extend(problems[:counts[0]])
      if family in targeted:
        valid[family].extend(problems[counts[0]:counts[0] + counts[1]])
      pool.extend(problems[counts[0] + counts[1]:])

  pool_order = np.random.default_rng(seed).permutation(len(pool))
  return TaskSplits(
      pool=tuple(pool[i] for i in pool_order),
      valid={family: tuple(problems) for family, problems in valid.items()},
      evaluation={family: tuple(problems) for family, problems in evaluation.items()},
      targeted=targeted,
      untargeted=tuple(family for family in families if family not in targeted),
  )


def _gsm8k_problem(question, answer_text, location):
  reasoning, separator, final = answer_text.rpartition("####")
  if not separator:
    raise ValueError(
        f"{location}: the answer has no '####'; GSM8K answers end with '#### <number>'")
  answer = canonical_number(final)
  if answer is None:
    raise ValueError(f"{location}: the final answer {final.strip()!r} is not a number")
  reasoning = _CALCULATOR_ANNOTATION.sub("", reasoning).strip()
  solution = f"{reasoning} {ANSWER_MARKER}{answer}" if reasoning else ANSWER_MARKER + answer
  return Problem(family=JSONL_FAMILY, difficulty=0, prompt=question.strip() + "\n",
                 answer=answer, solution=solution)


def load_jsonl(path: str | os.PathLike, *, question_key: str = "question",
               answer_key: str = "answer") -> list[Problem]:
  """Read a GSM8K-style JSONL file into problems.

  Each non-empty line is a JSON object whose answer ends with "#### <number>".
  The number after the last "####" becomes the canonical answer. The text before
  it, without the <<...>> calculator annotations, becomes the solution's
  reasoning, followed by a space, ANSWER_MARKER and the answer.

  Args:
    path: the JSONL file.
    question_key: the key of the question text.
    answer_key: the key of the answer text.

  Returns:
    The problems in file order, with family "jsonl" and difficulty 0.
  """
  path = pathlib.Path(path)
  problems = []
  with path.open(encoding="utf-8") as file:
    for line_number, line in enumerate(file, start=1):
      if not line.strip():
        continue
      location = f"{path}, line {line_number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f"{location}: invalid JSON ({error.msg})") from error
      if not isinstance(record, dict):
        raise ValueError(f"{location}: expected a JSON object, got {type(record).__name__}")
      for key in (question_key, answer_key):
        if key not in record:
          raise ValueError(f"{location}: missing key {key!r}; the record has {sorted(record)}")
        if not isinstance(record[key], str):
          raise ValueError(
              f"{location}: {key!r} must be a string, got {type(record[key]).__name__}")
      problems.append(_gsm8k_problem(record[question_key], record[answer_key], location))
  if not problems:
    raise ValueError(f"{path} contains no records")
  return problems
